package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/config"
)

// Hooks run as knockd runs its start_command and stop_command, with
// bounds so that they can never take the host down: each command is killed
// (its whole process group) at hook_timeout, at most hook_max_running run
// at once and hook_max_waiting wait for a turn — what does not fit is
// dropped, logged and counted. A command runs as hook_user, from /, with
// stdin from /dev/null and an environment of its own (PATH, HOME, USER,
// LOGNAME and the KNOCKGATE_ variables: nothing of run's), and each line it
// writes goes to the log. Submitting never blocks: the event reader, the
// fleet and a reload hand commands over and go on.

// hookPath is the hooks' PATH, and where a command given without a
// directory is looked for.
const hookPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Bounds on what a hook may write to the log: a line longer than
// hookLineMax is cut there (the rest is the next line), and past
// hookLinesMax lines a run's output is counted, not logged.
const (
	hookLineMax  = 4096
	hookLinesMax = 100
)

// hookDropReport is how often dropped hooks are logged once a drop has
// been: the first drop at once, then one line per period with the count.
const hookDropReport = 10 * time.Second

// hookStopGrace is how long commands still running when run stops are
// given before they are killed.
const hookStopGrace = 5 * time.Second

// hookJob is one command to run for one grant.
type hookJob struct {
	service, event string // its labels: the grant's service, open or close
	source         string // the grant's address, for the log
	argv           []string
	env            []string
}

// hookLabel is what the hook metrics count by.
type hookLabel struct{ service, event string }

// hookCounts are one label's counters.
type hookCounts struct {
	runs, failures, timeouts, dropped uint64
}

// hookUser is the user the commands run as.
type hookUser struct {
	name string
	cred *syscall.Credential // nil: run's own user already
	home string
}

// lookupHookUser finds the user called name. A user that does not exist
// is refused, saying how to make the default one.
func lookupHookUser(name string) (hookUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			if name == config.DefaultHookUser {
				return hookUser{}, fmt.Errorf("hook_user %s: no such user: the knockgate package makes this system user; without the package, make it (useradd --system --no-create-home --shell /usr/sbin/nologin %s) or name another user in hook_user", name, name)
			}
			return hookUser{}, fmt.Errorf("hook_user %s: no such user", name)
		}
		return hookUser{}, fmt.Errorf("hook_user %s: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return hookUser{}, fmt.Errorf("hook_user %s: uid %q, gid %q are not numbers", name, u.Uid, u.Gid)
	}
	hu := hookUser{name: name, home: u.HomeDir}
	if hu.home == "" {
		hu.home = "/"
	}
	if uint64(os.Geteuid()) == uid && uint64(os.Getegid()) == gid {
		return hu, nil
	}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	hu.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	return hu, nil
}

// hookCaps are the capabilities run needs to run hooks as another user:
// to become it, and to kill its commands at hook_timeout.
var hookCaps = []struct {
	bit  int
	name string
}{{unix.CAP_SETUID, "CAP_SETUID"}, {unix.CAP_SETGID, "CAP_SETGID"}, {unix.CAP_KILL, "CAP_KILL"}}

// checkHookCaps says which of hookCaps run lacks to run hooks as u: every
// hook would otherwise fail, one by one, long after the start. (A user
// that is run's own needs none.)
func checkHookCaps(u hookUser) error {
	if u.cred == nil {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("hook_user %s: read run's capabilities: %w", u.name, err)
	}
	var missing []string
	for _, c := range hookCaps {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("hook_user %s: running hooks as another user needs %s, which run lacks (the unit's CapabilityBoundingSet keeps them)",
			u.name, strings.Join(missing, ", "))
	}
	return nil
}

// hookLimits are the runner's settings in force.
type hookLimits struct {
	user                   hookUser
	timeout                time.Duration
	maxRunning, maxWaiting int
}

// hookRunner runs the hooks, within their bounds.
type hookRunner struct {
	log func() *slog.Logger

	mu       sync.Mutex
	limits   hookLimits
	queue    []*hookJob // waiting, oldest first
	running  map[*hookJob]context.CancelFunc
	stopping bool
	counts   map[hookLabel]*hookCounts
	// Dropped commands are logged at once when none was for a while,
	// then counted in unlogged and logged as one line per period.
	lastDropLog time.Time
	unlogged    uint64
	idle        *sync.Cond // signalled when a command ends
}

