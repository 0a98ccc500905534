package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// runConfig is a config file for the gate's server interfaces.
func runConfig(ifaces []string, extra ...string) string {
	q := make([]string, len(ifaces))
	for i, n := range ifaces {
		q[i] = fmt.Sprintf("%q", n)
	}
	return fmt.Sprintf("interfaces = [%s]\nsequence = \"9000,8000\"\nstep_timeout = \"30s\"\nopen = \"10m\"\nprotect = \"22\"\n%s\n",
		strings.Join(q, ", "), strings.Join(extra, "\n"))
}

// One gate on two interfaces: a knock that came in over one opens the
// protected port over the other, and each interface counts its own packets.
// The events reach the service's log as JSON lines.
func TestRunTwoInterfaces(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	second := g.addLink("t")
	s := g.startRun(runConfig([]string{g.iface, second}, `log_format = "json"`))

	g.expect(filtered, cli4, srv4)
	g.expect(filtered, cli4, srv4b)
	g.knockTCP(cli4, srv4, 9000, 8000) // over the first link
	g.expect(open, cli4, srv4b)        // over the second
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4b)

	st := g.gateStatus(g.iface)
	first, other := st.iface(g.iface), st.iface(second)
	if first.State != "attached" || other.State != "attached" {
		t.Fatalf("interfaces %+v, want both attached", st.Interfaces)
	}
	if first.Counters["dropped_knock"] < 2 || other.Counters["dropped_knock"] != 0 {
		t.Errorf("dropped_knock: %d on %s, %d on %s; want the knocks on the first only",
			first.Counters["dropped_knock"], g.iface, other.Counters["dropped_knock"], second)
	}
	if other.Counters["passed_granted"] < 1 || other.Counters["dropped_protected"] < 2 {
		t.Errorf("counters of %s: %v, want passed_granted and dropped_protected", second, other.Counters)
	}

	line := s.waitLog(5*time.Second, `"msg":"open"`)
	var ev map[string]any
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	for k, want := range map[string]any{"type": "open", "src": cli4.String(), "port": float64(8000), "proto": "tcp", "stage": float64(2)} {
		if ev[k] != want {
			t.Errorf("open event %s = %v, want %v (line %s)", k, ev[k], want, line)
		}
	}
	for _, k := range []string{"time", "expires"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("open event has no %s: %s", k, line)
		}
	}
	s.waitLog(5*time.Second, `"msg":"knock"`, `"port":9000`, `"stage":1`)
	if code := s.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("run exited %d on SIGTERM, want 0", code)
	}
}

// An interface deleted while run is up is reported missing, and gets its
// gate back within 2 s of being made again; an interface named but not
// there waits and is attached when it appears.
func TestRunInterfaceComesBack(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	second := g.addLink("t")
	third := g.iface[:len(g.iface)-1] + "w"
	s := g.startRun(runConfig([]string{g.iface, second, third}))

	st := g.gateStatus(g.iface)
	old := st.iface(second).Ifindex
	if st.iface(second).State != "attached" || st.iface(third).State != "waiting" {
		t.Fatalf("interfaces %+v, want %s attached and %s waiting", st.Interfaces, second, third)
	}
	if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, third+":") || !strings.Contains(out, "waiting") {
		t.Errorf("status does not say %s is waiting:\n%s", third, out)
	}

	g.unplug(second)
	s.waitLog(5*time.Second, "interface gone", second)
	if st := g.gateStatus(g.iface); st.iface(second).State != "missing" {
		t.Errorf("after %s went: %+v, want missing", second, st.iface(second))
	}
	if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, second+":") || !strings.Contains(out, "missing: the interface is gone, nothing is enforced there") {
		t.Errorf("status does not say %s is gone:\n%s", second, out)
	}

	g.plug(second)
	eventually(t, 2*time.Second, second+" attached again", func() bool {
		i := g.gateStatus(g.iface).iface(second)
		return i.State == "attached" && i.Ifindex != old
	})
	g.expect(filtered, cli4, srv4b)
	g.knockTCP(cli4, srv4b, 9000, 8000)
	g.expect(open, cli4, srv4b)
	g.expect(open, cli4, srv4) // the grant is the gate's, on every interface

	if err := netns.Veth(g.srv, third, g.cli, peer(third)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, third+" attached when it appeared", func() bool {
		return g.gateStatus(g.iface).iface(third).State == "attached"
	})
}

