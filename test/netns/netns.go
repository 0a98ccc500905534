// Package netns makes the network namespaces and veth pairs that tests and
// benchmarks send their traffic through. Everything it creates is named by
// the caller and removed by Close; nothing touches the host namespace's
// interfaces.
package netns

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace (/run/netns/NAME) made for a test.
type NS struct {
	Name string
	Path string
}

// New creates the namespace name and brings its loopback up.
func New(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	ns := &NS{Name: name, Path: "/run/netns/" + name}
	if _, err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// NewT creates a namespace for t and removes it when t ends.
func NewT(t testing.TB, name string) *NS {
	t.Helper()
	ns, err := New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// Close deletes the namespace, and with it every interface inside it.
func (n *NS) Close() error {
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// Cmd prepares a command that runs inside the namespace. It enters only the
// network namespace (unlike `ip netns exec`, which remounts /sys), so pins
// made by the command land in the host's bpffs and outlive it.
func (n *NS) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	out, err := n.Cmd(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Do runs fn on an OS thread switched into the namespace; sockets fn opens
// stay in the namespace after it returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// fn may end this goroutine early (t.Fatal calls runtime.Goexit):
		// say so rather than leave the caller waiting.
		returned := false
		defer func() {
			if !returned {
				errc <- fmt.Errorf("in %s: stopped before returning (t.Fatal inside Do?)", n.Name)
			}
		}()
		// The thread is never unlocked, so the Go runtime retires it when
		// this goroutine ends: no other goroutine inherits the namespace.
		runtime.LockOSThread()
		err := n.enter()
		if err == nil {
			err = fn()
		}
		returned = true
		errc <- err
	}()
	return <-errc
}

// enter switches the calling (locked) thread into the namespace.
func (n *NS) enter() error {
	fd, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", n.Path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter %s: %w", n.Name, err)
	}
	return nil
}

// Veth creates a veth pair with each end created straight inside its
// namespace, and brings both up. Deleting either namespace removes it.
func Veth(a *NS, aName string, b *NS, bName string) error {
	out, err := exec.Command("ip", "link", "add", aName, "netns", a.Name, "type", "veth",
		"peer", "name", bName, "netns", b.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link add %s/%s: %w: %s", aName, bName, err, out)
	}
	if _, err := a.Run("ip", "link", "set", aName, "up"); err != nil {
		return err
	}
	_, err = b.Run("ip", "link", "set", bName, "up")
	return err
}

// Require fails (in CI, CI=true) or skips (elsewhere) a test that cannot run
// for lack of root, BPF or the named tools.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
