package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// Kill anywhere: each command that changes a gate runs again and again,
// killed (SIGKILL) at its 1st, 2nd, ... kill point (maps.KillPoint: a map
// written, a pin made, a link attached), until it runs to the end. After
// every kill the gate must be as before or as asked, nothing between, and
// the next command must work without any cleanup.

// killedAt runs knockgate args in ns, killed at its nth kill point; it
// reports whether the kill happened (false: the command ran to the end,
// with n past its last point).
func (g *gate) killedAt(ns *netns.NS, n int, args ...string) (bool, result) {
	g.t.Helper()
	cmd := ns.Cmd(kgBin, args...)
	cmd.Env = append(os.Environ(), "KNOCKGATE_TEST_KILL_AT="+strconv.Itoa(n))
	r := run(g.t, cmd)
	if r.code == -1 {
		return true, r
	}
	return false, r
}

// gateState is what the next command finds: it runs status (any command
// first finishes what a killed one left, as the loader's sweep does), then
// looks at the pins and the interface. "none": status says not attached,
// nothing of the gate is pinned (not even a staging or detaching
// directory) and no program is on the interface; "complete": status
// answers, everything is pinned, the XDP program is on the interface;
// anything else is described.
func (g *gate) gateState() string {
	g.t.Helper()
	// status finishes what a killed command left (a staging directory, a
	// detach cut short), but only when no other command holds the root
	// lock at that moment: tests running beside may. So a leftover is
	// looked at again, for a few seconds, before it counts.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := g.gateStateOnce()
		if !strings.HasPrefix(st, "not attached, but left") || time.Now().After(deadline) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (g *gate) gateStateOnce() string {
	g.t.Helper()
	r := g.kg(g.srv, "status", g.iface)
	dir := filepath.Join(pinRoot, g.iface)
	prog := g.xdpProg()
	if r.code == 1 && strings.Contains(r.stderr, "not attached") {
		var left []string
		entries, _ := os.ReadDir(pinRoot)
		for _, e := range entries {
			if strings.Contains(e.Name(), g.iface) {
				left = append(left, e.Name())
			}
		}
		if prog != 0 {
			left = append(left, "the XDP program on "+g.iface)
		}
		if len(left) > 0 {
			return "not attached, but left: " + strings.Join(left, ", ")
		}
		return "none"
	}
	var missing []string
	if r.code != 0 {
		missing = append(missing, "status: "+r.String())
	}
	for _, pin := range []string{"prog", "egress", "configs", "ifaces/" + g.iface + "/xdp-native", "ifaces/" + g.iface + "/tcx-egress"} {
		if _, err := os.Stat(filepath.Join(dir, pin)); err != nil {
			missing = append(missing, pin)
		}
	}
	if prog == 0 {
		missing = append(missing, "the XDP program on "+g.iface)
	}
	if len(missing) > 0 {
		return "half: missing " + strings.Join(missing, ", ")
	}
	return "complete"
}

func TestKillAttachAnywhere(t *testing.T) {
	g := newGate(t)
	args := []string{"attach", g.iface, "--protect", strconv.Itoa(protected), "--no-grant-self"}
	n := 1
	for ; ; n++ {
		killed, r := g.killedAt(g.srv, n, args...)
		if !killed {
			if r.code != 0 {
				t.Fatalf("attach with kill point %d unreached: %s", n, r)
			}
			break
		}
		switch st := g.gateState(); st {
		case "none":
			// The next attach makes it, from whatever the kill left.
			g.mustKG(g.srv, args...)
		case "complete":
		default:
			t.Fatalf("attach killed at point %d: %s", n, st)
		}
		if st := g.gateState(); st != "complete" {
			t.Fatalf("after attach killed at point %d and attach again: %s", n, st)
		}
		g.expect(filtered, cli4, srv4)
		g.mustKG(g.srv, "detach", g.iface)
		if st := g.gateState(); st != "none" {
			t.Fatalf("detach after attach killed at point %d: %s", n, st)
		}
		g.assertNoPins(g.iface)
	}
	t.Logf("attach killed at each of its %d points", n-1)
	if n-1 < 8 {
		t.Errorf("attach passed only %d kill points", n-1)
	}
}

func TestKillDetachAnywhere(t *testing.T) {
	g := newGate(t)
	n := 1
	for ; ; n++ {
		g.attach("--no-grant-self")
		killed, r := g.killedAt(g.srv, n, "detach", g.iface)
		if !killed {
			if r.code != 0 {
				t.Fatalf("detach with kill point %d unreached: %s", n, r)
			}
			break
		}
		switch st := g.gateState(); st {
		case "none":
		case "complete":
			g.mustKG(g.srv, "detach", g.iface)
		default:
			t.Fatalf("detach killed at point %d: %s", n, st)
		}
		if st := g.gateState(); st != "none" {
			t.Fatalf("after detach killed at point %d: %s", n, st)
		}
		g.assertNoPins(g.iface)
		g.expect(open, cli4, srv4)
	}
	t.Logf("detach killed at each of its %d points", n-1)
	if n-1 < 3 {
		t.Errorf("detach passed only %d kill points", n-1)
	}
}

// configOf is the part of status a set changes here.
func (g *gate) configOf() string {
	st := g.status()
	return fmt.Sprintf("open %s protect %v", st.Config.Open, st.Config.Protect)
}

func TestKillSetAnywhere(t *testing.T) {
	g := newGate(t)
	g.attach("--no-grant-self", "--open", "30m")
	before := g.configOf()
	n := 1
	for ; ; n++ {
		killed, r := g.killedAt(g.srv, n, "set", g.iface, "--open", "10m", "--protect", "22,443")
		after := g.configOf()
		if !killed {
			if r.code != 0 {
				t.Fatalf("set with kill point %d unreached: %s", n, r)
			}
			if want := "open 10m0s protect [22/tcp 443/tcp]"; after != want {
				t.Fatalf("set: %s, want %s", after, want)
			}
			break
		}
		if want := "open 10m0s protect [22/tcp 443/tcp]"; after != before && after != want {
			t.Fatalf("set killed at point %d: configuration %s, neither %s nor %s", n, after, before, want)
		}
		// The next change works, and the gate still enforces.
		g.mustKG(g.srv, "set", g.iface, "--open", "30m", "--protect", "22")
		if got := g.configOf(); got != before {
			t.Fatalf("set after a kill at point %d: %s, want %s", n, got, before)
		}
		g.expect(filtered, cli4, srv4)
	}
	t.Logf("set killed at each of its %d points", n-1)
}

func TestKillGrantRevokeAnywhere(t *testing.T) {
	g := newGate(t)
	g.attach("--no-grant-self")
	for _, c := range []struct {
		args  []string
		setup func()
	}{
		{[]string{"grant", g.iface, cli4.String()}, func() { g.kg(g.srv, "revoke", g.iface, cli4.String()) }},
		{[]string{"revoke", g.iface, cli4.String()}, func() { g.mustKG(g.srv, "grant", g.iface, cli4.String()) }},
	} {
		n := 1
		for ; ; n++ {
			c.setup()
			killed, r := g.killedAt(g.srv, n, c.args...)
			if !killed {
				if r.code != 0 {
					t.Fatalf("%s with kill point %d unreached: %s", c.args[0], n, r)
				}
				break
			}
			// Granted or not, the gate's answer agrees with what status shows.
			_, granted := g.status().source(cli4)
			want := filtered
			if granted {
				want = open
			}
			g.expect(want, cli4, srv4)
		}
		t.Logf("%s killed at each of its %d points", c.args[0], n-1)
	}
}

// Two commands at once on one gate end as one of them or the other, never
// a mix.
func TestRacingCommands(t *testing.T) {
	g := newGate(t)
	g.attach("--no-grant-self")
	a := []string{"set", g.iface, "--open", "11m", "--protect", "22,443"}
	b := []string{"set", g.iface, "--open", "12m", "--protect", "22,8443"}
	for range 5 {
		var wg sync.WaitGroup
		for _, args := range [][]string{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := run(t, g.srv.Cmd(kgBin, args...)); r.code != 0 {
					t.Errorf("%v: %s", args, r)
				}
			}()
		}
		wg.Wait()
		if got := g.configOf(); got != "open 11m0s protect [22/tcp 443/tcp]" && got != "open 12m0s protect [22/tcp 8443/tcp]" {
			t.Fatalf("after two sets at once: %s", got)
		}
	}
	g.mustKG(g.srv, "detach", g.iface)
	for range 5 {
		var wg sync.WaitGroup
		results := make([]result, 2)
		for i, args := range [][]string{{"attach", g.iface, "--protect", "22", "--no-grant-self"}, {"detach", g.iface}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = run(t, g.srv.Cmd(kgBin, args...))
			}()
		}
		wg.Wait()
		st := g.gateState()
		if st != "none" && st != "complete" {
			t.Fatalf("attach and detach at once (%s; %s): %s", results[0], results[1], st)
		}
		if st == "complete" {
			g.mustKG(g.srv, "detach", g.iface)
		}
		g.assertNoPins(g.iface)
	}
}

