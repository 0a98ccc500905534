package test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// hookUser is the user the tests' hooks run as: one every Debian system
// has (the package's own user, knockgate, comes with the package).
const hookUser = "nobody"

// hookRecorder is a hook script that records each run in a file of its
// own: its arguments, its KNOCKGATE_ variables and the user it ran as.
type hookRecorder struct {
	t      *testing.T
	script string
	out    string // where the records go, writable by hookUser
}

// hookRecord is one run of a hookRecorder.
type hookRecord struct {
	uid  string
	args []string
	vars map[string]string // KNOCKGATE_X as x
}

func (r hookRecord) String() string {
	return fmt.Sprintf("args %q, vars %v, uid %s", r.args, r.vars, r.uid)
}

// hookDir is a directory hookUser can read and write, removed after the
// test (a test's TempDir is root's alone).
func hookDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kgt-hooks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newHookRecorder(t *testing.T) *hookRecorder {
	t.Helper()
	dir := hookDir(t)
	h := &hookRecorder{t: t, script: filepath.Join(dir, "record.sh"), out: filepath.Join(dir, "out")}
	if err := os.Mkdir(h.out, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(h.out, 0o777)
	script := `#!/bin/sh
f="` + h.out + `/run.$$"
{ echo "uid=$(id -u)"; for a in "$@"; do echo "arg=$a"; done; env | grep '^KNOCKGATE_' | sort; } > "$f.tmp"
mv "$f.tmp" "$f"
`
	if err := os.WriteFile(h.script, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

// records are the runs recorded so far.
func (h *hookRecorder) records() []hookRecord {
	h.t.Helper()
	entries, err := os.ReadDir(h.out)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []hookRecord
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.out, e.Name()))
		if err != nil {
			h.t.Fatal(err)
		}
		r := hookRecord{vars: map[string]string{}}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			switch k, v, _ := strings.Cut(l, "="); {
			case k == "uid":
				r.uid = v
			case k == "arg":
				r.args = append(r.args, v)
			case strings.HasPrefix(k, "KNOCKGATE_"):
				r.vars[strings.ToLower(strings.TrimPrefix(k, "KNOCKGATE_"))] = v
			}
		}
		out = append(out, r)
	}
	return out
}

// find is the records whose arguments start with args.
func (h *hookRecorder) find(args ...string) []hookRecord {
	var out []hookRecord
	for _, r := range h.records() {
		if len(r.args) >= len(args) && slices.Equal(r.args[:len(args)], args) {
			out = append(out, r)
		}
	}
	return out
}

// waitRecord waits for a record whose arguments start with args and
// returns it, failing after bound (a deadline of correctness).
func (h *hookRecorder) waitRecord(bound time.Duration, args ...string) hookRecord {
	h.t.Helper()
	var got []hookRecord
	eventually(h.t, bound, fmt.Sprintf("a hook run with %q", args), func() bool {
		got = h.find(args...)
		return len(got) > 0
	})
	return got[0]
}

func uidOf(t *testing.T, name string) string {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u.Uid
}

// check asserts a record's variables.
func checkVars(t *testing.T, what string, r hookRecord, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if r.vars[k] != v {
			t.Errorf("%s: KNOCKGATE_%s = %q, want %q (%s)", what, strings.ToUpper(k), r.vars[k], v, r)
		}
	}
}