// status tells the truth about an interface whose gate went with it, also
// without run: attach, then the interface goes.
func TestStatusInterfaceGone(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	second := g.addLink("t")
	g.mustKG(g.srv, "attach", g.iface, second, "--no-grant-self")
	g.unplug(second)
	st := g.gateStatus(second) // an interface name still finds its gate
	if st.Gate != g.iface || st.iface(second).State != "missing" || st.iface(g.iface).State != "attached" {
		t.Errorf("status after %s went: %+v", second, st.Interfaces)
	}
	// attach on the interface made again puts the same gate back on it.
	g.plug(second)
	out := g.mustKG(g.srv, "attach", second, "--no-grant-self")
	if !strings.Contains(out, "gate "+g.iface+", kept with its grants") {
		t.Errorf("attach of the returned interface printed %q", out)
	}
	if st := g.gateStatus(g.iface); st.iface(second).State != "attached" {
		t.Errorf("after attach: %+v", st.iface(second))
	}
	if r := g.kg(g.srv, "attach", second, "--no-grant-self"); r.code != 1 || !strings.Contains(r.stderr, "already attached") {
		t.Errorf("attach again: %s, want exit 1, already attached", r)
	}
}

// SIGHUP applies the file again: a new sequence works at once; a broken
// file changes nothing, is logged with its key and line, and is counted.
func TestRunReload(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	if _, err := g.srv.Run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	metrics := `metrics = "127.0.0.1:9746"`
	s := g.startRun(runConfig([]string{g.iface}, metrics))
	gen := g.gateStatus(g.iface).Config.Generation

	s.reload(strings.Replace(runConfig([]string{g.iface}, metrics), `"9000,8000"`, `"7000,7001"`, 1))
	st := g.gateStatus(g.iface)
	if got := strings.Join(st.Config.Sequence, ","); got != "7000/tcp,7001/tcp" || st.Config.Generation == gen {
		t.Fatalf("after reload: sequence %s, generation %d (was %d)", got, st.Config.Generation, gen)
	}
	g.knockTCP(cli4, srv4, 7000, 7001)
	g.expect(open, cli4, srv4)

	s.reload("interfaces = [\"" + g.iface + "\"]\nsequence = \"7100,7101\"\nprotect = \"22,70000\"\n")
	s.waitLog(5*time.Second, "reload failed", "protect: port 70000 out of range", ".toml:3")
	if got := strings.Join(g.gateStatus(g.iface).Config.Sequence, ","); got != "7000/tcp,7001/tcp" {
		t.Errorf("after a broken reload: sequence %s, want 7000,7001 kept", got)
	}
	g.knockTCP(alt4, srv4, 7000, 7001)
	g.expect(open, alt4, srv4)
	m := g.scrape("127.0.0.1:9746")
	if metric(m, `knockgate_reloads_total{result="failure"}`) != 1 || metric(m, `knockgate_reloads_total{result="success"}`) != 2 ||
		metric(m, "knockgate_config_last_reload_successful") != 0 {
		t.Errorf("reload metrics after one good and one broken reload:\n%s", grepLines(m, "reload"))
	}
	if metric(m, "knockgate_config_last_reload_success_timestamp_seconds") < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last successful reload time:\n%s", grepLines(m, "reload"))
	}
}

