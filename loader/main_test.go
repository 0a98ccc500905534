package loader_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/knockgate/knockgate/loader"
)

// TestMain first removes what a killed run of these tests left: gates
// named kgl* (only these tests use the prefix) and namespaces of processes
// that are gone.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		names, _ := loader.List()
		for _, n := range names {
			if strings.HasPrefix(n, "kgl") {
				loader.Detach(n)
			}
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			f := strings.Split(name, "-")
			if len(f) == 3 && f[0] == "kgl" {
				if pid, err := strconv.Atoi(f[2]); err == nil && syscall.Kill(pid, 0) == syscall.ESRCH {
					exec.Command("ip", "netns", "del", name).Run()
				}
			}
		}
	}
	os.Exit(m.Run())
}
