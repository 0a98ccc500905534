package test

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// The gate filters the protected port until a source knocks, opens it for
// that source only, and closes it again when the window ends; over IPv4 and
// IPv6.
func TestKnock(t *testing.T) {
	for _, fam := range []struct {
		name          string
		srv, cli, alt netip.Addr
	}{
		{"ipv4", srv4, cli4, alt4},
		{"ipv6", srv6, cli6, alt6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			netns.Require(t, "ip", "nsenter")
			t.Parallel()
			g := newGate(t)
			g.attach("--sequence", "9000,8000", "--step-timeout", "10s", "--open", "2s")

			// Dropped, not refused: the connect times out.
			g.expect(filtered, fam.cli, fam.srv)
			g.expect(filtered, fam.alt, fam.srv)

			g.knockTCP(fam.cli, fam.srv, 9000, 8000)
			g.expect(open, fam.cli, fam.srv)
			g.expect(filtered, fam.alt, fam.srv)

			g.waitFiltered(fam.cli, fam.srv, 15*time.Second)
			g.expect(filtered, fam.alt, fam.srv)
			if n := g.status().Counters["grant_expired"]; n == 0 {
				t.Errorf("counter grant_expired = 0 after the window closed")
			}
		})
	}
}

// set changes a live gate: same program on the interface, new generation,
// and knock progress made under the old configuration counts for nothing.
func TestSet(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--step-timeout", "1m", "--open", "1m")
	prog := g.xdpProg()
	if prog == 0 {
		t.Fatal("no XDP program on the interface after attach")
	}
	gen0 := g.status().Config.Generation

	// Half a sequence, then a change: the second half must not complete it.
	g.knockTCP(cli4, srv4, 9000)
	g.mustKG(g.srv, "set", g.iface, "--open", "5m")
	st := g.status()
	if st.Config.Generation == gen0 {
		t.Errorf("generation %d unchanged by set", gen0)
	}
	if st.Config.Open != "5m0s" {
		t.Errorf("open after set = %q, want 5m0s", st.Config.Open)
	}
	if s, ok := st.source(cli4); ok {
		t.Errorf("progress made before set still listed: %+v", s)
	}
	g.knockTCP(cli4, srv4, 8000)
	g.expect(filtered, cli4, srv4)

	gen1 := st.Config.Generation
	g.mustKG(g.srv, "set", g.iface, "--sequence", "7000,7001")
	st = g.status()
	if want := []string{"7000/tcp", "7001/tcp"}; !slices.Equal(st.Config.Sequence, want) {
		t.Errorf("sequence after set = %q, want %q", st.Config.Sequence, want)
	}
	if want := []string{"22/tcp"}; !slices.Equal(st.Config.Protect, want) {
		t.Errorf("protect after set = %q, want %q (set must keep what it is not given)", st.Config.Protect, want)
	}
	if st.Config.Generation == gen1 {
		t.Errorf("generation %d unchanged by set", gen1)
	}
	if got := g.xdpProg(); got != prog {
		t.Errorf("XDP program %d replaced by %d: set must not re-attach", prog, got)
	}

	// The old knock ports are plain closed ports now: answered with RST.
	for _, p := range []int{9000, 8000} {
		if got := g.dial(cli4, srv4, p, filteredWait); got != refused {
			t.Errorf("connect to old knock port %d: %s, want refused", p, got)
		}
	}
	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 7000, 7001)
	g.expect(open, cli4, srv4)

	// A rejected set leaves the configuration alone.
	if r := g.kg(g.srv, "set", g.iface, "--sequence", "70000"); r.code != 2 || !strings.Contains(r.stderr, "70000") {
		t.Errorf("set --sequence 70000: %s, want exit 2 naming the port", r)
	}
	if st2 := g.status(); st2.Config.Generation != st.Config.Generation || !slices.Equal(st2.Config.Sequence, st.Config.Sequence) {
		t.Errorf("a rejected set changed the configuration: %+v -> %+v", st.Config, st2.Config)
	}
}