func grepLines(text, part string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, part) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Stopping run leaves the gate pinned and enforcing; starting it again
// adopts the gate with its grants and program.
func TestRunRestartKeepsGrant(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	s := g.startRun(runConfig([]string{g.iface}))
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	prog := g.xdpProg()
	if code := s.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("run exited %d on SIGTERM", code)
	}
	s.waitLog(time.Second, "stopping: the gate stays pinned and enforcing")
	// Nobody is running: the gate still judges every packet.
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
	if got := g.xdpProg(); got != prog {
		t.Errorf("XDP program %d after run stopped, want %d", got, prog)
	}

	s = g.startRunAt(s.path, nil)
	s.waitLog(time.Second, "gate adopted", "program_replaced=false")
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
	if got := g.xdpProg(); got != prog {
		t.Errorf("XDP program %d after run started again, want %d (adopted, not replaced)", got, prog)
	}
	if src, ok := g.status().source(cli4); !ok || src.State != "open" {
		t.Errorf("grant of %s after the restart: %+v (listed %v)", cli4, src, ok)
	}
	// SIGINT stops it the same way.
	if code := s.stop(os.Interrupt); code != 0 {
		t.Errorf("run exited %d on SIGINT", code)
	}
	g.expect(open, cli4, srv4)
}

// A real scrape passes promtool's checks and shows the gate as it is.
func TestRunMetrics(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "promtool")
	t.Parallel()
	g := newGate(t)
	if _, err := g.srv.Run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	g.startRun(runConfig([]string{g.iface}, `metrics = "127.0.0.1:9746"`))
	g.expect(filtered, cli4, srv4)
	g.knockTCP(cli4, srv4, 9000)
	g.knockTCP(alt4, srv4, 9000, 8000)
	// A connection of the granted source: the server's SYN+ACK makes a
	// flow, and the handshake's ACK passes by it.
	g.expect(open, alt4, srv4)
	m := g.scrape("127.0.0.1:9746")

	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(m)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\nscrape:\n%s", err, out, m)
	}
	for series, want := range map[string]float64{
		`knockgate_packets_total{verdict="dropped_knock"}`:                                       3,
		`knockgate_interface_packets_total{interface="` + g.iface + `",verdict="dropped_knock"}`: 3,
		`knockgate_knocks_total{outcome="advanced"}`:                                             3,
		`knockgate_grants_total`:                                                                 1,
		`knockgate_sources{state="open"}`:                                                        1,
		`knockgate_sources{state="knocking"}`:                                                    1,
		`knockgate_interfaces{state="attached"}`:                                                 1,
		`knockgate_interfaces{state="missing"}`:                                                  0,
		`knockgate_events_lost_total`:                                                            0,
		`knockgate_safe_mode_pending`:                                                            0,
	} {
		if got := metric(m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, series := range []string{`knockgate_packets_total{verdict="dropped_protected"}`,
		`knockgate_packets_total{verdict="passed_flow"}`, `knockgate_flows_total{event="learned"}`} {
		if got := metric(m, series); got < 1 {
			t.Errorf("%s = %v, want at least 1", series, got)
		}
	}
}

// Safe mode: a set that is not confirmed undoes itself when the deadline
// passes, with no process left to do it; a confirmed one stays.
func TestSafeModeSet(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--no-grant-self")
	out := g.mustKG(g.srv, "set", g.iface, "--sequence", "7000,7001", "--confirm", "2s")
	if !strings.Contains(out, "safe mode: unless \"knockgate confirm "+g.iface+"\" runs by") {
		t.Errorf("set --confirm printed %q", out)
	}
	if st := g.gateStatus(g.iface); st.SafeMode == nil || st.SafeMode.State != "pending" {
		t.Errorf("safe mode after set --confirm: %+v", st.SafeMode)
	}
	if r := g.kg(g.srv, "set", g.iface, "--open", "5m"); r.code != 1 || !strings.Contains(r.stderr, "awaits confirmation") {
		t.Errorf("set while a change awaits confirmation: %s", r)
	}
	g.knockTCP(cli4, srv4, 7000, 7001)
	g.expect(open, cli4, srv4)
	// Nobody confirms; the set process is long gone. Past the deadline the
	// old sequence is the one in force.
	eventually(t, 5*time.Second, "rollback", func() bool {
		return strings.Join(g.gateStatus(g.iface).Config.Sequence, ",") == "9000/tcp,8000/tcp"
	})
	if got := g.dial(alt4, srv4, 7000, filteredWait); got != refused {
		t.Errorf("connect to 7000 after the rollback: %s, want refused (no longer a knock port)", got)
	}
	g.knockTCP(alt4, srv4, 9000, 8000)
	g.expect(open, alt4, srv4)
	if r := g.kg(g.srv, "confirm", g.iface); r.code != 1 || !strings.Contains(r.stderr, "too late") {
		t.Errorf("confirm after the deadline: %s", r)
	}

	g.mustKG(g.srv, "set", g.iface, "--sequence", "7100,7101", "--confirm", "1m")
	if out := g.mustKG(g.srv, "confirm", g.iface); !strings.Contains(out, "confirmed") {
		t.Errorf("confirm printed %q", out)
	}
	if st := g.gateStatus(g.iface); st.SafeMode != nil || strings.Join(st.Config.Sequence, ",") != "7100/tcp,7101/tcp" {
		t.Errorf("after confirming: safe mode %+v, sequence %v", st.SafeMode, st.Config.Sequence)
	}
	if r := g.kg(g.srv, "confirm", g.iface); r.code != 1 || !strings.Contains(r.stderr, "nothing to confirm") {
		t.Errorf("confirm with nothing pending: %s", r)
	}
}

// An attach that is not confirmed is undone: the gate lets everything
// through, and the next attach starts afresh.
func TestSafeModeAttach(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	g.attach("--sequence", "9000,8000", "--no-grant-self", "--confirm", "2s")
	g.expect(filtered, cli4, srv4)
	eventually(t, 5*time.Second, "attach undone", func() bool { return g.dial(cli4, srv4, protected, filteredWait) == open })
	if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, "the attach was not confirmed") {
		t.Errorf("status after the undone attach:\n%s", out)
	}
	g.attach("--sequence", "9000,8000", "--no-grant-self", "--confirm", "1m")
	g.expect(filtered, cli4, srv4)
	g.mustKG(g.srv, "confirm", g.iface)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
}

