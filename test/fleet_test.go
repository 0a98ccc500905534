package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// A fleet of three hosts on one bridge, each running `knockgate run` with
// a [fleet] table (embedded NATS servers clustered over the bridge, route
// authentication on), and a client with several addresses: a grant on one
// host opens the protected port on all three.
type fleetHost struct {
	name  string
	ns    *netns.NS
	iface string
	addr  netip.Addr
	conf  string // its config file
	bin   string // its knockgate: this build's, or the previous release's
	cmd   *exec.Cmd
	done  chan struct{}
}

type testFleet struct {
	t      *testing.T
	hosts  []*fleetHost
	cli    *netns.NS
	client netip.Addr // the client's first address; more follow it
}

// fleetSeq keeps the names of two fleets of one test process apart.
var fleetSeq atomic.Int32

// fleetSpec is what a test fleet's hosts run.
type fleetSpec struct {
	addrs int    // the client's addresses, 10.78.0.100 up
	open  string // default's open window (default 8s)
	// services are config tables appended to the config file of each host
	// on this build ([services.NAME]...).
	services string
	// previous are the hosts (by index) that run the previous release's
	// binary (with none of services: that release had none).
	previous []int
	// ports each host listens on beside 22 (a protected port answers
	// only when open).
	ports []int
	// top are top-level keys for each host on this build (default's
	// hooks, hook_user).
	top string
}

// newTestFleet builds the bridge, the client (with addrs addresses,
// 10.78.0.100 up) and three hosts, starts run on each and waits until
// every host reports both peers and a current watch.
func newTestFleet(t *testing.T, addrs int) *testFleet {
	return newTestFleetWith(t, fleetSpec{addrs: addrs})
}

// newTestFleetWith is newTestFleet with the hosts spec says.
func newTestFleetWith(t *testing.T, spec fleetSpec) *testFleet {
	netns.Require(t)
	if spec.open == "" {
		spec.open = "8s"
	}
	addrs := spec.addrs
	id := fmt.Sprintf("%s%d", token, fleetSeq.Add(1))
	sw := netns.NewT(t, "kgf-sw-"+id)
	if _, err := sw.Run("ip", "link", "add", "br0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Run("ip", "link", "set", "br0", "up"); err != nil {
		t.Fatal(err)
	}
	plug := func(ns *netns.NS, iface, port string, addrs ...netip.Addr) {
		t.Helper()
		if err := netns.Veth(ns, iface, sw, port); err != nil {
			t.Fatal(err)
		}
		if _, err := sw.Run("ip", "link", "set", port, "master", "br0"); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if _, err := ns.Run("ip", "addr", "add", a.String()+"/24", "dev", iface); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := &testFleet{t: t, client: netip.MustParseAddr("10.78.0.100")}
	f.cli = netns.NewT(t, "kgf-cli-"+id)
	var cliAddrs []netip.Addr
	for i := range max(addrs, 1) {
		cliAddrs = append(cliAddrs, f.clientAddr(i))
	}
	plug(f.cli, "kgf-"+id+"-c", "kgf-"+id+"-cb", cliAddrs...)

	dir := t.TempDir()
	pw := filepath.Join(dir, "route.password")
	if err := os.WriteFile(pw, []byte("fleet-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var peers []string
	for i := range 3 {
		h := &fleetHost{name: fmt.Sprintf("kgf%s%c", id, 'a'+i), addr: netip.AddrFrom4([4]byte{10, 78, 0, byte(1 + i)}), bin: kgBin}
		if slices.Contains(spec.previous, i) {
			h.bin = prevBin(t)
		}
		h.ns = netns.NewT(t, "kgf-"+h.name)
		h.iface = fmt.Sprintf("kgf-%s-%d", id, i)
		plug(h.ns, h.iface, fmt.Sprintf("kgf-%s-%db", id, i), h.addr)
		f.hosts = append(f.hosts, h)
		peers = append(peers, fmt.Sprintf("%q", h.addr.String()+":6222"))
	}
	for _, h := range f.hosts {
		for _, port := range append([]int{22}, spec.ports...) {
			var ln net.Listener
			if err := h.ns.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return }); err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			t.Cleanup(func() { ln.Close() })
		}
		top := ""
		if h.bin == kgBin {
			top = spec.top
		}
		cfg := fmt.Sprintf(`interfaces = [%q]
protect = "22"
open = %q
%s
[fleet]
name = %q
gate = "edge"
listen = "%s:6222"
peers = [%s]
route_user = "fleet"
route_password_file = %q
state_dir = %q
`, h.iface, spec.open, top, h.name, h.addr, strings.Join(peers, ", "), pw, filepath.Join(dir, h.name))
		if h.bin == kgBin {
			cfg += spec.services
		}
		h.conf = filepath.Join(dir, h.name+".toml")
		if err := os.WriteFile(h.conf, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		f.start(h)
		t.Cleanup(func() {
			f.stop(h)
			run(t, h.ns.Cmd(h.bin, "detach", h.name))
		})
	}
	f.waitFormed(60 * time.Second)
	return f
}

// clientAddr is the client's address number i.
func (f *testFleet) clientAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 78, 0, byte(100 + i)})
}