// events --json reports each step and the opening, and ends cleanly on
// SIGINT.
func TestEvents(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--step-timeout", "1m", "--open", "10m")
	es := g.events()
	g.mustKG(g.cli, "knock", srv4.String(), "9000", "8000")

	// Both events are in the ring buffer before the sequence command
	// returns, whether or not the reader had started by then.
	ev := es.next(t, 10*time.Second)
	if ev.Type != "knock" || ev.Src != cli4.String() || ev.Port != 9000 || ev.Proto != "tcp" || ev.Stage != 1 {
		t.Errorf("first event %+v, want knock stage 1 from %s to 9000/tcp", ev, cli4)
	}
	if ev.Expires == nil || !ev.Expires.After(ev.Time) {
		t.Errorf("knock event expires %v, want the next step's deadline after %v", ev.Expires, ev.Time)
	}
	ev = es.next(t, 10*time.Second)
	if ev.Type != "open" || ev.Src != cli4.String() || ev.Port != 8000 || ev.Proto != "tcp" || ev.Stage != 2 {
		t.Errorf("second event %+v, want open (stage 2) from %s at 8000/tcp", ev, cli4)
	}
	if ev.Expires == nil || !ev.Expires.After(time.Now()) {
		t.Errorf("open event expires %v, want a time in the future", ev.Expires)
	}
	if code := es.stop(t); code != 0 {
		t.Errorf("events exited %d on SIGINT, want 0", code)
	}
}

// status --json shows the configuration, the counters and each source,
// knocking and then open.
func TestStatus(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000,7000/udp", "--step-timeout", "30s", "--open", "30m", "--allow", "192.0.2.0/24")

	st := g.status()
	if st.Mode != "native" && st.Mode != "generic" {
		t.Errorf("mode %q, want native or generic", st.Mode)
	}
	c := st.Config
	if want := []string{"9000/tcp", "8000/tcp", "7000/udp"}; !slices.Equal(c.Sequence, want) {
		t.Errorf("sequence %q, want %q", c.Sequence, want)
	}
	if c.StepTimeout != "30s" || c.Open != "30m0s" {
		t.Errorf("step_timeout %q, open %q, want 30s, 30m0s", c.StepTimeout, c.Open)
	}
	if want := []string{"22/tcp"}; !slices.Equal(c.Protect, want) {
		t.Errorf("protect %q, want %q", c.Protect, want)
	}
	if want := []string{"192.0.2.0/24"}; !slices.Equal(c.Allow, want) {
		t.Errorf("allow %q, want %q", c.Allow, want)
	}
	if len(st.Sources) != 0 {
		t.Errorf("sources before any knock: %+v", st.Sources)
	}

	g.expect(filtered, cli4, srv4)
	g.mustKG(g.cli, "knock", srv4.String(), "9000")
	s, ok := g.status().source(cli4)
	if !ok || s.State != "knocking" || s.Stage != 1 {
		t.Errorf("after one step: source %+v (listed: %v), want knocking at stage 1", s, ok)
	}
	if now := time.Now(); !s.Expires.After(now) || s.Expires.After(now.Add(31*time.Second)) {
		t.Errorf("step deadline %v, want within the 30s step timeout of %v", s.Expires, now)
	}

	g.mustKG(g.cli, "knock", srv4.String(), "8000", "7000/udp")
	st = g.status()
	s, ok = st.source(cli4)
	if !ok || s.State != "open" {
		t.Fatalf("after the sequence: source %+v (listed: %v), want open", s, ok)
	}
	if now := time.Now(); !s.Expires.After(now) || s.Expires.After(now.Add(31*time.Minute)) {
		t.Errorf("grant expires %v, want within the 30m window of %v", s.Expires, now)
	}
	for name, min := range map[string]uint64{"dropped_protected": 1, "dropped_knock": 3, "knock_advanced": 3, "granted": 1} {
		if got, ok := st.Counters[name]; !ok || got < min {
			t.Errorf("counter %s = %d (present: %v), want at least %d", name, got, ok, min)
		}
	}
	if got := st.Counters["granted"]; got != 1 {
		t.Errorf("counter granted = %d, want 1", got)
	}

	if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, cli4.String()) {
		t.Errorf("status (text) does not list %s:\n%s", cli4, out)
	}
}