// run --confirm: a reload that is not confirmed goes back, one that is stays.
func TestSafeModeReload(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	second := g.addLink("t")
	s := g.startRun(runConfig([]string{g.iface}), "--confirm", "2s")
	s.reload(strings.Replace(runConfig([]string{g.iface, second}), `"9000,8000"`, `"7000,7001"`, 1))
	s.waitLog(time.Second, "reloaded in safe mode")
	st := g.gateStatus(g.iface)
	if st.SafeMode == nil || st.iface(second).State != "attached" {
		t.Fatalf("after the safe reload: safe mode %+v, %s %+v", st.SafeMode, second, st.iface(second))
	}
	s.waitLog(10*time.Second, "reload not confirmed in time: rolled back")
	st = g.gateStatus(g.iface)
	if strings.Join(st.Config.Sequence, ",") != "9000/tcp,8000/tcp" || st.iface(second).State != "" {
		t.Errorf("after the rollback: sequence %v, interfaces %+v", st.Config.Sequence, st.Interfaces)
	}
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)

	s.reload(strings.Replace(runConfig([]string{g.iface}), `"9000,8000"`, `"7000,7001"`, 1))
	g.mustKG(g.srv, "confirm", g.iface)
	s.waitLog(5*time.Second, "reload confirmed")
	if got := strings.Join(g.gateStatus(g.iface).Config.Sequence, ","); got != "7000/tcp,7001/tcp" {
		t.Errorf("after the confirmed reload: sequence %s", got)
	}
}