// start runs `knockgate run` on h.
func (f *testFleet) start(h *fleetHost) {
	f.t.Helper()
	h.cmd = h.ns.Cmd(h.bin, "run", "--config", h.conf)
	h.cmd.Stdout, h.cmd.Stderr = os.Stderr, os.Stderr
	if err := h.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	h.done = make(chan struct{})
	cmd, done := h.cmd, h.done
	go func() { cmd.Wait(); close(done) }()
}

// stop ends h's run with SIGTERM, if it runs.
func (f *testFleet) stop(h *fleetHost) {
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	<-h.done
	h.cmd = nil
}

// kill ends h's run with SIGKILL, as a crash would: its embedded server
// goes without a word to its peers, and its pinned gate keeps enforcing.
func (f *testFleet) kill(h *fleetHost) {
	f.t.Helper()
	if err := h.cmd.Process.Kill(); err != nil {
		f.t.Fatal(err)
	}
	<-h.done
	h.cmd = nil
}

// fleetStatus is what run writes of the fleet for status.
type fleetStatus struct {
	Peers         int    `json:"peers"`
	Published     uint64 `json:"published"`
	Received      uint64 `json:"received"`
	WatchRestarts uint64 `json:"watch_restarts"`
	LastRestart   string `json:"last_restart"`
	LastSync      string `json:"last_sync"`
	Updated       string `json:"updated"`
}

func (f *testFleet) status(h *fleetHost) (st fleetStatus) {
	b, err := os.ReadFile(filepath.Join("/run/knockgate", "fleet-"+h.name+".json"))
	if err == nil {
		json.Unmarshal(b, &st)
	}
	return st
}

// waitFormed waits until every running host reports both peers and a
// current watch, written by the run now going.
func (f *testFleet) waitFormed(bound time.Duration) {
	f.t.Helper()
	since := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
	eventually(f.t, bound, "the fleet formed", func() bool {
		for _, h := range f.hosts {
			st := f.status(h)
			if h.cmd != nil && (st.Peers != 2 || st.LastSync == "" || st.Updated < since) {
				return false
			}
		}
		return true
	})
}

// open reports whether a connect from src to h's protected port (22,
// default's) completes within wait.
func (f *testFleet) open(src netip.Addr, h *fleetHost, wait time.Duration) bool {
	f.t.Helper()
	return f.openPort(src, h, 22, wait)
}