// grant opens the gate for a source that never knocked; revoke closes it.
func TestGrantRevoke(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000")
	for _, fam := range []struct{ srv, alt, cli netip.Addr }{{srv4, alt4, cli4}, {srv6, alt6, cli6}} {
		g.expect(filtered, fam.alt, fam.srv)
		g.mustKG(g.srv, "grant", g.iface, fam.alt.String(), "--for", "1m")
		g.expect(open, fam.alt, fam.srv)
		g.expect(filtered, fam.cli, fam.srv)
		s, ok := g.status().source(fam.alt)
		if now := time.Now(); !ok || s.State != "open" || !s.Expires.After(now) || s.Expires.After(now.Add(61*time.Second)) {
			t.Errorf("granted source %s: %+v (listed: %v), want open for about 1m", fam.alt, s, ok)
		}
		g.mustKG(g.srv, "revoke", g.iface, fam.alt.String())
		g.expect(filtered, fam.alt, fam.srv)
		if s, ok := g.status().source(fam.alt); ok {
			t.Errorf("revoked source still listed: %+v", s)
		}
	}
}

// --allow lets listed sources through without knocking.
func TestAllow(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--allow", alt4.String()+"/32,"+alt6.String()+"/128")
	g.expect(open, alt4, srv4)
	g.expect(open, alt6, srv6)
	g.expect(filtered, cli4, srv4)
	g.expect(filtered, cli6, srv6)
	if n := g.status().Counters["passed_allowed"]; n < 2 {
		t.Errorf("counter passed_allowed = %d, want at least 2", n)
	}
}

// detach takes the program off the interface and removes every pin.
func TestDetach(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000")
	g.assertPinned()
	if g.xdpProg() == 0 {
		t.Fatal("no XDP program on the interface after attach")
	}
	g.expect(filtered, cli4, srv4)

	g.mustKG(g.srv, "detach", g.iface)
	if id := g.xdpProg(); id != 0 {
		t.Errorf("XDP program %d still on the interface after detach", id)
	}
	g.assertNoPins(g.iface)
	// Nothing filters any more.
	g.expect(open, cli4, srv4)

	if r := g.kg(g.srv, "detach", g.iface); r.code != 1 || !strings.Contains(r.stderr, g.iface) {
		t.Errorf("second detach: %s, want exit 1 naming the interface", r)
	}
}

// Bad input attaches nothing and says what was wrong; a second attach is
// refused and leaves the first gate enforcing.
func TestBadInput(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	for _, c := range []struct {
		name string
		args []string
		code int
		msg  string // in stderr
	}{
		{"unknown interface", []string{"attach", g.spare}, 1, `unknown interface "` + g.spare + `"`},
		{"knock port out of range", []string{"attach", g.iface, "--sequence", "70000"}, 2, "70000"},
		{"protected port out of range", []string{"attach", g.iface, "--protect", "99999"}, 2, "99999"},
		{"bad protocol", []string{"attach", g.iface, "--sequence", "9000/sctp,8000"}, 2, "sctp"},
		{"too many steps", []string{"attach", g.iface, "--sequence", "1,2,3,4,5,6,7,8,9"}, 2, "steps"},
		{"knock port also protected", []string{"attach", g.iface, "--sequence", "9000,22", "--protect", "22"}, 2, "22"},
		{"bad step timeout", []string{"attach", g.iface, "--step-timeout", "soon"}, 2, "soon"},
		{"bad open window", []string{"attach", g.iface, "--open", "10parsecs"}, 2, "10parsecs"},
		{"negative open window", []string{"attach", g.iface, "--open", "-5m"}, 2, "-5m"},
		{"bad mode", []string{"attach", g.iface, "--mode", "turbo"}, 2, "turbo"},
		{"bad CIDR", []string{"attach", g.iface, "--allow", "10.0.0.0/33"}, 2, "10.0.0.0/33"},
		{"not a CIDR", []string{"attach", g.iface, "--allow", "192.0.2.0/24,nonsense"}, 2, "nonsense"},
		{"bad max sources", []string{"attach", g.iface, "--max-sources", "many"}, 2, "many"},
		{"unknown flag", []string{"attach", g.iface, "--bogus"}, 2, "bogus"},
		{"no interface", []string{"attach"}, 2, ""},
		{"unknown second interface", []string{"attach", g.iface, g.spare}, 1, `unknown interface "` + g.spare + `"`},
	} {
		r := g.kg(g.srv, c.args...)
		if r.code != c.code || r.stderr == "" || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("%s: knockgate %s: %s; want exit %d, stderr naming %q",
				c.name, strings.Join(c.args, " "), r, c.code, c.msg)
		}
		g.assertNoPins(g.iface)
		g.assertNoPins(g.spare)
		if id := g.xdpProg(); id != 0 {
			t.Fatalf("%s: XDP program %d attached by a rejected command", c.name, id)
		}
	}
	// Nothing was attached: the port is reachable.
	g.expect(open, cli4, srv4)

	g.attach("--sequence", "9000,8000")
	prog := g.xdpProg()
	gen := g.status().Config.Generation
	r := g.kg(g.srv, "attach", g.iface, "--sequence", "7000,7001", "--protect", "22")
	if r.code != 1 || !strings.Contains(r.stderr, g.iface) {
		t.Errorf("second attach: %s, want exit 1 naming the interface", r)
	}
	if got := g.xdpProg(); got != prog {
		t.Errorf("XDP program %d replaced by %d after a refused attach", prog, got)
	}
	st := g.status()
	if st.Config.Generation != gen || !slices.Equal(st.Config.Sequence, []string{"9000/tcp", "8000/tcp"}) {
		t.Errorf("a refused attach changed the configuration: %+v", st.Config)
	}
	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
}