// A reload's rollback raced by a `knockgate set` from another shell, made
// just after the deadline: whichever comes first, the gate ends with both,
// whole — the reload undone (its sequence gone, the allow entry it added
// removed, run back on the old file) and the set's change in force. Each
// round starts the set at another point of run's one-second settling tick,
// so both orders are seen.
func TestSafeModeRollbackRacesSet(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	base := runConfig([]string{g.iface})
	s := g.startRun(base, "--confirm", "1s")
	const added = "198.18.7.0/24"
	changed := strings.Replace(runConfig([]string{g.iface}, `allow = ["`+added+`"]`), `"9000,8000"`, `"7000,7001"`, 1)
	rolledBack := func() int {
		n := 0
		for _, line := range s.out.all() {
			if strings.Contains(line, "reload not confirmed in time: rolled back") {
				n++
			}
		}
		return n
	}
	const rounds = 6
	for round := range rounds {
		s.reload(changed)
		if st := g.gateStatus(g.iface); st.SafeMode == nil || st.SafeMode.State != "pending" {
			t.Fatalf("round %d: after the safe reload: safe mode %+v", round, st.SafeMode)
		}
		// Refused while the change is pending; the first set to succeed
		// lands within a few milliseconds of the deadline, or later.
		time.Sleep(time.Duration(round) * time.Second / rounds)
		open := fmt.Sprintf("%dm", 11+round)
		eventually(t, 10*time.Second, "a set after the deadline", func() bool {
			r := g.kg(g.srv, "set", g.iface, "--open", open)
			if r.code != 0 && !strings.Contains(r.stderr, "awaits confirmation") {
				t.Fatalf("round %d: set: %s", round, r)
			}
			return r.code == 0
		})
		eventually(t, 10*time.Second, "run settles the reload", func() bool { return rolledBack() == round+1 })
		st := g.gateStatus(g.iface)
		if got := strings.Join(st.Config.Sequence, ","); got != "9000/tcp,8000/tcp" {
			t.Errorf("round %d: sequence %s, want the reload rolled back; log:\n%s\n%s", round, got, s.out, g.mustKG(g.srv, "status", g.iface))
		}
		if want, _ := time.ParseDuration(open); st.Config.Open != want.String() {
			t.Errorf("round %d: open %s, want the set's %s", round, st.Config.Open, want)
		}
		if slices.Contains(st.Config.Allow, added) {
			t.Errorf("round %d: allow list %v still has the rolled-back reload's %s", round, st.Config.Allow, added)
		}
		if st.SafeMode != nil {
			t.Errorf("round %d: safe mode %+v after settling", round, st.SafeMode)
		}
	}
	if strings.Contains(s.out.String(), "reload confirmed") {
		t.Errorf("a rolled-back reload was taken for confirmed; log:\n%s", s.out)
	}
	if strings.Contains(s.out.String(), "settling a safe-mode change") {
		t.Errorf("settling failed; log:\n%s", s.out)
	}
}

// run --check validates and changes nothing; a bad file fails naming the
// key and the line, and so does starting run on it.
func TestRunCheck(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	path := g.configPath()
	os.WriteFile(path, []byte(runConfig([]string{g.iface})), 0o644)
	out := g.mustKG(g.srv, "run", "--check", "--config", path)
	if !strings.Contains(out, "gate "+g.iface+" on "+g.iface+": sequence 9000,8000") {
		t.Errorf("run --check printed %q", out)
	}
	if g.xdpProg() != 0 {
		t.Error("run --check attached a program")
	}
	os.WriteFile(path, []byte("interfaces = [\""+g.iface+"\"]\nopen = \"soon\"\n"), 0o644)
	for _, args := range [][]string{{"run", "--check", "--config", path}, {"run", "--config", path}} {
		r := g.kg(g.srv, args...)
		if r.code != 2 || !strings.Contains(r.stderr, path+":2: open: bad duration \"soon\"") {
			t.Errorf("%v on a bad file: %s", args, r)
		}
	}
	if g.xdpProg() != 0 {
		t.Error("run on a bad file attached a program")
	}
	g.assertNoPins(g.iface)
	if r := g.kg(g.srv, "run", "--check", "--config", filepath.Join(t.TempDir(), "none.toml")); r.code != 1 || !strings.Contains(r.stderr, "none.toml") {
		t.Errorf("run --check on a missing file: %s", r)
	}
}

