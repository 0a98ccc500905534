package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// fleetWeb is the service web of the fleet tests: port 443 (webPort), its
// own sequence, a window long enough that no wait below outlasts it.
var fleetWeb = fmt.Sprintf(`
[services.web]
protect = "%d"
sequence = "7000,7100"
step_timeout = "1m"
open = "5m"
`, webPort)

// fleetBound is the deadline of each wait for a grant or a revoke to
// reach a host: far inside the grants' 5-minute windows, so a grant that
// arrives within it is a grant that works (a deadline of correctness;
// make bench-fleet measures the speed).
const fleetBound = 30 * time.Second

// knock sends src's SYNs to ports of h, one each (each is dropped: a
// knock).
func (f *testFleet) knock(src netip.Addr, h *fleetHost, ports ...int) {
	f.t.Helper()
	f.cli.Do(func() error {
		for _, p := range ports {
			d := net.Dialer{Timeout: 50 * time.Millisecond, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
			if c, err := d.Dial("tcp", netip.AddrPortFrom(h.addr, uint16(p)).String()); err == nil {
				c.Close()
				f.t.Errorf("knock %s -> %s:%d: the step port answered", src, h.name, p)
			}
		}
		return nil
	})
}

// sources are h's open sources, as "ADDR SERVICE" (status --json).
func (f *testFleet) sources(h *fleetHost) map[string]bool {
	f.t.Helper()
	r := run(f.t, h.ns.Cmd(h.bin, "status", h.name, "--json"))
	if r.code != 0 {
		f.t.Fatalf("status on %s: %s", h.name, r)
	}
	var st struct {
		Sources []struct {
			Addr    string `json:"addr"`
			Service string `json:"service"`
			State   string `json:"state"`
		} `json:"sources"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		f.t.Fatalf("status --json on %s: %v\n%s", h.name, err, r.stdout)
	}
	out := map[string]bool{}
	for _, s := range st.Sources {
		if s.State == "open" {
			out[s.Addr+" "+s.Service] = true
		}
	}
	return out
}

// stays checks, for a while, that every (src, host, port) of checks stays
// as want says (open or not): nothing on its way undoes what a wait saw.
func (f *testFleet) stays(what string, d time.Duration, checks ...fleetCheck) {
	f.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		for _, c := range checks {
			wait := filteredWait
			if c.open {
				wait = openWait
			}
			if got := f.openPort(c.src, c.h, c.port, wait); got != c.open {
				f.t.Fatalf("%s: %s:%d open for %s: %v, want %v", what, c.h.name, c.port, c.src, got, c.open)
			}
		}
	}
}

type fleetCheck struct {
	src  netip.Addr
	h    *fleetHost
	port int
	open bool
}

// A fleet of three with a service beside default: web's sequence knocked
// on one host opens web's port on all three, and not default's; default's
// grant of the same address travels beside it; revoke --service web on
// another host closes web's port everywhere and leaves default's grant; a
// revoke of every service closes both everywhere.
func TestFleetServices(t *testing.T) {
	f := newTestFleetWith(t, fleetSpec{addrs: 1, open: "5m", services: fleetWeb, ports: []int{webPort}})
	a, b, c := f.hosts[0], f.hosts[1], f.hosts[2]
	client := f.client
	for _, h := range f.hosts {
		if f.open(client, h, filteredWait) || f.openPort(client, h, webPort, filteredWait) {
			t.Fatalf("%s open before any knock", h.name)
		}
	}
	f.knock(client, a, 7000, 7100)
	for _, h := range f.hosts {
		d := f.waitOpenPort(client, h, webPort, fleetBound, "web's knock on "+a.name)
		t.Logf("%s: web's port open %s after the knock on %s", h.name, d.Round(time.Millisecond), a.name)
	}
	for _, h := range f.hosts {
		if f.open(client, h, filteredWait) {
			t.Errorf("%s: web's knock opened default's port", h.name)
		}
		if src := f.sources(h); !src[client.String()+" web"] || src[client.String()+" default"] {
			t.Errorf("%s lists %v, want %s's grant of web alone", h.name, src, client)
		}
	}

	// Default's beside it, from another host.
	f.kg(b, "grant", b.name, client.String(), "--for", "5m")
	for _, h := range f.hosts {
		f.waitOpen(client, h, fleetBound, "default's grant on "+b.name)
	}

	// revoke --service web on the third host: web's port closes
	// everywhere, default's stays open.
	f.kg(c, "revoke", c.name, client.String(), "--service", "web")
	for _, h := range f.hosts {
		f.waitClosedPort(client, h, webPort, fleetBound, "revoke --service web on "+c.name)
	}
	var checks []fleetCheck
	for _, h := range f.hosts {
		checks = append(checks, fleetCheck{client, h, 22, true}, fleetCheck{client, h, webPort, false})
	}
	f.stays("after revoke --service web", 3*time.Second, checks...)

	// web again (by grant, on the third host), then a revoke of every
	// service on the first: both ports close everywhere.
	f.kg(c, "grant", c.name, client.String(), "--service", "web", "--for", "5m")
	for _, h := range f.hosts {
		f.waitOpenPort(client, h, webPort, fleetBound, "web's grant on "+c.name)
	}
	f.kg(a, "revoke", a.name, client.String())
	for _, h := range f.hosts {
		f.waitClosedPort(client, h, webPort, fleetBound, "revoke of every service on "+a.name)
		f.waitClosed(client, h, fleetBound, "revoke of every service on "+a.name)
	}
	for _, h := range f.hosts {
		if src := f.sources(h); len(src) != 0 {
			t.Errorf("%s lists %v after the revoke of every service", h.name, src)
		}
	}
}

// A fleet upgraded one host at a time: the first host still runs the
// previous release (built from git history; no services) beside two of
// this build with the service web. Default's grants go both ways between
// the releases, grants and revokes alike; web's grant made on a new host
// reaches the other new host and leaves the old one as it was: nothing
// opened there, its grants kept, its run going on and sharing.
func TestFleetUpgradeOneHostAtATime(t *testing.T) {
	netns.Require(t, "ip", "git", "tar")
	prevBin(t)
	f := newTestFleetWith(t, fleetSpec{addrs: 4, open: "5m", services: fleetWeb, previous: []int{0}, ports: []int{webPort}})
	old, n1, n2 := f.hosts[0], f.hosts[1], f.hosts[2]
	fromOld, fromNew, web, later := f.clientAddr(0), f.clientAddr(1), f.clientAddr(2), f.clientAddr(3)

	// Default's grant made on the old host reaches both new ones.
	f.kg(old, "grant", old.name, fromOld.String(), "--for", "5m")
	for _, h := range []*fleetHost{n1, n2} {
		d := f.waitOpen(fromOld, h, fleetBound, "default's grant on the old "+old.name)
		t.Logf("%s has the old host's grant after %s", h.name, d.Round(time.Millisecond))
		if src := f.sources(h); !src[fromOld.String()+" default"] {
			t.Errorf("%s lists %v, want the old host's grant as default's", h.name, src)
		}
	}
	// One made on a new host reaches the old one (and the other new one).
	f.kg(n1, "grant", n1.name, fromNew.String(), "--for", "5m")
	for _, h := range []*fleetHost{old, n2} {
		d := f.waitOpen(fromNew, h, fleetBound, "default's grant on the new "+n1.name)
		t.Logf("%s has %s's grant after %s", h.name, n1.name, d.Round(time.Millisecond))
	}

	// web's grant made on a new host reaches the other new one...
	f.kg(n1, "grant", n1.name, web.String(), "--service", "web", "--for", "5m")
	d := f.waitOpenPort(web, n2, webPort, fleetBound, "web's grant on "+n1.name)
	t.Logf("%s has web's grant after %s", n2.name, d.Round(time.Millisecond))
	// ...and does not disturb the old one: it opens nothing there (the old
	// host has no web; its 22 stays closed to web's address), every grant
	// stays where it was, on every host.
	checks := []fleetCheck{{web, old, 22, false}, {web, n1, 22, false}, {web, n2, 22, false},
		{web, n1, webPort, true}, {web, n2, webPort, true}}
	for _, h := range f.hosts {
		checks = append(checks, fleetCheck{fromOld, h, 22, true}, fleetCheck{fromNew, h, 22, true})
	}
	f.stays("after web's grant on "+n1.name, 3*time.Second, checks...)
	if src := f.sources(old); len(src) != 2 || !src[fromOld.String()+" "] || !src[fromNew.String()+" "] {
		t.Errorf("the old host lists %v, want the two grants of default (its status names no service)", src)
	}
	select {
	case <-old.done:
		t.Fatalf("the old host's run exited")
	default:
	}
	// The old host goes on sharing: a grant made there after web's
	// reaches the new ones; its revoke too; a revoke of every service on
	// a new host reaches it.
	f.kg(old, "grant", old.name, later.String(), "--for", "5m")
	for _, h := range []*fleetHost{n1, n2} {
		f.waitOpen(later, h, fleetBound, "a later grant on the old "+old.name)
	}
	f.kg(old, "revoke", old.name, fromOld.String())
	for _, h := range []*fleetHost{n1, n2} {
		f.waitClosed(fromOld, h, fleetBound, "the old host's revoke")
	}
	f.kg(n2, "revoke", n2.name, fromNew.String())
	for _, h := range []*fleetHost{old, n1} {
		f.waitClosed(fromNew, h, fleetBound, "a revoke of every service on "+n2.name)
	}
	// web's grant was none of these.
	for _, h := range []*fleetHost{n1, n2} {
		if !f.openPort(web, h, webPort, openWait) {
			t.Errorf("%s lost web's grant", h.name)
		}
	}
}
