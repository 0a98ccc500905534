package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/knockgate/knockgate/test/netns"
)

// The upgrade from the previous release: a gate that release's own binary
// made (built here from git history) is adopted by this build's attach or
// run, its grants moved into the service default, nobody logged in locked
// out.

// previousRelease is the last release before services.
const previousRelease = "2f4d40fd30b4beb28a8b5fd796a3bb1fe3e6348d"

// hintCountsBuild is the last build whose grant filter is hint counts.
const hintCountsBuild = "13eab3530e71ccfb0235a82a7b20dc62d3393348"

// oldBuild is a knockgate binary built from a commit of git history.
type oldBuild struct {
	once sync.Once
	path string
	skip string // why there is none, when git history lacks the commit
	err  error
}

var (
	oldBuildsMu sync.Mutex
	oldBuilds   = map[string]*oldBuild{}
)

// prevBin is the previous release's knockgate binary.
func prevBin(t *testing.T) string { return binAt(t, previousRelease) }

// binAt is the knockgate binary of commit, built once per run from git
// history (git archive of the commit; the module cache is shared, so it is
// quick after the first time) beside this build's.
func binAt(t *testing.T, commit string) string {
	t.Helper()
	oldBuildsMu.Lock()
	b := oldBuilds[commit]
	if b == nil {
		b = &oldBuild{}
		oldBuilds[commit] = b
	}
	oldBuildsMu.Unlock()
	b.once.Do(func() {
		out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
		if err != nil {
			b.skip = "not in a git checkout"
			return
		}
		root := strings.TrimSpace(string(out))
		if err := exec.Command("git", "-C", root, "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
			b.skip = "commit " + commit[:7] + " is not in this clone's history (a shallow clone?)"
			return
		}
		dir := filepath.Join(filepath.Dir(kgBin), "build-"+commit[:7])
		src := filepath.Join(dir, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			b.err = err
			return
		}
		tarball := filepath.Join(dir, "src.tar")
		for _, c := range []*exec.Cmd{
			exec.Command("git", "-C", root, "archive", "-o", tarball, commit),
			exec.Command("tar", "-x", "-f", tarball, "-C", src),
		} {
			if out, err := c.CombinedOutput(); err != nil {
				b.err = fmt.Errorf("%s: %v\n%s", c, err, out)
				return
			}
		}
		b.path = filepath.Join(dir, "knockgate-"+commit[:7])
		build := exec.Command("go", "build", "-o", b.path, "./cmd/knockgate")
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build knockgate at %s: %v\n%s", commit[:7], err, out)
		}
		os.RemoveAll(src)
		os.Remove(tarball)
	})
	switch {
	case b.err != nil:
		t.Fatal(b.err)
	case b.skip != "" && os.Getenv("CI") == "true":
		t.Fatalf("no build of %s: %s (CI runs on a full clone)", commit[:7], b.skip)
	case b.skip != "":
		t.Skip("no build of " + commit[:7] + ": " + b.skip)
	}
	return b.path
}