// attach over ssh grants the ssh client's address, unless --no-grant-self.
func TestGrantSelf(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	for _, c := range []struct {
		name           string
		client, server netip.Addr
		extra          []string
		granted        bool
		// Sources that must stay filtered: the client's other address in
		// the same family, and its address in the other family.
		alt, other, otherSrv netip.Addr
	}{
		{"ipv4", cli4, srv4, nil, true, alt4, cli6, srv6},
		{"ipv6", cli6, srv6, nil, true, alt6, cli4, srv4},
		{"--no-grant-self", cli4, srv4, []string{"--no-grant-self"}, false, alt4, cli6, srv6},
	} {
		cmd := g.srv.Cmd(kgBin, append([]string{"attach", g.iface, "--sequence", "9000,8000", "--protect", "22"}, c.extra...)...)
		cmd.Env = append(os.Environ(), "SSH_CONNECTION="+c.client.String()+" 5555 "+c.server.String()+" 22")
		if r := run(t, cmd); r.code != 0 {
			t.Fatalf("%s: attach with SSH_CONNECTION: %s", c.name, r)
		}
		st := g.status()
		s, ok := st.source(c.client)
		if c.granted {
			if !ok || s.State != "open" || !s.Expires.After(time.Now()) {
				t.Errorf("%s: ssh client %s: %+v (listed: %v), want open", c.name, c.client, s, ok)
			}
			g.expect(open, c.client, c.server)
		} else {
			if len(st.Sources) != 0 {
				t.Errorf("%s: sources %+v, want none", c.name, st.Sources)
			}
			g.expect(filtered, c.client, c.server)
		}
		g.expect(filtered, c.alt, c.server)
		g.expect(filtered, c.other, c.otherSrv)
		g.mustKG(g.srv, "detach", g.iface)
	}
}

// --mode generic runs the same gate in the kernel's generic (SKB) XDP path.
func TestGenericMode(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--mode", "generic")
	if g.xdpProg() == 0 {
		t.Fatal("no XDP program on the interface after attach")
	}
	if out, _ := g.srv.Run("ip", "link", "show", "dev", g.iface); !strings.Contains(out, "xdpgeneric") {
		t.Errorf("interface not in generic XDP mode:\n%s", out)
	}
	if st := g.status(); st.Mode != "generic" {
		t.Errorf("status mode %q, want generic", st.Mode)
	}
	g.expect(filtered, cli6, srv6)
	g.knockTCP(cli6, srv6, 9000, 8000)
	g.expect(open, cli6, srv6)
	g.expect(filtered, cli4, srv4)
	g.mustKG(g.srv, "detach", g.iface)
	if id := g.xdpProg(); id != 0 {
		t.Errorf("XDP program %d still on the interface after detach", id)
	}
}

// An interface named like a VLAN (eth0.7): bpffs refuses '.' in pin names,
// so the gate must still attach, report, open and detach cleanly.
func TestDottedInterfaceName(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGateNamed(t, "s.7")
	g.attach("--sequence", "9000,8000")
	if g.xdpProg() == 0 {
		t.Fatal("no XDP program on the interface after attach")
	}
	g.status()
	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	g.mustKG(g.srv, "detach", g.iface)
	if id := g.xdpProg(); id != 0 {
		t.Errorf("XDP program %d still on the interface after detach", id)
	}
	g.assertNoPins(g.iface)
}