// A flood of spoofed first knocks is held back in the program: the log
// gets a bounded number of knock lines, and the open of a real client
// still gets through.
func TestRunEventFlood(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "hping3")
	t.Parallel()
	g := newGate(t)
	s := g.startRun(runConfig([]string{g.iface}))
	const flood = 3000
	r := run(t, g.cli.Cmd("hping3", "-q", "-S", "-p", "9000", "--rand-source", "-i", "u100", "-c", fmt.Sprint(flood), srv4.String()))
	if r.code != 0 && r.code != 1 {
		t.Fatalf("hping3 flood: %s", r)
	}
	g.knockTCP(cli4, srv4, 9000, 8000)
	s.waitLog(5*time.Second, "msg=open", "src="+cli4.String())
	st := g.status()
	knocks := 0
	for _, l := range s.out.all() {
		if strings.Contains(l, "msg=knock") {
			knocks++
		}
	}
	// Two CPUs' bursts, plus what the budget earns during the flood.
	if knocks > 400 {
		t.Errorf("%d knock lines logged for a flood of %d", knocks, flood)
	}
	if st.Counters["events_suppressed"] == 0 || st.Counters["knock_advanced"] < flood/2 {
		t.Errorf("counters after the flood: suppressed %d, knock_advanced %d", st.Counters["events_suppressed"], st.Counters["knock_advanced"])
	}
}

// The unit passes systemd-analyze verify as make install puts it, and the
// example config it installs is valid.
func TestInstall(t *testing.T) {
	netns.Require(t, "make", "systemd-analyze")
	dir := t.TempDir()
	r := run(t, exec.Command("make", "-C", "..", "install", "BINDIR="+dir+"/bin", "UNITDIR="+dir+"/unit", "CONFDIR="+dir+"/etc"))
	if r.code != 0 {
		t.Fatalf("make install: %s", r)
	}
	for _, f := range []string{"bin/knockgate", "unit/knockgate.service", "etc/knockgate.toml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dir, "unit/knockgate.service"))
	if !strings.Contains(string(unit), "ExecStart="+dir+"/bin/knockgate run --config /etc/knockgate/knockgate.toml") {
		t.Errorf("unit does not run the installed binary:\n%s", unit)
	}
	if r := run(t, exec.Command("systemd-analyze", "verify", filepath.Join(dir, "unit/knockgate.service"))); r.code != 0 || r.stderr != "" {
		t.Errorf("systemd-analyze verify: %s", r)
	}
	if r := run(t, exec.Command(kgBin, "run", "--check", "--config", filepath.Join(dir, "etc/knockgate.toml"))); r.code != 0 {
		t.Errorf("the example config: %s", r)
	}
	// A second install keeps the config and puts the example beside it.
	os.WriteFile(filepath.Join(dir, "etc/knockgate.toml"), []byte("# mine\n"), 0o644)
	if r := run(t, exec.Command("make", "-C", "..", "install", "BINDIR="+dir+"/bin", "UNITDIR="+dir+"/unit", "CONFDIR="+dir+"/etc")); r.code != 0 {
		t.Fatalf("make install again: %s", r)
	}
	if mine, _ := os.ReadFile(filepath.Join(dir, "etc/knockgate.toml")); string(mine) != "# mine\n" {
		t.Errorf("make install overwrote the config: %q", mine)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/knockgate.toml.example")); err != nil {
		t.Errorf("no example beside the kept config: %v", err)
	}
}

// The capabilities the unit keeps are enough to serve the gate, and
// without CAP_NET_ADMIN run fails with a clear error.
func TestRunWithUnitCapabilities(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "setpriv")
	t.Parallel()
	g := newGate(t)
	path := g.configPath()
	os.WriteFile(path, []byte(runConfig([]string{g.iface})), 0o644)
	caps := []string{"setpriv", "--bounding-set", "-all,+bpf,+net_admin,+perfmon", "--inh-caps", "-all", "--no-new-privs"}
	s := g.startRunAt(path, caps)
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
	s.stop(syscall.SIGTERM)
	g.mustKG(g.srv, "detach", g.iface)

	less := g.srv.Cmd("setpriv", "--bounding-set", "-all,+bpf,+perfmon", "--inh-caps", "-all", "--no-new-privs", kgBin, "run", "--config", path)
	if r := run(t, less); r.code != 1 || !strings.Contains(r.stderr, "CAP_NET_ADMIN") {
		t.Errorf("run without CAP_NET_ADMIN: %s, want exit 1 saying what is missing", r)
	}
	g.assertNoPins(g.iface)
}