// openPort reports whether a connect from src to h's port completes within
// wait.
func (f *testFleet) openPort(src netip.Addr, h *fleetHost, port int, wait time.Duration) bool {
	f.t.Helper()
	ok := false
	err := f.cli.Do(func() error {
		d := net.Dialer{Timeout: wait, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		c, err := d.Dial("tcp", netip.AddrPortFrom(h.addr, uint16(port)).String())
		var nerr net.Error
		switch {
		case err == nil:
			c.Close()
			ok = true
		case errors.As(err, &nerr) && nerr.Timeout():
		default:
			return err
		}
		return nil
	})
	if err != nil {
		f.t.Fatalf("connect %s -> %s:%d: %v", src, h.name, port, err)
	}
	return ok
}

// waitOpen polls until src gets through to h's port 22, failing after
// bound (a deadline for the wait, not a claim on speed); it returns how
// long it took.
func (f *testFleet) waitOpen(src netip.Addr, h *fleetHost, bound time.Duration, what string) time.Duration {
	f.t.Helper()
	return f.waitOpenPort(src, h, 22, bound, what)
}

// waitOpenPort is waitOpen for another port.
func (f *testFleet) waitOpenPort(src netip.Addr, h *fleetHost, port int, bound time.Duration, what string) time.Duration {
	f.t.Helper()
	start := time.Now()
	for !f.openPort(src, h, port, 200*time.Millisecond) {
		if time.Since(start) > bound {
			for _, h := range f.hosts {
				f.t.Logf("%s: %+v", h.name, f.status(h))
			}
			f.t.Fatalf("%s: %s:%d not open for %s within %s", what, h.name, port, src, bound)
		}
	}
	return time.Since(start)
}

// waitClosed polls until src no longer gets through to h's port 22.
func (f *testFleet) waitClosed(src netip.Addr, h *fleetHost, bound time.Duration, what string) {
	f.t.Helper()
	f.waitClosedPort(src, h, 22, bound, what)
}

// waitClosedPort is waitClosed for another port.
func (f *testFleet) waitClosedPort(src netip.Addr, h *fleetHost, port int, bound time.Duration, what string) {
	f.t.Helper()
	eventually(f.t, bound, fmt.Sprintf("%s: %s:%d closed for %s", what, h.name, port, src), func() bool {
		return !f.openPort(src, h, port, filteredWait)
	})
}

// kg runs a knockgate command on h's gate (run or not), with h's binary.
func (f *testFleet) kg(h *fleetHost, args ...string) {
	f.t.Helper()
	if r := run(f.t, h.ns.Cmd(h.bin, args...)); r.code != 0 {
		f.t.Fatalf("%s on %s: %s", args, h.name, r)
	}
}

// A knock on one host opens the protected port on all three within a
// second, and closes it on all three after the window; a host cut off
// while a grant is made catches up when it comes back.
func TestFleetSharesGrants(t *testing.T) {
	f := newTestFleet(t, 1)
	hosts, client := f.hosts, f.client
	for _, h := range hosts {
		if f.open(client, h, filteredWait) {
			t.Fatalf("%s open before any knock", h.name)
		}
	}
	// Knock on the first host only.
	// Each step's connect is given 250 ms (the SYN leaves at once; the
	// gate drops it, so the connect only times out): well before the first
	// retransmission, and long enough on a loaded machine.
	f.cli.Do(func() error {
		for _, p := range []int{9000, 8000} {
			d := net.Dialer{Timeout: 250 * time.Millisecond, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, 0))}
			d.Dial("tcp", netip.AddrPortFrom(hosts[0].addr, uint16(p)).String())
		}
		return nil
	})
	// Each host opens while the grant's window (8s) lasts: a deadline of
	// correctness, not of speed (make bench-fleet measures that); the time
	// each took is logged.
	knocked := time.Now()
	for _, h := range hosts {
		for !f.open(client, h, 100*time.Millisecond) {
			if time.Since(knocked) > 6*time.Second {
				for _, h := range hosts {
					t.Logf("%s: %s", h.name, run(t, h.ns.Cmd(h.bin, "status", h.name)))
				}
				t.Fatalf("%s did not open within 6s of the knock on %s", h.name, hosts[0].name)
			}
		}
		t.Logf("%s open %s after the knock on %s", h.name, time.Since(knocked).Round(time.Millisecond), hosts[0].name)
	}
	// The window ends everywhere.
	for _, h := range hosts {
		f.waitClosed(client, h, 10*time.Second, "after the window")
	}

	// Cut the last host off, grant on the first, bring it back.
	cut := hosts[2]
	if _, err := cut.ns.Run("ip", "link", "set", cut.iface, "down"); err != nil {
		t.Fatal(err)
	}
	f.kg(hosts[0], "grant", hosts[0].name, client.String(), "--for", "2m")
	f.waitOpen(client, hosts[1], 20*time.Second, "while "+cut.name+" is cut off")
	time.Sleep(time.Second)
	if _, err := cut.ns.Run("ip", "link", "set", cut.iface, "up"); err != nil {
		t.Fatal(err)
	}
	f.waitOpen(client, cut, 30*time.Second, "caught up after the partition")
	if st := f.status(cut); st.Received == 0 {
		t.Errorf("%s reports nothing received: %+v", cut.name, st)
	}
}

// A revoke made while a host's run is down stays revoked when it comes
// back, on every host; a grant made on that host's gate meanwhile (by
// `knockgate grant`, as a knock or SPA would) is published when it does.
func TestFleetRevokeWhileDownStaysRevoked(t *testing.T) {
	f := newTestFleet(t, 2)
	a, b, c := f.hosts[0], f.hosts[1], f.hosts[2]
	revoked, local := f.clientAddr(0), f.clientAddr(1)
	f.kg(b, "grant", b.name, revoked.String(), "--for", "5m")
	for _, h := range f.hosts {
		f.waitOpen(revoked, h, 10*time.Second, "the grant on "+b.name)
	}
	f.kill(a)
	if !f.open(revoked, a, openWait) {
		t.Fatalf("%s's gate dropped the grant when its run was killed", a.name)
	}
	f.kg(b, "revoke", b.name, revoked.String())
	f.waitClosed(revoked, c, 20*time.Second, "the revoke on "+b.name)
	f.kg(a, "grant", a.name, local.String(), "--for", "5m")
	f.start(a)
	// A published its own grant: it had read the bucket first, and
	// published nothing of the revoked grant. It takes the revoke (at once,
	// unless its own replica of the bucket was still catching up when it
	// read it).
	for _, h := range []*fleetHost{b, c} {
		d := f.waitOpen(local, h, 30*time.Second, "the grant made on "+a.name+" while its run was down")
		t.Logf("%s has the grant made on %s while its run was down, %s after the wait began", h.name, a.name, d.Round(time.Millisecond))
	}
	f.waitClosed(revoked, a, 10*time.Second, "the revoke made while its run was down")
	// And nothing brings it back: watch every host for a while.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for _, h := range f.hosts {
			if f.open(revoked, h, 100*time.Millisecond) {
				t.Fatalf("%s opened the revoked grant again", h.name)
			}
		}
	}
	if !f.open(local, a, openWait) {
		t.Errorf("%s lost its own grant", a.name)
	}
}

