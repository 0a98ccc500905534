package test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// The ports of the example: SSH for the admins (default), the web
// console for a contractor (web), RDP by SPA only (rdp); and the port of a
// service a reload adds (db).
const (
	webPort  = 443
	web2Port = 8443
	rdpPort  = 3389
	dbPort   = 5432
)

// servicesConfig is the three-service example for the gate's
// interface; extra goes at the end (a table of its own, or nothing).
func servicesConfig(iface, keys string, web bool, extra string) string {
	c := fmt.Sprintf(`interfaces = [%q]
sequence = "9000,8000"
protect = "%d"
open = "30m"
spa_keys = %q
metrics = "127.0.0.1:9746"
log_format = "json"
`, iface, protected, keys)
	if web {
		c += fmt.Sprintf(`
[services.web]
protect = "%d,%d"
sequence = "7000,7100/udp,7200"
step_timeout = "30s"
open = "2h"
allow = [%q]
`, webPort, web2Port, alt6.String()+"/128")
	}
	c += fmt.Sprintf(`
[services.rdp]
protect = "%d"
sequence = "none"          # SPA only
`, rdpPort)
	return c + extra
}

// svcStatus is what `status --json` says of services and sources.
type svcStatus struct {
	Services []struct {
		Name       string   `json:"name"`
		Sequence   []string `json:"sequence"`
		Protect    []string `json:"protect"`
		Allow      []string `json:"allow"`
		Open       string   `json:"open"`
		GrantsOpen int      `json:"grants_open"`
		Granted    uint64   `json:"granted"`
	} `json:"services"`
	Sources []struct {
		Addr    string `json:"addr"`
		Service string `json:"service"`
		State   string `json:"state"`
	} `json:"sources"`
	Counters map[string]uint64 `json:"counters"`
}