func newHookRunner(log func() *slog.Logger) *hookRunner {
	r := &hookRunner{log: log, running: map[*hookJob]context.CancelFunc{}, counts: map[hookLabel]*hookCounts{}}
	r.idle = sync.NewCond(&r.mu)
	return r
}

// configure takes the settings of s (a reload's too): the user, looked up
// now, the timeout and the bounds. A user that does not exist is refused,
// and nothing changes.
func (r *hookRunner) configure(s *config.Settings) error {
	var u hookUser
	if s.AnyHooks() {
		// Without a hook, no user is needed: run starts where the
		// package (and its user) is not installed.
		var err error
		if u, err = lookupHookUser(s.HookUser); err != nil {
			return err
		}
		if err := checkHookCaps(u); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.limits = hookLimits{user: u, timeout: s.HookTimeout, maxRunning: int(s.HookMaxRunning), maxWaiting: int(s.HookMaxWaiting)}
	r.startWaiting()
	return nil
}

func (r *hookRunner) countsOf(service, event string) *hookCounts {
	l := hookLabel{service, event}
	c := r.counts[l]
	if c == nil {
		c = &hookCounts{}
		r.counts[l] = c
	}
	return c
}

// submit runs job now if fewer than the bound run, else queues it if
// fewer than the bound wait, else drops it. It never blocks.
func (r *hookRunner) submit(job *hookJob) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopping:
		r.drop(job, "run is stopping")
	case len(r.running) < r.limits.maxRunning:
		r.start(job)
	case len(r.queue) < r.limits.maxWaiting:
		r.queue = append(r.queue, job)
	default:
		r.drop(job, "too many hooks running and waiting")
	}
}

// drop counts job as dropped and logs it, or counts it for the next
// report. r.mu is held.
func (r *hookRunner) drop(job *hookJob, why string) {
	r.countsOf(job.service, job.event).dropped++
	if time.Since(r.lastDropLog) < hookDropReport {
		r.unlogged++
		return
	}
	r.lastDropLog = time.Now()
	r.log().Warn("hook dropped: "+why, "service", job.service, "event", job.event, "src", job.source,
		"running", len(r.running), "waiting", len(r.queue), "max_running", r.limits.maxRunning, "max_waiting", r.limits.maxWaiting)
}

// report logs the drops not logged yet, once their period is over; run
// calls it every second.
func (r *hookRunner) report() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unlogged == 0 || time.Since(r.lastDropLog) < hookDropReport {
		return
	}
	r.log().Warn("hooks dropped: too many running and waiting", "dropped", r.unlogged,
		"since", r.lastDropLog.UTC().Format(time.RFC3339), "max_running", r.limits.maxRunning, "max_waiting", r.limits.maxWaiting)
	r.unlogged = 0
	r.lastDropLog = time.Now()
}

// start runs job in a goroutine of its own. r.mu is held.
func (r *hookRunner) start(job *hookJob) {
	ctx, cancel := context.WithCancel(context.Background())
	r.running[job] = cancel
	r.countsOf(job.service, job.event).runs++
	lim := r.limits
	go func() {
		outcome := r.exec(ctx, job, lim)
		cancel()
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.running, job)
		c := r.countsOf(job.service, job.event)
		switch outcome {
		case hookFailed:
			c.failures++
		case hookTimedOut:
			c.timeouts++
		}
		r.startWaiting()
		r.idle.Broadcast()
	}()
}

// startWaiting starts waiting commands while the bound allows. r.mu is
// held.
func (r *hookRunner) startWaiting() {
	for !r.stopping && len(r.queue) > 0 && len(r.running) < r.limits.maxRunning {
		job := r.queue[0]
		r.queue[0] = nil
		r.queue = r.queue[1:]
		r.start(job)
	}
	if len(r.queue) == 0 {
		r.queue = nil // let a burst's backing array go
	}
}

// stop drops what waits and gives what runs hookStopGrace to end, then
// kills it.
func (r *hookRunner) stop() {
	r.mu.Lock()
	r.stopping = true
	for _, job := range r.queue {
		r.drop(job, "run is stopping")
	}
	r.queue = nil
	deadline := time.AfterFunc(hookStopGrace, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, cancel := range r.running {
			cancel()
		}
	})
	for len(r.running) > 0 {
		r.idle.Wait()
	}
	r.mu.Unlock()
	deadline.Stop()
}