// prev runs the previous release's binary in ns and fails the test unless
// it succeeds.
func (g *gate) prev(ns *netns.NS, args ...string) string {
	g.t.Helper()
	r := run(g.t, ns.Cmd(prevBin(g.t), args...))
	if r.code != 0 {
		g.t.Fatalf("knockgate (previous release) %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// Two more client addresses: one in the gates' allow lists, and a stranger
// nothing ever opens.
var (
	allowed4  = netip.MustParseAddr("10.77.0.5")
	stranger4 = netip.MustParseAddr("10.77.0.6")
)

// spaState is what status --json says of SPA: the counters, and each key's
// newest accepted timestamp.
type spaState struct {
	Counters map[string]uint64 `json:"counters"`
	SPA      struct {
		Keys []struct {
			ID           uint32 `json:"id"`
			LastAccepted string `json:"last_accepted"`
		} `json:"keys"`
	} `json:"spa"`
}

// spaStateWith reads it with the knockgate binary bin.
func (g *gate) spaStateWith(bin string) spaState {
	g.t.Helper()
	r := run(g.t, g.srv.Cmd(bin, "status", g.iface, "--json"))
	var st spaState
	if r.code != 0 {
		g.t.Fatalf("status --json: %s", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st.SPA.Keys) != 1 {
		g.t.Fatalf("status --json: %v, %d keys\n%s", err, len(st.SPA.Keys), r.stdout)
	}
	return st
}

// upgradeSetup is a gate made by the previous release: protecting 22 and
// the echo port, a sequence, an allow list (allowed4) and an SPA key; cli4
// knocked and holds a session to the echo port, cli6 opened by SPA, alt6
// is one step into the sequence. args made the gate; clientKey is the SPA
// client's key file.
type upgradeSetup struct {
	args      []string
	keys      string // the gate's key file
	clientKey string
	session   *session
	spa       spaState // before the upgrade
	prog      int      // the previous release's XDP program
}

func (g *gate) upgradeSetup() *upgradeSetup {
	g.t.Helper()
	echo(g.t, g.srv, sessionPort)
	for _, a := range []netip.Addr{allowed4, stranger4} {
		if _, err := g.cli.Run("ip", "addr", "add", a.String()+"/24", "dev", g.cliIface); err != nil {
			g.t.Fatal(err)
		}
	}
	key := newKey(g.t, 7, "laptop")
	u := &upgradeSetup{keys: keyFile(g.t, "gate.keys", key), clientKey: keyFile(g.t, "client.key", key)}
	u.args = []string{"attach", g.iface, "--sequence", "9000,8000", "--step-timeout", "1m", "--open", "10m",
		"--protect", fmt.Sprintf("%d,%d", protected, sessionPort), "--allow", allowed4.String() + "/32",
		"--spa-keys", u.keys, "--no-grant-self"}
	g.prev(g.srv, u.args...)
	u.prog = g.xdpProg()

	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	u.session = openSession(g.t, g.cli, srv4, sessionPort)
	u.session.exchange("before the upgrade", "hello")
	g.prev(g.cli, "knock", srv6.String(), "--spa-key", u.clientKey)
	g.expect(open, cli6, srv6)
	g.knockTCP(alt6, srv6, 9000)
	g.expect(open, allowed4, srv4)
	g.expect(filtered, alt4, srv4)
	g.expect(filtered, stranger4, srv4)
	u.spa = g.spaStateWith(prevBin(g.t))
	if u.spa.Counters["spa_accepted"] != 1 || u.spa.SPA.Keys[0].LastAccepted == "" {
		g.t.Fatalf("SPA before the upgrade: %+v, want one packet accepted", u.spa)
	}
	return u
}

// upgradedSource is a source as status --json lists it, with its service
// (when status gives it).
type upgradedSource struct {
	Addr    string `json:"addr"`
	State   string `json:"state"`
	Service string `json:"service"`
}

// sourcesOf lists the open and knocking sources status shows.
func (g *gate) sourcesOf() map[string]upgradedSource {
	g.t.Helper()
	var st struct {
		Sources []upgradedSource `json:"sources"`
	}
	out := g.mustKG(g.srv, "status", g.iface, "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		g.t.Fatalf("status --json: %v\n%s", err, out)
	}
	m := map[string]upgradedSource{}
	for _, s := range st.Sources {
		if s.Service != "" && s.Service != "default" {
			g.t.Errorf("source %+v: service %q, want default", s, s.Service)
		}
		m[s.Addr+" "+s.State] = s
	}
	return m
}

// pinnedProgID is the id of the program pinned as file in the gate's
// directory.
func (g *gate) pinnedProgID(file string) ebpf.ProgramID {
	g.t.Helper()
	p, err := ebpf.LoadPinnedProgram(filepath.Join(pinRoot, g.iface, file), nil)
	if err != nil {
		g.t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		g.t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// assertUpgraded checks that the gate is this build's, whole: status
// answers, the map only this build has is pinned, the interface's links run
// the pinned programs, and nothing of the upgrade is left in the pin root.
func (g *gate) assertUpgraded() {
	g.t.Helper()
	g.mustKG(g.srv, "status", g.iface)
	dir := filepath.Join(pinRoot, g.iface)
	if _, err := os.Stat(filepath.Join(dir, "service_counters")); err != nil {
		g.t.Fatalf("not this build's layout: %v", err)
	}
	if got, want := g.xdpProg(), int(g.pinnedProgID("prog")); got != want {
		g.t.Fatalf("XDP program %d on %s, want the pinned %d", got, g.iface, want)
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, "ifaces", g.iface, "tcx-egress"), nil)
	if err != nil {
		g.t.Fatal(err)
	}
	info, err := l.Info()
	l.Close()
	if err != nil {
		g.t.Fatal(err)
	}
	if want := g.pinnedProgID("egress"); info.Program != want {
		g.t.Fatalf("egress link runs program %d, want the pinned %d", info.Program, want)
	}
	entries, _ := os.ReadDir(pinRoot)
	for _, e := range entries {
		if strings.Contains(e.Name(), g.iface) && e.Name() != g.iface {
			g.t.Fatalf("%s left in %s", e.Name(), pinRoot)
		}
	}
}

// checkUpgraded checks what the upgrade must keep and what must work after
// it, on a gate upgradeSetup made.
func (g *gate) checkUpgraded(u *upgradeSetup) {
	g.t.Helper()
	g.assertUpgraded()
	if g.xdpProg() == u.prog {
		g.t.Errorf("XDP program %d: still the previous release's", u.prog)
	}
	// The session goes on, both ways; the grants stay, as default's.
	u.session.exchange("after the upgrade", "world")
	g.expect(open, cli4, srv4)
	g.expect(open, cli6, srv6)
	src := g.sourcesOf()
	for _, addr := range []netip.Addr{cli4, cli6} {
		if _, ok := src[addr.String()+" open"]; !ok {
			g.t.Errorf("status lists no grant of %s: %v", addr, src)
		}
	}
	// The allow list holds, strangers stay out.
	g.expect(open, allowed4, srv4)
	g.expect(filtered, alt4, srv4)
	g.expect(filtered, stranger4, srv4)
	// The configuration is the same.
	st := g.status()
	if strings.Join(st.Config.Sequence, ",") != "9000/tcp,8000/tcp" || st.Config.Open != "10m0s" ||
		strings.Join(st.Config.Protect, ",") != fmt.Sprintf("%d/tcp,%d/tcp", protected, sessionPort) ||
		strings.Join(st.Config.Allow, ",") != allowed4.String()+"/32" {
		g.t.Errorf("configuration after the upgrade: %+v", st.Config)
	}
	if sp := g.spaStateWith(kgBin); sp.Counters["spa_accepted"] != 1 || sp.SPA.Keys[0] != u.spa.SPA.Keys[0] ||
		sp.Counters["dropped_protected"] < u.spa.Counters["dropped_protected"] {
		g.t.Errorf("SPA after the upgrade: %+v, want as before: %+v", sp, u.spa)
	}
	// Knock progress made before goes on; a knock from scratch works.
	g.knockTCP(alt6, srv6, 8000)
	g.expect(open, alt6, srv6)
	g.knockTCP(alt4, srv4, 9000, 8000)
	g.expect(open, alt4, srv4)
	// SPA works, its replay state kept: a packet newer than the last one.
	g.mustKG(g.srv, "revoke", g.iface, cli6.String())
	g.expect(filtered, cli6, srv6)
	g.mustKG(g.cli, "knock", srv6.String(), "--spa-key", u.clientKey)
	g.expect(open, cli6, srv6)
	sp := g.spaStateWith(kgBin)
	before, err1 := time.Parse(time.RFC3339Nano, u.spa.SPA.Keys[0].LastAccepted)
	after, err2 := time.Parse(time.RFC3339Nano, sp.SPA.Keys[0].LastAccepted)
	if sp.Counters["spa_accepted"] != 2 || err1 != nil || err2 != nil || !after.After(before) {
		g.t.Errorf("SPA after a new packet: %+v, want it accepted, the key's last timestamp later than %s", sp, u.spa.SPA.Keys[0].LastAccepted)
	}
	g.expect(filtered, stranger4, srv4)
	u.session.exchange("at the end", "bye")
}

// attach of this build, with the arguments the previous release's attach
// was given, upgrades its gate in place.
func TestUpgradeAttach(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	prevBin(t)
	t.Parallel()
	g := newGate(t)
	u := g.upgradeSetup()
	// Any other command says what to do.
	r := g.kg(g.srv, "status", g.iface)
	if r.code != 1 || !strings.Contains(r.stderr, "previous knockgate release") || !strings.Contains(r.stderr, "knockgate attach "+g.iface) {
		t.Fatalf("status of the previous release's gate: %s; want a refusal saying to run attach", r)
	}
	out := g.mustKG(g.srv, u.args...)
	if !strings.Contains(out, "upgraded from the previous release") {
		t.Errorf("attach printed %q, want it to say it upgraded the gate", out)
	}
	g.checkUpgraded(u)
	// Attaching once more is attaching an attached gate.
	if r := g.kg(g.srv, u.args...); r.code != 1 || !strings.Contains(r.stderr, "already attached") {
		t.Errorf("attach again: %s, want already attached", r)
	}
}

// run of this build, on a config file saying what the previous release's
// attach was told, upgrades its gate in place.
func TestUpgradeRun(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	prevBin(t)
	t.Parallel()
	g := newGate(t)
	u := g.upgradeSetup()
	s := g.startRun(fmt.Sprintf("interfaces = [%q]\nsequence = \"9000,8000\"\nstep_timeout = \"1m\"\nopen = \"10m\"\n"+
		"protect = \"%d,%d\"\nallow = [%q]\nspa_keys = %q\n", g.iface, protected, sessionPort, allowed4.String()+"/32", u.keys))
	s.waitLog(5*time.Second, "gate upgraded from the previous release")
	g.checkUpgraded(u)
	if code := s.stop(os.Interrupt); code != 0 {
		t.Errorf("run exited %d", code)
	}
	// The gate stays, this build's.
	g.assertUpgraded()
	g.expect(open, cli4, srv4)
	g.expect(filtered, stranger4, srv4)
}

// The upgrade killed anywhere (SIGKILL at its 1st, 2nd, ... kill point):
// at every moment the gate judges with the grant in force and the session
// going on; the next command finds the previous release's gate as it was
// (and attach upgrades it) or this build's whole (a marked upgrade the
// next command, whichever, finishes).
func TestKillUpgradeAnywhere(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	prevBin(t)
	g := newGate(t)
	k := g.killUpgradeAnywhere(func(args ...string) { g.prev(g.srv, args...) }, "previous knockgate release",
		func(n int) {
			if got := g.xdpProg(); got != 0 && g.pinnedProgID("prog") != ebpf.ProgramID(got) {
				t.Fatalf("killed at point %d before the mark: XDP program %d is not the pinned one", n, got)
			}
		},
		func(int) { g.assertUpgraded() })
	t.Logf("the upgrade killed at each of its %d points: %d before its mark, %d after", k.points, k.unfinished, k.finished)
	if k.finished < 5 || k.unfinished < 5 {
		t.Errorf("the upgrade passed only %d points before its mark and %d after", k.unfinished, k.finished)
	}
}

// killedUpgrades is what killUpgradeAnywhere saw: the upgrade's kill
// points, and how many kills left it to the next attach (other commands
// refusing the gate) and how many found it done.
type killedUpgrades struct{ points, unfinished, finished int }

// killUpgradeAnywhere makes a gate with old (an earlier build's knockgate,
// run with its arguments in the server's namespace), grants cli4, and runs
// this build's attach of it killed at its 1st, 2nd, ... kill point, until
// one runs through. After each kill, whatever it left judges with the grant
// in force and a session going on; status refuses the gate saying refusal
// (then refused runs, and attach finishes the upgrade) or answers; upgraded
// checks the gate then, which must still hold the grant. Each round ends
// with a detach that leaves no pin.
func (g *gate) killUpgradeAnywhere(old func(args ...string), refusal string, refused, upgraded func(n int)) killedUpgrades {
	t := g.t
	t.Helper()
	echo(t, g.srv, sessionPort)
	args := []string{"attach", g.iface, "--sequence", "9000,8000", "--open", "10m",
		"--protect", fmt.Sprintf("%d,%d", protected, sessionPort), "--no-grant-self"}
	// A session opened before any gate: each attach seeds it as a flow,
	// and only the flow lets it through (cli6 is never granted).
	sess := openSession(t, g.cli, srv6, sessionPort)
	sess.exchange("before any gate", "0")
	var k killedUpgrades
	for n := 1; ; n++ {
		old(args...)
		old("grant", g.iface, cli4.String())
		killed, r := g.killedAt(g.srv, n, args...)
		if !killed && r.code != 0 {
			t.Fatalf("attach with kill point %d unreached: %s", n, r)
		}
		// Whatever the kill left, some program judges, with the grant.
		g.expect(open, cli4, srv4)
		g.expect(filtered, alt4, srv4)
		sess.exchange(fmt.Sprintf("killed at point %d", n), fmt.Sprint(n))
		if killed {
			st := g.kg(g.srv, "status", g.iface)
			switch {
			case st.code == 1 && strings.Contains(st.stderr, refusal):
				k.unfinished++
				refused(n)
				g.mustKG(g.srv, args...)
			case st.code == 0:
				k.finished++
			default:
				t.Fatalf("status after the upgrade killed at point %d: %s", n, st)
			}
		}
		upgraded(n)
		if _, ok := g.sourcesOf()[cli4.String()+" open"]; !ok {
			t.Fatalf("upgrade killed at point %d: the grant of %s is gone", n, cli4)
		}
		g.expect(open, cli4, srv4)
		g.expect(filtered, alt4, srv4)
		sess.exchange(fmt.Sprintf("after point %d", n), "+"+fmt.Sprint(n))
		g.mustKG(g.srv, "detach", g.iface)
		g.assertNoPins(g.iface)
		if !killed {
			k.points = n - 1
			return k
		}
	}
}

// olderGate is a gate an older build's attach made, as the upgrade tests
// start from: a grant from a knock (cli4), one from the operator (cli6),
// and a session going on (to srv4's sessionPort), each checked.
type olderGate struct {
	gate  *gate
	build string   // the commit that made it
	args  []string // the attach that made it, which this build's adopts it with
	ports string   // its protected ports
	prog  int      // the XDP program it ran
	sess  *session
}

// newOlderGate makes such a gate with the knockgate of commit build.
func newOlderGate(t *testing.T, build string) *olderGate {
	t.Helper()
	g := newGate(t)
	echo(t, g.srv, sessionPort)
	o := &olderGate{gate: g, build: build, ports: fmt.Sprintf("%d,%d", protected, sessionPort)}
	o.args = []string{"attach", g.iface, "--sequence", "9000,8000", "--step-timeout", "1m", "--open", "10m",
		"--protect", o.ports, "--no-grant-self"}
	kg := olderKG(t, g, build)
	kg(o.args...)
	o.prog = g.xdpProg()
	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	o.sess = openSession(t, g.cli, srv4, sessionPort)
	o.sess.exchange("before the upgrade", "hello")
	kg("grant", g.iface, cli6.String())
	g.expect(open, cli6, srv6)
	g.expect(filtered, alt4, srv4)
	return o
}

// olderKG runs the knockgate of commit build in g's server namespace, and
// fails the test unless it succeeds.
func olderKG(t *testing.T, g *gate, build string) func(args ...string) {
	old := binAt(t, build)
	return func(args ...string) {
		t.Helper()
		if r := run(t, g.srv.Cmd(old, args...)); r.code != 0 {
			t.Fatalf("knockgate %s %s: %s", build[:7], strings.Join(args, " "), r)
		}
	}
}

// adopt has this build take the gate over, via "attach" (whose output must
// say printed) or "run" (whose log must say logged; the service is
// returned).
func (o *olderGate) adopt(via, printed, logged string) *service {
	g := o.gate
	if via == "attach" {
		if out := g.mustKG(g.srv, o.args...); !strings.Contains(out, printed) {
			g.t.Errorf("attach printed %q, want it to say it upgraded the gate", out)
		}
		return nil
	}
	s := g.startRun(fmt.Sprintf("interfaces = [%q]\nsequence = \"9000,8000\"\nstep_timeout = \"1m\"\nopen = \"10m\"\n"+
		"protect = %q\n", g.iface, o.ports))
	s.waitLog(5*time.Second, logged)
	return s
}

// checkAdopted checks the gate after the upgrade: this build's program on
// the interface, pinned, and every grant and the session kept.
func (o *olderGate) checkAdopted() {
	g := o.gate
	if got, want := g.xdpProg(), int(g.pinnedProgID("prog")); got == o.prog || got != want {
		g.t.Errorf("XDP program %d on %s, want the pinned %d, not the old %d", got, g.iface, want, o.prog)
	}
	o.sess.exchange("after the upgrade", "world")
	g.expect(open, cli4, srv4)
	g.expect(open, cli6, srv6)
	g.expect(filtered, alt4, srv4)
}

// finish ends the test: the session still going on, and the service s
// stopped cleanly, or (attach) another attach refused as already done.
func (o *olderGate) finish(s *service) {
	g := o.gate
	o.sess.exchange("at the end", "bye")
	if s != nil {
		if code := s.stop(os.Interrupt); code != 0 {
			g.t.Errorf("run exited %d", code)
		}
	} else if r := g.kg(g.srv, o.args...); r.code != 1 || !strings.Contains(r.stderr, "already attached") {
		g.t.Errorf("attach again: %s, want already attached", r)
	}
}

// A gate of hint counts, made by the last build that had them, is adopted
// by this build's attach or run: the hint bitmap made and the counts' pin
// gone, every grant (made by a knock, by the operator) and the session
// going on kept, and the gate working as before afterwards.
func TestUpgradeFromHintCounts(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	binAt(t, hintCountsBuild)
	for _, via := range []string{"attach", "run"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			o := newOlderGate(t, hintCountsBuild)
			g := o.gate

			// Any other command says what to do.
			r := g.kg(g.srv, "status", g.iface)
			if r.code != 1 || !strings.Contains(r.stderr, "hint counts") || !strings.Contains(r.stderr, "knockgate attach "+g.iface) {
				t.Fatalf("status of a gate of hint counts: %s; want a refusal saying to run attach", r)
			}
			s := o.adopt(via, "upgraded in place from hint counts", "gate upgraded from hint counts to the hint bitmap")

			dir := filepath.Join(pinRoot, g.iface)
			if _, err := os.Stat(filepath.Join(dir, "hint_bits")); err != nil {
				t.Errorf("no hint bitmap after the upgrade: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "hints")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the hint counts' pin is still there: %v", err)
			}
			o.checkAdopted()
			// Grants made and ended after it, from the program and from Go.
			g.knockTCP(alt4, srv4, 9000, 8000)
			g.expect(open, alt4, srv4)
			g.mustKG(g.srv, "revoke", g.iface, cli6.String())
			g.expect(filtered, cli6, srv6)
			g.mustKG(g.srv, "grant", g.iface, cli6.String())
			g.expect(open, cli6, srv6)
			o.finish(s)
		})
	}
}

// The upgrade from hint counts killed anywhere (SIGKILL at its 1st, 2nd, ...
// kill point): at every moment the gate judges with the grant in force and
// the session going on; until the upgrade is done other commands say to run
// attach, which finishes it.
func TestKillHintUpgradeAnywhere(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	binAt(t, hintCountsBuild)
	g := newGate(t)
	dir := filepath.Join(pinRoot, g.iface)
	k := g.killUpgradeAnywhere(olderKG(t, g, hintCountsBuild), "hint counts", func(int) {}, func(n int) {
		if _, err := os.Stat(filepath.Join(dir, "hints")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("killed at point %d: the hint counts' pin after the upgrade: %v", n, err)
		}
		if got, want := g.xdpProg(), int(g.pinnedProgID("prog")); got != want {
			t.Fatalf("killed at point %d: XDP program %d on %s, want the pinned %d", n, got, g.iface, want)
		}
	})
	t.Logf("the upgrade killed at each of its %d points: %d left it to the next attach, %d after it was done", k.points, k.unfinished, k.finished)
	if k.unfinished < 3 {
		t.Errorf("the upgrade passed only %d points before it was done", k.unfinished)
	}
}

// cachelessBuild is the last build without the grant cache.
const cachelessBuild = "a1423c670e16d7576ca543959a36e87658253cb8"

// A gate made by the last build without the grant cache works as it is
// with this build's commands, and this build's attach or run adds the
// cache and swaps its programs in: every grant (a knock's, the operator's)
// and the session going on kept. Afterwards a grant the cache answers for
// is revoked at once, and one renewed lasts.
func TestUpgradeAddsGrantCache(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	binAt(t, cachelessBuild)
	for _, via := range []string{"attach", "run"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			o := newOlderGate(t, cachelessBuild)
			g := o.gate
			dir := filepath.Join(pinRoot, g.iface)

			// This build's commands work on it as it is.
			if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, cli6.String()) {
				t.Errorf("status before the upgrade does not list %s:\n%s", cli6, out)
			}
			g.mustKG(g.srv, "revoke", g.iface, cli6.String())
			g.expect(filtered, cli6, srv6)
			g.mustKG(g.srv, "grant", g.iface, cli6.String())
			g.expect(open, cli6, srv6)
			if exists(filepath.Join(dir, "grant_cache")) {
				t.Fatal("a grant cache before the upgrade")
			}

			s := o.adopt(via, "grant cache added", "gate upgraded in place with a grant cache")
			if !exists(filepath.Join(dir, "grant_cache")) {
				t.Error("no grant cache after the upgrade")
			}
			o.checkAdopted()

			// Grants the cache answers for (each has passed since the
			// upgrade), revoked: cut at once.
			g.expect(open, cli4, srv4)
			g.mustKG(g.srv, "revoke", g.iface, cli4.String())
			g.expect(filtered, cli4, srv4)
			g.mustKG(g.srv, "revoke", g.iface, cli6.String())
			g.expect(filtered, cli6, srv6)
			g.knockTCP(alt4, srv4, 9000, 8000)
			g.expect(open, alt4, srv4)
			g.expect(open, alt4, srv4)
			o.finish(s)
		})
	}
}