// A knock, an SPA packet and `knockgate grant` each run on_open once, as
// hook_user, with what made the grant; its expiry and a revoke each run
// on_close once, with the reason. The metrics count each service's runs.
func TestHooksOnGrants(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	rec := newHookRecorder(t)
	key := newKey(t, 11, "laptop")
	key.Services = []string{"web"}
	srvKeys := keyFile(t, "server.keys", key)
	cliKey := keyFile(t, "client.key", key)
	cfg := fmt.Sprintf(`interfaces = [%q]
sequence = "9000,8000"
step_timeout = "30s"
open = "4s"
protect = "22"
spa_keys = %q
metrics = "127.0.0.1:9746"
hook_user = %q
on_open = [%q, "open", "{source}", "{service}", "{how}"]
on_close = [%q, "close", "{source}", "{service}", "{reason}"]

[services.web]
protect = "8443"
sequence = "none"
open = "10m"
on_open = [%q, "open", "{source}", "{service}", "{how}", "{key_name}"]
`, g.iface, srvKeys, hookUser, rec.script, rec.script, rec.script)
	s := g.startRun(cfg)
	nobody := uidOf(t, hookUser)

	g.knockTCP(cli4, srv4, 9000, 8000)
	r := rec.waitRecord(10*time.Second, "open", cli4.String(), "default")
	if r.uid != nobody || !slices.Equal(r.args, []string{"open", cli4.String(), "default", "sequence"}) {
		t.Errorf("the knock's on_open: %s", r)
	}
	checkVars(t, "the knock's on_open", r, map[string]string{"event": "open", "gate": g.iface, "service": "default",
		"source": cli4.String(), "family": "ipv4", "how": "sequence", "key_id": "", "operator": "", "reason": ""})
	if _, err := time.Parse(time.RFC3339, r.vars["expires"]); err != nil || r.vars["open_seconds"] == "" {
		t.Errorf("the knock's on_open: expires %q, open_seconds %q", r.vars["expires"], r.vars["open_seconds"])
	}

	if out := run(t, g.cli.Cmd(kgBin, "knock", srv4.String(), "--spa-key", cliKey)); out.code != 0 {
		t.Fatalf("SPA knock: %s", out)
	}
	r = rec.waitRecord(10*time.Second, "open", cli4.String(), "web")
	if !slices.Equal(r.args, []string{"open", cli4.String(), "web", "spa", "laptop"}) {
		t.Errorf("the SPA packet's on_open: %s", r)
	}
	checkVars(t, "the SPA packet's on_open", r, map[string]string{"how": "spa", "key_id": "11", "key_name": "laptop", "service": "web"})

	grant := g.srv.Cmd(kgBin, "grant", g.iface, alt4.String(), "--for", "10m")
	grant.Env = append(os.Environ(), "SUDO_USER=alice")
	if out := run(t, grant); out.code != 0 {
		t.Fatalf("grant: %s", out)
	}
	r = rec.waitRecord(10*time.Second, "open", alt4.String(), "default")
	checkVars(t, "grant's on_open", r, map[string]string{"how": "operator", "operator": "alice", "source": alt4.String()})

	g.mustKG(g.srv, "revoke", g.iface, alt4.String())
	r = rec.waitRecord(10*time.Second, "close", alt4.String(), "default")
	if r.args[3] != "revoke" {
		t.Errorf("revoke's on_close: %s", r)
	}
	checkVars(t, "revoke's on_close", r, map[string]string{"event": "close", "reason": "revoke", "how": "operator", "operator": "alice"})

	// The knock's grant ends after its 4 s with nothing sent by the
	// source: its timer runs on_close.
	r = rec.waitRecord(30*time.Second, "close", cli4.String(), "default")
	if r.args[3] != "expire" || r.vars["how"] != "sequence" {
		t.Errorf("the expiry's on_close: %s", r)
	}
	g.expect(filtered, cli4, srv4)

	// Once each, nothing else.
	if n := len(rec.records()); n != 5 {
		t.Errorf("%d hook runs, want 5: %v", n, rec.records())
	}
	scrape := g.scrape("127.0.0.1:9746")
	for series, want := range map[string]float64{
		`knockgate_hook_runs_total{event="open",service="default"}`:     2,
		`knockgate_hook_runs_total{event="close",service="default"}`:    2,
		`knockgate_hook_runs_total{event="open",service="web"}`:         1,
		`knockgate_hook_runs_total{event="close",service="web"}`:        0,
		`knockgate_hook_failures_total{event="open",service="default"}`: 0,
		`knockgate_hook_dropped_total{event="open",service="default"}`:  0,
		`knockgate_hooks_running`:                                       0,
	} {
		if got := metric(scrape, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	s.waitLog(5*time.Second, `msg="hook ran"`, "service=web", "event=open", "src="+cli4.String())
}

// A hook that outlives hook_timeout is killed, with what it started, and
// counted; run goes on.
func TestHookKilledAtItsTimeout(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	dir := hookDir(t)
	pidFile := filepath.Join(dir, "sleeper")
	cfg := fmt.Sprintf(`interfaces = [%q]
protect = "22"
metrics = "127.0.0.1:9746"
hook_user = %q
hook_timeout = "1s"
on_open = ["/bin/sh", "-c", "sleep 300 & echo $! > %s; echo hanging on {source}; wait"]
`, g.iface, hookUser, pidFile)
	s := g.startRun(cfg)
	g.mustKG(g.srv, "grant", g.iface, cli4.String())
	s.waitLog(10*time.Second, "hook output", "line=\"hanging on "+cli4.String()+"\"")
	s.waitLog(30*time.Second, `msg="hook killed: it ran past hook_timeout"`, "src="+cli4.String(), "timeout=1s")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	eventually(t, 10*time.Second, "the hook's child killed with it", func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
	if got := metric(g.scrape("127.0.0.1:9746"), `knockgate_hook_timeouts_total{event="open",service="default"}`); got != 1 {
		t.Errorf("timeouts %v, want 1", got)
	}
	g.expect(open, cli4, srv4)
}

// sendFrames sends frames on the client's end of the link, as fast as the
// socket takes them: spoofed sources the client does not have.
func (g *gate) sendFrames(frames [][]byte) {
	g.t.Helper()
	err := g.cli.Do(func() error {
		ifc, err := net.InterfaceByName(g.cliIface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
		for _, f := range frames {
			for {
				err := unix.Sendto(fd, f, 0, to)
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					return err
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		g.t.Fatalf("send frames: %v", err)
	}
}

// 10 000 grants in a burst (a one-step UDP sequence from 10 000 sources):
// at most hook_max_running hooks run at once, hook_max_waiting wait, the
// rest are dropped — counted, and logged — and every grant is one hook
// run or one drop. The gate, the event reader and the log keep going.
func TestHookBurstIsBounded(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	dir := hookDir(t)
	script := filepath.Join(dir, "slow.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
mkdir "`+dir+`/run.$$"
ls -d "`+dir+`"/run.* | wc -l >> "`+dir+`/running"
sleep 0.2
rmdir "`+dir+`/run.$$"
`), 0o755)
	cfg := fmt.Sprintf(`interfaces = [%q]
sequence = "9000/udp"
open = "10m"
protect = "22"
metrics = "127.0.0.1:9746"
hook_user = %q
hook_max_running = 2
hook_max_waiting = 8
on_open = [%q]
`, g.iface, hookUser, script)
	s := g.startRun(cfg)
	const burst = 10000
	frames := make([][]byte, burst)
	for i := range burst {
		src := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
		frames[i] = packet.UDP(src, srv4, uint16(20000+i%20000), 9000).Bytes()
	}
	g.sendFrames(frames)
	// A reload while the hooks are full goes through (its bound is
	// reload's own: 10 s to READY=1).
	s.reload(strings.Replace(cfg, "hook_max_waiting = 8", "hook_max_waiting = 8\nhook_timeout = \"20s\"", 1))
	s.waitLog(10*time.Second, "reloaded")
	var runs, dropped float64
	eventually(t, 120*time.Second, "every grant's on_open run or dropped", func() bool {
		scrape := g.scrape("127.0.0.1:9746")
		runs = metric(scrape, `knockgate_hook_runs_total{event="open",service="default"}`)
		dropped = metric(scrape, `knockgate_hook_dropped_total{event="open",service="default"}`)
		return runs+dropped >= burst
	})
	if runs+dropped != burst || dropped == 0 || runs < 10 {
		t.Errorf("%v runs and %v dropped for %d grants", runs, dropped, burst)
	}
	if st := g.status(); len(st.Sources) != burst {
		t.Errorf("%d sources granted, want %d", len(st.Sources), burst)
	}
	b, err := os.ReadFile(filepath.Join(dir, "running"))
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for _, l := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(l)
		most = max(most, n)
	}
	t.Logf("%v hooks ran, %v dropped; at most %d running at once; gate counters %v", runs, dropped, most, g.status().Counters)
	if most < 1 || most > 2 {
		t.Errorf("at most %d hooks seen running at once, want 1 or 2 (hook_max_running)", most)
	}
	s.waitLog(5*time.Second, `msg="hook dropped: too many hooks running and waiting"`, "max_running=2", "max_waiting=8")
	// Still serving: a client's knock opens, and its hook is counted.
	if out := run(t, g.cli.Cmd(kgBin, "knock", srv4.String(), "9000/udp")); out.code != 0 {
		t.Fatal(out)
	}
	g.expect(open, cli4, srv4)
}

// run refuses to start, before it touches anything, when the hooks' user
// does not exist; run --check says the same. Without a hook the user is
// not needed.
func TestRunRefusesAMissingHookUser(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	path := g.configPath()
	cfg := fmt.Sprintf("interfaces = [%q]\nprotect = \"22\"\nhook_user = \"kgt-no-such-user\"\non_open = [\"/bin/true\"]\n", g.iface)
	os.WriteFile(path, []byte(cfg), 0o644)
	for _, args := range [][]string{{"run", "--check", "--config", path}, {"run", "--config", path}} {
		r := g.kg(g.srv, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "knockgate: hook_user kgt-no-such-user: no such user") {
			t.Errorf("%v: %s", args, r)
		}
	}
	if g.xdpProg() != 0 {
		t.Error("run with a missing hook user attached a program")
	}
	g.assertNoPins(g.iface)
	if _, err := user.Lookup("knockgate"); err != nil {
		// The default user, where the package is not installed: the
		// message says how to make it.
		os.WriteFile(path, []byte(fmt.Sprintf("interfaces = [%q]\nprotect = \"22\"\non_close = [\"/bin/true\"]\n", g.iface)), 0o644)
		r := g.kg(g.srv, "run", "--check", "--config", path)
		if r.code != 1 || !strings.Contains(r.stderr, "hook_user knockgate: no such user: the knockgate package makes this system user") {
			t.Errorf("the default user missing: %s", r)
		}
	}
	os.WriteFile(path, []byte(fmt.Sprintf("interfaces = [%q]\nprotect = \"22\"\nhook_user = \"kgt-no-such-user\"\n", g.iface)), 0o644)
	if r := g.kg(g.srv, "run", "--check", "--config", path); r.code != 0 {
		t.Errorf("no hook, a missing user: %s", r)
	}
}

// A reload that adds hooks takes them at once, for grants made from then
// on; one that names a user that does not exist fails and keeps the hooks
// as they were.
func TestHooksReload(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	rec := newHookRecorder(t)
	base := fmt.Sprintf("interfaces = [%q]\nprotect = \"22\"\nhook_user = %q\n", g.iface, hookUser)
	s := g.startRun(base)
	g.mustKG(g.srv, "grant", g.iface, alt4.String()) // before the hooks: taken as it is
	s.reload(base + fmt.Sprintf("on_open = [%q, \"open\", \"{source}\"]\non_close = [%q, \"close\", \"{source}\", \"{reason}\"]\n", rec.script, rec.script))
	g.mustKG(g.srv, "grant", g.iface, cli4.String())
	rec.waitRecord(10*time.Second, "open", cli4.String())
	s.reload(strings.Replace(base, hookUser, "kgt-no-such-user", 1) + fmt.Sprintf("on_open = [%q, \"open\"]\n", rec.script))
	s.waitLog(10*time.Second, "reload failed", "hook_user kgt-no-such-user: no such user")
	g.mustKG(g.srv, "revoke", g.iface, alt4.String())
	rec.waitRecord(10*time.Second, "close", alt4.String(), "revoke")
	if len(rec.find("open", alt4.String())) != 0 {
		t.Errorf("on_open ran for a grant made before the hooks: %v", rec.records())
	}
}

// Debian's own /etc/knockd.conf, imported: the file passes run --check,
// and knockd's knock client opens what knockd would have (openSSH: port
// 22; openHTTPS: 443), from the knocking address only.
func TestImportDebianKnockdConf(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "knock")
	if _, err := os.Stat("/etc/knockd.conf"); err != nil {
		t.Fatalf("Debian's knockd.conf (package knockd): %v", err)
	}
	t.Parallel()
	g := newGate(t)
	r := g.kg(g.srv, "import", "knockd", "--interface", g.iface)
	if r.code != 0 || !strings.Contains(r.stderr, "[closeSSH] line 13: not imported: its command only undoes [openSSH]'s") {
		t.Fatalf("import knockd: %s", r)
	}
	g.runImported(r.stdout)
	g.expect(filtered, cli4, srv4)
	if got := g.dial(cli4, srv4, 443, filteredWait); got != filtered {
		t.Fatalf("443 before openHTTPS's knock: %s", got)
	}
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "7000", "8000", "9000")
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
	if got := g.dial(cli4, srv4, 443, filteredWait); got != filtered {
		t.Errorf("443 after openSSH's knock: %s, want filtered (another section)", got)
	}
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "12345", "54321", "24680", "13579")
	// Nothing listens on 443: the gate lets the SYN through and the
	// kernel refuses it.
	if got := g.dial(cli4, srv4, 443, openWait); got != refused {
		t.Errorf("443 after openHTTPS's knock: %s, want refused (through the gate)", got)
	}
}

// A richer knockd.conf: UDP steps and cmd_timeout (the window closes
// after it), a section whose commands are a script's (on_open, then
// on_close after cmd_timeout, with the knocker's address), and what cannot
// be imported said on stderr.
func TestImportRicherKnockdConf(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "knock")
	t.Parallel()
	g := newGate(t)
	rec := newHookRecorder(t)
	conf := filepath.Join(t.TempDir(), "knockd.conf")
	os.WriteFile(conf, []byte(`[options]
	UseSyslog
	Interface = eth7

[opencloseSSH]
	sequence      = 2222:udp,3333:tcp,4444:udp
	seq_timeout   = 15
	tcpflags      = syn
	start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
	cmd_timeout   = 4
	stop_command  = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT

[notify]
	sequence      = 6101:udp,6102:udp
	seq_timeout   = 10
	start_command = `+rec.script+` open %IP%
	cmd_timeout   = 3
	stop_command  = `+rec.script+` close %IP%

[otp]
	one_time_sequences = /etc/knockd/smtp_sequences
	start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT

[flags]
	sequence = 7001,7002
	tcpflags = fin,!ack
	command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 2525 -j ACCEPT
`), 0o644)
	r := g.kg(g.srv, "import", "knockd", conf, "--interface", g.iface, "--hook-user", hookUser)
	if r.code != 0 {
		t.Fatalf("import knockd: %s", r)
	}
	for _, line := range []string{"[otp] line 21: not imported: one_time_sequences", "[flags] line 26: not imported: tcpflags fin,!ack"} {
		if !strings.Contains(r.stderr, line) {
			t.Errorf("stderr lacks %q: %s", line, r.stderr)
		}
	}
	g.runImported(r.stdout)
	g.expect(filtered, cli4, srv4)
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "2222:udp", "3333:tcp", "4444:udp")
	g.expect(open, cli4, srv4)
	g.waitFiltered(cli4, srv4, 30*time.Second) // after cmd_timeout

	g.mustRun(g.cli, "knock", "-v", "-u", srv4.String(), "6101", "6102")
	opened := rec.waitRecord(10*time.Second, "open", cli4.String())
	closed := rec.waitRecord(30*time.Second, "close", cli4.String())
	if opened.vars["service"] != "notify" || closed.vars["reason"] != "expire" || opened.uid != uidOf(t, hookUser) {
		t.Errorf("the notify section's commands: %s; %s", opened, closed)
	}
}

// In a fleet, a grant another host made runs a service's hooks only where
// fleet_hooks says so, with the host it came from; its revoke, made on yet
// another host, runs on_close everywhere its on_open ran.
func TestFleetHooks(t *testing.T) {
	rec := newHookRecorder(t)
	top := fmt.Sprintf(`hook_user = %q
on_open = [%q, "open", "{gate}", "{service}", "{source}", "{how}", "{origin}"]
on_close = [%q, "close", "{gate}", "{service}", "{source}", "{reason}"]
`, hookUser, rec.script, rec.script)
	web := fleetWeb + fmt.Sprintf(`fleet_hooks = true
on_open = [%q, "open", "{gate}", "{service}", "{source}", "{how}", "{origin}"]
on_close = [%q, "close", "{gate}", "{service}", "{source}", "{reason}"]
`, rec.script, rec.script)
	f := newTestFleetWith(t, fleetSpec{addrs: 1, open: "5m", services: web, top: top, ports: []int{webPort}})
	a, b, c := f.hosts[0], f.hosts[1], f.hosts[2]
	src := f.client.String()

	f.knock(f.client, a, 9000, 8000)
	f.knock(f.client, a, 7000, 7100)
	rec.waitRecord(fleetBound, "open", a.name, "default", src, "sequence", "")
	rec.waitRecord(fleetBound, "open", a.name, "web", src, "sequence", "")
	for _, h := range []*fleetHost{b, c} {
		f.waitOpen(f.client, h, fleetBound, "default's grant on "+h.name)
		r := rec.waitRecord(fleetBound, "open", h.name, "web", src, "fleet")
		if r.vars["origin"] != a.name {
			t.Errorf("%s: web's grant from the fleet: origin %q, want %s", h.name, r.vars["origin"], a.name)
		}
	}
	f.kg(b, "revoke", b.name, src, "--service", "web")
	for _, h := range f.hosts {
		rec.waitRecord(fleetBound, "close", h.name, "web", src, "revoke")
	}
	// default's grant came from the fleet to b and c: no hook there.
	for _, h := range []*fleetHost{b, c} {
		if got := rec.find("open", h.name, "default"); len(got) != 0 {
			t.Errorf("%s ran default's on_open for a grant from the fleet (fleet_hooks off): %v", h.name, got)
		}
	}
	if n := len(rec.records()); n != 7 {
		t.Errorf("%d hook runs, want 7 (2 on_open on host a, web's on 2 hosts, web's on_close on 3): %v", n, rec.records())
	}
}

// unitCaps are the capabilities service/knockgate.service keeps
// (CapabilityBoundingSet), as setpriv names them: "bpf", "setuid", ...
func unitCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../service/knockgate.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			return caps
		}
	}
	t.Fatal("service/knockgate.service has no CapabilityBoundingSet")
	return nil
}

// setprivWith is the setpriv command line that keeps only caps, as the
// unit does.
func setprivWith(caps []string) []string {
	return []string{"setpriv", "--bounding-set", "-all,+" + strings.Join(caps, ",+"), "--inh-caps", "-all", "--no-new-privs"}
}

// With only the capabilities the unit keeps, the hooks run as hook_user
// and one that hangs is killed at its timeout; without CAP_SETUID, run
// refuses to start, saying so, before it touches anything.
func TestHooksWithUnitCapabilities(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "setpriv")
	t.Parallel()
	g := newGate(t)
	rec := newHookRecorder(t)
	dir := hookDir(t)
	pidFile := filepath.Join(dir, "sleeper")
	path := g.configPath()
	os.WriteFile(path, []byte(fmt.Sprintf(`interfaces = [%q]
protect = "22"
metrics = "127.0.0.1:9746"
hook_user = %q
hook_timeout = "1s"
on_open = [%q, "open", "{source}"]
on_close = ["/bin/sh", "-c", "sleep 300 & echo $! > %s; wait"]
`, g.iface, hookUser, rec.script, pidFile)), 0o644)
	caps := unitCaps(t)

	var less []string
	for _, c := range caps {
		if c != "setuid" {
			less = append(less, c)
		}
	}
	cmdline := append(setprivWith(less), kgBin, "run", "--config", path)
	r := run(t, g.srv.Cmd(cmdline[0], cmdline[1:]...))
	if r.code != 1 || !strings.Contains(r.stderr, "hook_user "+hookUser+": running hooks as another user needs CAP_SETUID, which run lacks") {
		t.Errorf("run without CAP_SETUID: %s, want exit 1 saying what is missing", r)
	}
	if g.xdpProg() != 0 {
		t.Error("run without CAP_SETUID attached a program")
	}
	g.assertNoPins(g.iface)

	s := g.startRunAt(path, setprivWith(caps))
	g.mustKG(g.srv, "grant", g.iface, cli4.String())
	if r := rec.waitRecord(10*time.Second, "open", cli4.String()); r.uid != uidOf(t, hookUser) {
		t.Errorf("on_open under the unit's capabilities: %s, want uid %s", r, uidOf(t, hookUser))
	}
	g.mustKG(g.srv, "revoke", g.iface, cli4.String())
	s.waitLog(30*time.Second, `msg="hook killed: it ran past hook_timeout"`, "event=close", "src="+cli4.String())
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	eventually(t, 10*time.Second, "the hook's child killed with it", func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
	scrape := g.scrape("127.0.0.1:9746")
	for series, want := range map[string]float64{
		`knockgate_hook_runs_total{event="open",service="default"}`:      1,
		`knockgate_hook_failures_total{event="open",service="default"}`:  0,
		`knockgate_hook_timeouts_total{event="close",service="default"}`: 1,
	} {
		if got := metric(scrape, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// runImported writes a configuration `import` printed to the gate's config
// file, which `run --check` must take, and starts run on it.
func (g *gate) runImported(conf string) {
	g.t.Helper()
	path := g.configPath()
	os.WriteFile(path, []byte(conf), 0o644)
	if c := g.kg(g.srv, "run", "--check", "--config", path); c.code != 0 {
		g.t.Fatalf("run --check on the imported file: %s\n%s", c, conf)
	}
	g.startRunAt(path, nil)
}
