// Package test runs the real knockgate binary against real packets: each
// test attaches a gate to a veth in a server namespace and knocks, connects
// and scans from a client namespace.
package test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// kgBin is the knockgate binary built for this run, in binDir, which the
// run removes when it ends (other builds of the run go there too).
var kgBin, binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// attach grants the client of $SSH_CONNECTION: a suite run over ssh
	// must not grant the developer's address in every test. The test of that
	// feature sets it on its own command.
	os.Unsetenv("SSH_CONNECTION")

	dir, err := os.MkdirTemp("", "kgt-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create build directory:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	kgBin = filepath.Join(dir, "knockgate")
	build := exec.Command("go", "build", "-o", kgBin, "github.com/knockgate/knockgate/cmd/knockgate")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build knockgate: %v\n%s", err, out)
		return 1
	}
	if os.Geteuid() == 0 {
		sweepStale()
	}
	return m.Run()
}

// sweepStale removes what an earlier, killed run of this suite left behind:
// its namespaces (with the veths and XDP programs in them) and its pins.
// Only names carrying the kgt prefix and the token of a process that no
// longer exists are touched.
func sweepStale() {
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			f := strings.Split(name, "-")
			if len(f) == 4 && f[0] == "kgt" && (f[1] == "srv" || f[1] == "cli") && deadToken(f[2]) {
				exec.Command("ip", "netns", "del", name).Run()
			}
		}
	}
	entries, _ := os.ReadDir(pinRoot)
	for _, e := range entries {
		// Temporary pin directories wrap the interface name.
		i := strings.Index(e.Name(), "kgt-")
		if i < 0 || i > 0 && !strings.ContainsRune(" .:", rune(e.Name()[i-1])) {
			continue
		}
		f := strings.Split(e.Name()[i:], "-")
		if len(f) >= 3 && deadToken(f[1]) {
			os.RemoveAll(filepath.Join(pinRoot, e.Name()))
		}
	}
}

// deadToken reports whether tok names a test process that has exited.
func deadToken(tok string) bool {
	pid, err := strconv.ParseInt(tok, 36, 32)
	if err != nil || pid <= 0 || int(pid) == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(int(pid), 0), syscall.ESRCH)
}