// The upgrade that adds the grant cache killed anywhere (SIGKILL at its
// 1st, 2nd, ... kill point): at every moment the gate judges with the
// grant in force and the session going on, other commands work, and the
// next attach finishes the upgrade.
func TestKillCacheUpgradeAnywhere(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat", "git", "tar")
	binAt(t, cachelessBuild)
	g := newGate(t)
	dir := filepath.Join(pinRoot, g.iface)
	args := []string{"attach", g.iface, "--sequence", "9000,8000", "--open", "10m",
		"--protect", fmt.Sprintf("%d,%d", protected, sessionPort), "--no-grant-self"}
	cut, oldProg := 0, 0
	oldKG := olderKG(t, g, cachelessBuild)
	k := g.killUpgradeAnywhere(func(args ...string) {
		t.Helper()
		oldKG(args...)
		if args[0] == "attach" {
			oldProg = g.xdpProg()
		}
	}, "grant cache", func(n int) {
		t.Fatalf("killed at point %d: status refused the gate", n)
	}, func(n int) {
		// A cut upgrade leaves the old program, with or without the
		// cache pinned; the next attach finishes it.
		if p := g.xdpProg(); p == oldProg || p != int(g.pinnedProgID("prog")) || !exists(filepath.Join(dir, "grant_cache")) {
			cut++
			if r := g.kg(g.srv, args...); r.code != 0 && !strings.Contains(r.stderr, "already attached") {
				t.Fatalf("killed at point %d: attach again: %s", n, r)
			}
		}
		if !exists(filepath.Join(dir, "grant_cache")) {
			t.Fatalf("killed at point %d: no grant cache after the next attach", n)
		}
		if got, want := g.xdpProg(), int(g.pinnedProgID("prog")); got != want || got == oldProg {
			t.Fatalf("killed at point %d: XDP program %d on %s, want the pinned %d, not the old %d", n, got, g.iface, want, oldProg)
		}
		g.expect(open, cli4, srv4)
		g.mustKG(g.srv, "revoke", g.iface, cli4.String())
		g.expect(filtered, cli4, srv4)
		g.mustKG(g.srv, "grant", g.iface, cli4.String())
	})
	t.Logf("the upgrade killed at each of its %d points: %d left it to the next attach", k.points, cut)
	if cut < 2 {
		t.Errorf("only %d kills left the upgrade cut short", cut)
	}
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
