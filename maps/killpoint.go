package maps

import (
	"os"
	"strconv"
	"sync"
	"syscall"
)

// KillPoint marks a point in a change to a pinned gate (a map written, a
// pin made, a link attached) at which tests kill the command, to show that
// no moment of it leaves a half-made gate: with KNOCKGATE_TEST_KILL_AT=N in
// the environment, the Nth point reached sends the process SIGKILL, as a
// crash or the OOM killer would. Without it, a point costs a comparison.
func KillPoint() {
	if pointHook != nil {
		pointHook()
	}
	killOnce.Do(func() {
		killAt, _ = strconv.Atoi(os.Getenv("KNOCKGATE_TEST_KILL_AT"))
	})
	if killAt <= 0 {
		return
	}
	killMu.Lock()
	defer killMu.Unlock()
	if killSeen++; killSeen == killAt {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// pointHook, when set (by this package's tests, before anything else
// runs), runs at every point: a test plays out there what another writer
// could do at that moment.
var pointHook func()

var (
	killOnce sync.Once
	killAt   int
	killMu   sync.Mutex
	killSeen int
)