func (g *gate) svcStatus() svcStatus {
	g.t.Helper()
	out := g.mustKG(g.srv, "status", g.iface, "--json")
	var st svcStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		g.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// granted lists the services addr holds a grant of, in status's order.
func (st svcStatus) granted(addr netip.Addr) []string {
	var out []string
	for _, s := range st.Sources {
		if s.Addr == addr.String() && s.State == "open" {
			out = append(out, s.Service)
		}
	}
	return out
}

func (st svcStatus) names() []string {
	var out []string
	for _, s := range st.Services {
		out = append(out, s.Name)
	}
	return out
}

// expectPorts asserts, from src, which of ports are open and which filtered:
// the open ones first, so that a grant still on its way cannot pass for a
// port that stays shut.
func (g *gate) expectPorts(src, dst netip.Addr, openPorts, filteredPorts []int) {
	g.t.Helper()
	for _, p := range openPorts {
		if got := g.dial(src, dst, p, openWait); got != open {
			g.t.Fatalf("connect %s -> [%s]:%d: %s, want open", src, dst, p, got)
		}
	}
	for _, p := range filteredPorts {
		if got := g.dial(src, dst, p, filteredWait); got != filtered {
			g.t.Fatalf("connect %s -> [%s]:%d: %s, want filtered", src, dst, p, got)
		}
	}
}

// The example end to end, with the real binary, knockd's knock and
// knockgate's: a knock of default's sequence opens 22 only; the contractor's
// key (services=web) opens 443 and 8443 only, and so does web's own
// sequence; rdp opens by SPA only — a key of rdp, or a version-2 request for
// rdp from a key of both — never by a knock; a request outside a key's scope
// opens nothing and is counted; revoke --service revokes one service and
// revoke every one; a reload that removes web removes its grants and frees
// its ports, and one that adds a service makes it work at once. Status, the
// run log and metrics say which service.
func TestServices(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "knock", "promtool")
	t.Parallel()
	g := newGate(t)
	if _, err := g.srv.Run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{webPort, web2Port, rdpPort, dbPort} {
		echo(t, g.srv, p)
	}
	admin := newKey(t, 1, "admin")
	admin.Services = []string{"default", "rdp"}
	rdp := newKey(t, 2, "rdp-only")
	rdp.Services = []string{"rdp"}
	contractor := newKey(t, 7, "contractor")
	contractor.Services = []string{"web"}
	srvKeys := keyFile(t, "server.keys", admin, rdp, contractor)
	adminKey, rdpKey, contractorKey := keyFile(t, "admin.key", admin), keyFile(t, "rdp.key", rdp), keyFile(t, "contractor.key", contractor)

	path := g.configPath()
	if err := os.WriteFile(path, []byte(servicesConfig(g.iface, srvKeys, true, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := g.mustKG(g.srv, "run", "--check", "--config", path)
	for _, want := range []string{
		"gate " + g.iface + " on " + g.iface + ": sequence 9000,8000, step timeout 1m0s, open 30m0s, protecting 22, SPA on 62201/udp (window ±30s)\n",
		"  service web: sequence 7000,7100/udp,7200, step timeout 30s, open 2h0m0s, protecting 443,8443, allowing fd00:77::3/128\n",
		"  service rdp: sequence none, step timeout 1m0s, open 30m0s, protecting 3389\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("run --check printed %q, want a line %q", out, want)
		}
	}
	s := g.startRunAt(path, nil)
	all := []int{protected, webPort, web2Port, rdpPort}
	knock := func(args ...string) {
		t.Helper()
		g.mustKG(g.cli, append([]string{"knock", srv4.String()}, args...)...)
	}
	revoke := func(args ...string) string {
		t.Helper()
		return g.mustKG(g.srv, append([]string{"revoke", g.iface, cli4.String()}, args...)...)
	}

	st := g.svcStatus()
	if got := st.names(); !slices.Equal(got, []string{"default", "web", "rdp"}) {
		t.Fatalf("services %q, want default, web, rdp", got)
	}
	g.expectPorts(cli4, srv4, nil, all)
	// web's own allow list passes web only.
	g.expectPorts(alt6, srv6, []int{webPort, web2Port}, []int{protected, rdpPort})

	// default: knockd's knock of 9000,8000 opens 22 only.
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "9000", "8000")
	g.expectPorts(cli4, srv4, []int{protected}, []int{webPort, web2Port, rdpPort})
	if got := g.svcStatus().granted(cli4); !slices.Equal(got, []string{"default"}) {
		t.Errorf("after default's knock, %s holds %q, want default", cli4, got)
	}
	if out := revoke(); !strings.Contains(out, "revoked "+cli4.String()) {
		t.Errorf("revoke printed %q", out)
	}

	// web: its own sequence (a UDP step among TCP ones) opens 443 and 8443
	// only; and so does the contractor's key.
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "7000", "7100:udp", "7200")
	g.expectPorts(cli4, srv4, []int{webPort, web2Port}, []int{protected, rdpPort})
	s.waitLog(5*time.Second, `"msg":"knock"`, `"port":7000`, `"service":"web"`)
	s.waitLog(5*time.Second, `"msg":"open"`, `"port":7200`, `"service":"web"`)
	revoke("--service", "web")
	g.expectPorts(cli4, srv4, nil, all)
	knock("--spa-key", contractorKey)
	g.expectPorts(cli4, srv4, []int{webPort, web2Port}, []int{protected, rdpPort})
	s.waitLog(5*time.Second, `"msg":"open"`, `"key_id":7`, `"service":"web"`)
	revoke()

	// rdp opens by SPA only: no knock of any sequence opens it ...
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "9000", "8000")
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "7000", "7100:udp", "7200")
	g.expectPorts(cli4, srv4, []int{protected, webPort}, []int{rdpPort})
	revoke()
	// ... a key of rdp alone does ...
	knock("--spa-key", rdpKey)
	g.expectPorts(cli4, srv4, []int{rdpPort}, []int{protected, webPort, web2Port})
	s.waitLog(5*time.Second, `"msg":"open"`, `"key_id":2`, `"service":"rdp"`)
	revoke()
	// ... and so does a version-2 request for rdp from a key of both,
	// which opens rdp alone.
	knock("--spa-key", adminKey, "--service", "rdp")
	g.expectPorts(cli4, srv4, []int{rdpPort}, []int{protected, webPort})
	if got := g.svcStatus().granted(cli4); !slices.Equal(got, []string{"rdp"}) {
		t.Errorf("after a request for rdp, %s holds %q, want rdp", cli4, got)
	}
	revoke()

	// A request for a service outside the key's scope opens nothing, not
	// even the services of the request that are in it, and is counted.
	bad := g.svcStatus().Counters["spa_bad_service"]
	knock("--spa-key", contractorKey, "--service", "web,rdp")
	eventually(t, 5*time.Second, "spa_bad_service counted", func() bool {
		return g.svcStatus().Counters["spa_bad_service"] == bad+1
	})
	g.expectPorts(cli4, srv4, nil, all)
	if got := g.svcStatus().granted(cli4); len(got) != 0 {
		t.Errorf("a request outside the key's scope granted %q", got)
	}

	// A key of two services opens both; revoke --service takes one, revoke
	// every one.
	knock("--spa-key", adminKey)
	g.expectPorts(cli4, srv4, []int{protected, rdpPort}, []int{webPort})
	st = g.svcStatus()
	if got := st.granted(cli4); !slices.Equal(got, []string{"default", "rdp"}) {
		t.Errorf("after the admin's key, %s holds %q, want default and rdp", cli4, got)
	}
	for _, svc := range st.Services {
		if want := map[string]int{"default": 1, "rdp": 1}[svc.Name]; svc.GrantsOpen != want {
			t.Errorf("service %s: %d grants open, want %d", svc.Name, svc.GrantsOpen, want)
		}
	}
	m := g.scrape("127.0.0.1:9746")
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(m)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\nscrape:\n%s", err, out, m)
	}
	for series, want := range map[string]float64{
		`knockgate_service_grants_open{service="default"}`: 1,
		`knockgate_service_grants_open{service="rdp"}`:     1,
		`knockgate_service_grants_open{service="web"}`:     0,
		// default: two knocks and this key; web: two knocks and the
		// contractor's key; rdp: three keys.
		`knockgate_service_grants_total{service="default"}`:         3,
		`knockgate_service_grants_total{service="web"}`:             3,
		`knockgate_service_grants_total{service="rdp"}`:             3,
		`knockgate_service_grants_expired_total{service="default"}`: 0,
	} {
		if got := metric(m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if out := revoke("--service", "rdp"); out != "revoked "+cli4.String()+" rdp on "+g.iface+"\n" {
		t.Errorf("revoke --service rdp printed %q", out)
	}
	g.expectPorts(cli4, srv4, []int{protected}, []int{rdpPort})
	knock("--spa-key", adminKey)
	g.expectPorts(cli4, srv4, []int{protected, rdpPort}, nil)
	revoke()
	g.expectPorts(cli4, srv4, nil, []int{protected, rdpPort})
	if got := g.svcStatus().granted(cli4); len(got) != 0 {
		t.Errorf("after revoke, %s still holds %q", cli4, got)
	}

	// A reload removes web, its grants with it, and frees its ports; it
	// adds db, whose sequence reuses web's first and last steps.
	knock("--spa-key", contractorKey)
	g.expectPorts(cli4, srv4, []int{webPort}, nil)
	if err := os.WriteFile(srvKeys, []byte(admin.Line()+"\n"+rdp.Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.reload(servicesConfig(g.iface, srvKeys, false, fmt.Sprintf("\n[services.db]\nprotect = \"%d\"\nsequence = \"7000,7200\"\n", dbPort)))
	s.waitLog(5*time.Second, `"msg":"reloaded"`, "service web removed", "service db added")
	st = g.svcStatus()
	if got := st.names(); !slices.Equal(got, []string{"default", "rdp", "db"}) {
		t.Errorf("services after the reload %q, want default, rdp, db", got)
	}
	if got := st.granted(cli4); len(got) != 0 {
		t.Errorf("after web went, %s still holds %q", cli4, got)
	}
	// Nothing protects 443 and 8443 now: open to every source.
	g.expectPorts(alt4, srv4, []int{webPort, web2Port}, []int{protected, rdpPort, dbPort})
	g.mustRun(g.cli, "knock", "-v", srv4.String(), "7000", "7200")
	g.expectPorts(cli4, srv4, []int{dbPort, webPort}, []int{protected, rdpPort})
	s.waitLog(5*time.Second, `"msg":"open"`, `"port":7200`, `"service":"db"`)

	if code := s.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("run exited %d on SIGTERM, want 0", code)
	}
}

// The same services made with the command line: set --service makes a
// service, changes it and removes it; keys must fit the services; a
// rejected command changes nothing.
func TestServicesCLI(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	g := newGate(t)
	for _, p := range []int{webPort, rdpPort} {
		echo(t, g.srv, p)
	}
	contractor := newKey(t, 7, "contractor")
	contractor.Services = []string{"web"}
	contractorKey := keyFile(t, "contractor.key", contractor)
	g.attach()
	gen := g.status().Config.Generation

	fails := func(code int, want string, args ...string) {
		t.Helper()
		r := g.kg(g.srv, append([]string{"set", g.iface}, args...)...)
		if r.code != code || !strings.Contains(r.stderr, want) {
			t.Fatalf("set %q: %s, want exit %d and %q", args, r, code, want)
		}
		if st := g.status(); st.Config.Generation != gen {
			t.Fatalf("set %q was refused but wrote the configuration (generation %d -> %d)", args, gen, st.Config.Generation)
		}
	}
	// A key naming a service the gate lacks, a new service without
	// --protect, one that nothing could open, one that clashes with
	// default: each refused, naming what is wrong, and nothing changes.
	fails(2, "SPA key contractor (id 7) names service web, which the gate does not have (it has default)",
		"--spa-keys", keyFile(t, "server.keys", contractor))
	fails(2, "service web is new: give --protect", "--service", "web", "--sequence", "7000")
	fails(2, "service web: sequence is none and there is no SPA port: nothing could ever open it", "--service", "web", "--protect", strconv.Itoa(webPort))
	fails(2, "port 22 is protected by both services default and web", "--service", "web", "--protect", "22", "--sequence", "7000")
	fails(1, "no service web to remove (the gate has default)", "--service", "web", "--remove")

	serverKeys := keyFile(t, "server2.keys", contractor)
	out := g.mustKG(g.srv, "set", g.iface, "--service", "web", "--protect", strconv.Itoa(webPort), "--spa-keys", serverKeys)
	if !strings.Contains(out, "\n  service web: sequence none, step timeout 1m0s, open 30m0s, protecting 443\n") {
		t.Errorf("set --service web printed %q", out)
	}
	// Attaching again with those keys is about the gate's own services,
	// not the flags' (which have no web): it is refused as attached already.
	if r := g.kg(g.srv, "attach", g.iface, "--spa-keys", serverKeys); r.code != 1 || !strings.Contains(r.stderr, "already attached") {
		t.Errorf("attach again with the gate's keys: %s, want exit 1 and already attached", r)
	}
	g.expectPorts(cli4, srv4, nil, []int{protected, webPort})
	g.mustKG(g.cli, "knock", srv4.String(), "--spa-key", contractorKey)
	g.expectPorts(cli4, srv4, []int{webPort}, []int{protected})
	g.mustKG(g.srv, "set", g.iface, "--service", "web", "--sequence", "7000,7100", "--open", "2h")
	g.mustKG(g.srv, "set", g.iface, "--service", "rdp", "--protect", strconv.Itoa(rdpPort), "--sequence", "6000")
	if out := g.mustKG(g.srv, "status", g.iface); !strings.Contains(out, "services:") || !strings.Contains(out, "web ") {
		t.Errorf("status does not list the services:\n%s", out)
	}
	g.knockTCP(alt4, srv4, 6000)
	g.expectPorts(alt4, srv4, []int{rdpPort}, []int{protected, webPort})

	// Removing web while a key names it is refused; with the keys that fit,
	// it goes, its grant with it, and 443 is open to all.
	gen = g.status().Config.Generation
	fails(2, "SPA key contractor (id 7) names service web, which the gate does not have (it has default, rdp)", "--service", "web", "--remove")
	g.mustKG(g.srv, "set", g.iface, "--spa-keys", keyFile(t, "none.keys"))
	out = g.mustKG(g.srv, "set", g.iface, "--service", "web", "--remove")
	if !strings.Contains(out, "service web removed, and its grants with it") {
		t.Errorf("set --remove printed %q", out)
	}
	g.expectPorts(alt4, srv4, []int{webPort, rdpPort}, []int{protected})
	gen = g.status().Config.Generation
	fails(2, "the service default cannot be removed", "--service", "default", "--remove")
}