// runKilledAt starts `knockgate run --config path` killed at its nth kill
// point: true when it died there, false when it got ready (it is stopped
// then, leaving its gate).
func (g *gate) runKilledAt(path string, n int, reload string) bool {
	g.t.Helper()
	sock := filepath.Join(g.t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		g.t.Fatal(err)
	}
	defer conn.Close()
	states := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:k]), "\n") {
				states <- l
			}
		}
	}()
	cmd := g.srv.Cmd(kgBin, "run", "--config", path)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "KNOCKGATE_TEST_KILL_AT="+strconv.Itoa(n))
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() bool {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		return false
	}
	wait := func(want string) bool { // false: died first
		for {
			select {
			case st := <-states:
				if st == want {
					return true
				}
			case <-exited:
				if cmd.ProcessState.ExitCode() != -1 {
					g.t.Fatalf("run exited %v, not killed, before %s", cmd.ProcessState, want)
				}
				return false
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
				g.t.Fatalf("run: no %s within 30s", want)
			}
		}
	}
	if !wait("READY=1") {
		return true
	}
	if reload == "" {
		return stop()
	}
	if err := os.WriteFile(path, []byte(reload), 0o644); err != nil {
		g.t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	if !wait("RELOADING=1") || !wait("READY=1") {
		return true
	}
	return stop()
}