// hookStats are the counters by label, and how many run and wait now.
func (r *hookRunner) stats() (counts map[hookLabel]hookCounts, running, waiting int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts = make(map[hookLabel]hookCounts, len(r.counts))
	for l, c := range r.counts {
		counts[l] = *c
	}
	return counts, len(r.running), len(r.queue)
}

type hookOutcome int

const (
	hookOK hookOutcome = iota
	hookFailed
	hookTimedOut
)

// exec runs one command to its end, or kills it at the timeout, and logs
// its output and how it ended.
func (r *hookRunner) exec(ctx context.Context, job *hookJob, lim hookLimits) hookOutcome {
	log := r.log().With("service", job.service, "event", job.event, "src", job.source)
	path, err := lookHookPath(job.argv[0])
	if err != nil {
		log.Error("hook failed to start", "command", job.argv[0], "error", err)
		return hookFailed
	}
	ctx, cancel := context.WithTimeout(ctx, lim.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, job.argv[1:]...)
	cmd.Args[0] = job.argv[0]
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=" + hookPath, "HOME=" + lim.user.home, "USER=" + lim.user.name, "LOGNAME=" + lim.user.name}, job.env...)
	// Its own process group, killed whole: a shell's children go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: lim.user.cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// What the group leaves holding its output (a child gone to the
	// background) is not waited for long once the command has ended.
	cmd.WaitDelay = time.Second
	out := &hookLines{log: log, stream: "stdout"}
	errOut := &hookLines{log: log, stream: "stderr"}
	cmd.Stdout, cmd.Stderr = out, errOut
	start := time.Now()
	err = cmd.Run()
	out.flush()
	errOut.flush()
	took := time.Since(start).Round(time.Millisecond)
	if n := out.omitted + errOut.omitted; n > 0 {
		log.Warn("hook output not logged: too many lines", "lines", n)
	}
	var exit *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		log.Warn("hook killed: it ran past hook_timeout", "command", job.argv[0], "timeout", lim.timeout)
		return hookTimedOut
	case errors.As(err, &exit):
		log.Warn("hook failed", "command", job.argv[0], "status", exit.ProcessState.String(), "took", took)
		return hookFailed
	case errors.Is(err, exec.ErrWaitDelay):
		log.Info("hook ran (something it started still holds its output)", "command", job.argv[0], "took", took)
		return hookOK
	case err != nil:
		log.Error("hook failed to start", "command", job.argv[0], "error", err)
		return hookFailed
	}
	log.Info("hook ran", "command", job.argv[0], "took", took)
	return hookOK
}

// lookHookPath finds a command: a path as given, a bare name in hookPath.
func lookHookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(hookPath) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, hookPath)
}

// hookLines writes a command's output to the log, a record per line.
type hookLines struct {
	log     *slog.Logger
	stream  string
	buf     []byte
	lines   int
	omitted int
}

func (h *hookLines) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			h.buf = append(h.buf, p...)
			for len(h.buf) >= hookLineMax {
				h.line(h.buf[:hookLineMax])
				h.buf = append(h.buf[:0], h.buf[hookLineMax:]...)
			}
			break
		}
		h.buf = append(h.buf, p[:i]...)
		for len(h.buf) > hookLineMax {
			h.line(h.buf[:hookLineMax])
			h.buf = append(h.buf[:0], h.buf[hookLineMax:]...)
		}
		h.line(h.buf)
		h.buf = h.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (h *hookLines) line(b []byte) {
	if h.lines >= hookLinesMax {
		h.omitted++
		return
	}
	h.lines++
	h.log.Info("hook output", "stream", h.stream, "line", strings.TrimRight(string(b), "\r"))
}

func (h *hookLines) flush() {
	if len(h.buf) > 0 {
		h.line(h.buf)
		h.buf = nil
	}
}

// hookLabels are the labels counted, in order, for the metrics.
func sortedLabels(m map[hookLabel]hookCounts) []hookLabel {
	out := make([]hookLabel, 0, len(m))
	for l := range m {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].service != out[j].service {
			return out[i].service < out[j].service
		}
		return out[i].event < out[j].event
	})
	return out
}

// CheckHookUser says whether the user the settings' hooks run as exists,
// when a service has a hook (run --check, before run itself refuses).
func CheckHookUser(s *config.Settings) error {
	if !s.AnyHooks() {
		return nil
	}
	_, err := lookupHookUser(s.HookUser)
	return err
}