// After a host fails (its run killed: its server gone without a word) or
// is cut off, and after it comes back, grants flow again, every time: each
// host in turn is killed, then cut off, and each time a grant made on
// another host reaches the third, the host back catches up, and a grant
// made on it reaches the other two. Each wait has a deadline (nothing
// asserts on speed): a grant must reach every host within followBound of
// its origin reporting it written, and within electionBound of being made,
// which covers a new leader's election when the host lost led the bucket
// (writes wait for one: 4-9 s by Raft's timers, 12 s seen with a partition
// on this 2-CPU machine). The times are logged.
func TestFleetRecoversFromFailures(t *testing.T) {
	const (
		followBound   = 10 * time.Second // 1.5 s to notice a stalled watch, then a busy machine's slack (4.2 s seen at load 13; 6.3 s with the whole suite and two busy loops on 2 CPUs)
		electionBound = 30 * time.Second
		backBound     = 10 * time.Second
	)
	f := newTestFleet(t, 12)
	var worst, worstAfter time.Duration
	// grant makes addr's grant on from and waits until every host of to
	// has it.
	grant := func(from *fleetHost, addr netip.Addr, to []*fleetHost, what string, failed time.Time) {
		t.Helper()
		before := f.status(from).Published
		made := time.Now()
		f.kg(from, "grant", from.name, addr.String(), "--for", "5m")
		var written time.Time
		for _, h := range to {
			for !f.open(addr, h, 200*time.Millisecond) {
				if written.IsZero() && f.status(from).Published > before {
					written = time.Now()
				}
				if !written.IsZero() && time.Since(written) > followBound || time.Since(made) > electionBound {
					for _, h := range f.hosts {
						t.Logf("%s: %+v", h.name, f.status(h))
					}
					t.Fatalf("%s: %s not open for %s %s after the grant (written %v)", what, h.name, addr, time.Since(made).Round(time.Millisecond), !written.IsZero())
				}
			}
			d := time.Since(made)
			worst = max(worst, d)
			after := "before " + from.name + " reported it written"
			if !written.IsZero() {
				worstAfter = max(worstAfter, time.Since(written))
				after = time.Since(written).Round(time.Millisecond).String() + " after " + from.name + " reported it written"
			}
			t.Logf("%s: %s open for %s %s after the grant (%s after the failure), %s", what, h.name, addr, d.Round(time.Millisecond),
				time.Since(failed).Round(time.Millisecond), after)
		}
	}
	n := 0
	for round, how := range []string{"killed", "cut off"} {
		for i, down := range f.hosts {
			up := []*fleetHost{f.hosts[(i+1)%3], f.hosts[(i+2)%3]}
			during, after := f.clientAddr(2*n), f.clientAddr(2*n+1)
			n++
			failed := time.Now()
			if how == "killed" {
				f.kill(down)
			} else if _, err := down.ns.Run("ip", "link", "set", down.iface, "down"); err != nil {
				t.Fatal(err)
			}
			grant(up[0], during, up[1:], fmt.Sprintf("round %d: %s %s", round+1, down.name, how), failed)
			back := time.Now()
			if how == "killed" {
				f.start(down)
			} else if _, err := down.ns.Run("ip", "link", "set", down.iface, "up"); err != nil {
				t.Fatal(err)
			}
			d := f.waitOpen(during, down, backBound, fmt.Sprintf("round %d: %s back after it was %s", round+1, down.name, how))
			worst = max(worst, d)
			t.Logf("round %d: %s back after it was %s: it has the grant made meanwhile after %s", round+1, down.name, how, d.Round(time.Millisecond))
			grant(down, after, up, fmt.Sprintf("round %d: %s back", round+1, down.name), back)
		}
	}
	t.Logf("the longest wait: %s; the longest after a write: %s", worst.Round(time.Millisecond), worstAfter.Round(time.Millisecond))
	for _, h := range f.hosts {
		st := f.status(h)
		t.Logf("%s: %d watch restarts (%s)", h.name, st.WatchRestarts, st.LastRestart)
	}
}