// run, killed at each point of its start and then of a reload: the gate is
// none or complete after a start, the old or the new configuration after a
// reload, and the next run starts.
func TestKillRunAnywhere(t *testing.T) {
	g := newGate(t)
	path := g.configPath()
	first := fmt.Sprintf("interfaces = [%q]\nprotect = \"22\"\nopen = \"30m\"\n", g.iface)
	second := fmt.Sprintf("interfaces = [%q]\nprotect = \"22,443\"\nopen = \"10m\"\n", g.iface)
	if err := os.WriteFile(path, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	start := 1
	for ; g.runKilledAt(path, start, ""); start++ {
		if st := g.gateState(); st != "none" && st != "complete" {
			t.Fatalf("run killed at point %d of its start: %s", start, st)
		}
		g.kg(g.srv, "detach", g.iface)
	}
	g.mustKG(g.srv, "detach", g.iface)
	t.Logf("run's start killed at each of its %d points", start-1)
	n := start
	for ; ; n++ {
		if err := os.WriteFile(path, []byte(first), 0o644); err != nil {
			t.Fatal(err)
		}
		killed := g.runKilledAt(path, n, second)
		if st := g.gateState(); st != "complete" {
			t.Fatalf("run killed at point %d (reload): %s", n, st)
		}
		got := g.configOf()
		if got != "open 30m0s protect [22/tcp]" && got != "open 10m0s protect [22/tcp 443/tcp]" {
			t.Fatalf("run killed at point %d (reload): configuration %s", n, got)
		}
		// The next run starts and applies its file.
		if err := os.WriteFile(path, []byte(first), 0o644); err != nil {
			t.Fatal(err)
		}
		s := g.startRunAt(path, nil)
		s.stop(syscall.SIGTERM)
		if got := g.configOf(); got != "open 30m0s protect [22/tcp]" {
			t.Fatalf("run after a kill at point %d: %s", n, got)
		}
		g.mustKG(g.srv, "detach", g.iface)
		if !killed {
			break
		}
	}
	t.Logf("run's reload killed at each of its %d points", n-start)
}
