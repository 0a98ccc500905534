package bpf_test

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// Services (issue 17): several doors in one gate, each with its own ports,
// sequence, window, allow list and keys; a grant is per (source, service).
// Beside default (the sequence seq, guarding ssh and mDNS for 30 s), the
// gate of these tests has web (its own two-step sequence, 443 and 8443 for
// two hours) and rdp (3389, no sequence: SPA and the operator open it).
// Every test runs on the program's test clock: a window's end is an exact
// instant, never a race with the wall clock.
var (
	webSeq  = []maps.Port{tcp(7100), udp(7200)}
	https   = tcp(443)
	console = tcp(8443)
	rdpPort = tcp(3389)
)

func webService() policy.Service {
	return policy.Service{Name: "web", Sequence: webSeq, StepTimeout: 5 * time.Second, Open: 2 * time.Hour,
		Protect: []maps.Port{https, console}}
}

func rdpService() policy.Service {
	return policy.Service{Name: "rdp", StepTimeout: time.Second, Open: 10 * time.Minute, Protect: []maps.Port{rdpPort}}
}

// svcConfig is default, web and rdp, with SPA on.
func svcConfig() conf {
	c := spaConfig()
	c.Services = []policy.Service{webService(), rdpService()}
	return c
}

// The keys of these tests. No two ids are one bit apart, so a flipped bit
// of a key id never names another key.
var (
	laptopKey     = plainKey // default alone (no services=)
	contractorKey = spa.Key{ID: 0x51, Name: "contractor", Services: []string{"web"},
		Secret: [16]byte{0x51, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	opsKey = spa.Key{ID: 0x62, Name: "ops", Services: []string{"default", "web", "rdp"}, Open: 45 * time.Minute,
		Secret: [16]byte{0x62, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f}}
	rdpKey = spa.Key{ID: 0x0e, Name: "rdp-only", Services: []string{"rdp"},
		Secret: [16]byte{0x0e, 0xee, 0xde, 0xce, 0xbe, 0xae, 0x9e, 0x8e, 0x7e, 0x6e, 0x5e, 0x4e, 0x3e, 0x2e, 0x1e, 0x0e}}
	svcKeys = []spa.Key{laptopKey, contractorKey, opsKey, rdpKey}
)

// newServiceGate is a gate on the test clock (its clocks stand still until
// the test moves them), configured with cfg and, when given, keys.
func newServiceGate(t *testing.T, cfg conf, keys ...spa.Key) *gate {
	t.Helper()
	g := newGateTuned(t, loader.Tuning{TestClock: true}, conf{})
	g.configure(cfg)
	g.setClock(time.Now())
	if len(keys) > 0 {
		if err := g.maps.SetSPAKeys(keys); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// boot is the program's CLOCK_BOOTTIME (the test clock).
func (g *gate) boot() uint64 {
	g.t.Helper()
	var v uint64
	if err := g.objs.TestBootNs.Get(&v); err != nil {
		g.t.Fatal(err)
	}
	return v
}

// setBoot moves the program's boot and coarse clocks to ns; its Unix time
// (SPA) stays where it was.
func (g *gate) setBoot(ns uint64) {
	g.t.Helper()
	for _, v := range []*ebpf.Variable{g.objs.TestBootNs, g.objs.TestCoarseNs} {
		if err := v.Set(ns); err != nil {
			g.t.Fatal(err)
		}
	}
}

// gateTime is the Unix time the program judges SPA stamps by.
func (g *gate) gateTime() time.Time {
	g.t.Helper()
	var tai uint64
	if err := g.objs.TestTaiNs.Get(&tai); err != nil {
		g.t.Fatal(err)
	}
	return time.Unix(0, int64(tai)-int64(g.cfg.TAIOffset))
}

// stamps are SPA timestamps a millisecond apart from the gate's time on,
// each newer than the last: every packet passes the replay check.
type stamps struct {
	at time.Time
}

func (s *stamps) next() time.Time {
	s.at = s.at.Add(time.Millisecond)
	return s.at
}

// index is the service name's index in the configuration in force.
func (g *gate) index(name string) int {
	g.t.Helper()
	cfg, err := g.maps.ReadConfig()
	if err != nil {
		g.t.Fatal(err)
	}
	i, ok := cfg.Index[name]
	if !ok {
		g.t.Fatalf("no service %s in the configuration in force (%v)", name, cfg.Index)
	}
	return i
}

// grants is the whole grants map.
func (g *gate) grants() map[bpf.KnockgateGrantKey]bpf.KnockgateGrant {
	g.t.Helper()
	out := map[bpf.KnockgateGrantKey]bpf.KnockgateGrant{}
	var k bpf.KnockgateGrantKey
	var v bpf.KnockgateGrant
	it := g.objs.Grants.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		g.t.Fatal(err)
	}
	return out
}

// grantAt is addr's grant of the service at index i, raw: it finds grants
// of services the configuration no longer has.
func (g *gate) grantAt(addr netip.Addr, i int) (bpf.KnockgateGrant, bool) {
	g.t.Helper()
	gr, ok := g.grants()[maps.GrantKey(addr, i)]
	return gr, ok
}

// expectGrants checks addr's grants, all of them: want maps each service
// index to the grant's expiry (0: any).
func (g *gate) expectGrants(what string, addr netip.Addr, want map[int]uint64) {
	g.t.Helper()
	got := map[int]uint64{}
	for k, v := range g.grants() {
		if maps.AddrOf(k.Addr) == addr {
			got[int(k.Service)] = v.ExpiresNs
		}
	}
	for i, exp := range want {
		if exp == 0 {
			if _, ok := got[i]; ok {
				got[i] = 0
			}
		}
	}
	if !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		g.t.Errorf("%s: grants of %s (service index: expiry) %v, want %v", what, addr, got, want)
	}
}

func (g *gate) serviceCounters() map[string]maps.ServiceCounters {
	g.t.Helper()
	c, err := g.maps.ReadServiceCounters()
	if err != nil {
		g.t.Fatal(err)
	}
	return c
}

// expectServiceCounters checks each named service's counters moved from
// before by exactly granted and expired (services not named: not at all).
func (g *gate) expectServiceCounters(what string, before map[string]maps.ServiceCounters, want map[string][2]uint64) {
	g.t.Helper()
	after := g.serviceCounters()
	for name, a := range after {
		b := before[name]
		d := [2]uint64{a.Granted - b.Granted, a.Expired - b.Expired}
		if d != want[name] {
			g.t.Errorf("%s: service %s counters moved by granted +%d expired +%d, want +%d +%d", what, name, d[0], d[1], want[name][0], want[name][1])
		}
	}
}

// ev is what a test checks of an event; Expires 0 and an invalid Src are
// not checked.
type ev struct {
	Type    string
	Src     netip.Addr
	Service string
	Stage   int
	KeyID   uint32
	Expires uint64
}

func (e ev) String() string {
	return fmt.Sprintf("%s %s %s stage %d key %#x until %d", e.Type, e.Src, e.Service, e.Stage, e.KeyID, e.Expires)
}

// expectEvs drains the ring buffer and checks its events, in order.
func (g *gate) expectEvs(what string, want ...ev) {
	g.t.Helper()
	evs := g.events()
	names := map[int]string{}
	if len(evs) > 0 {
		cfg, err := g.maps.ReadConfig()
		if err != nil {
			g.t.Fatal(err)
		}
		for n, i := range cfg.Index {
			names[i] = n
		}
	}
	var got []ev
	for i, e := range evs {
		name, ok := names[e.ServiceIndex]
		if !ok {
			name = fmt.Sprintf("#%d", e.ServiceIndex)
		}
		x := ev{Type: e.Type, Src: e.Src, Service: name, Stage: e.Stage, KeyID: e.KeyID, Expires: e.raw.ExpiresNs}
		if i < len(want) {
			if want[i].Expires == 0 {
				x.Expires = 0
			}
			if !want[i].Src.IsValid() {
				x.Src = netip.Addr{}
			}
		}
		got = append(got, x)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		g.t.Errorf("%s: events\n%v\nwant\n%v", what, got, want)
	}
}

// knockThrough sends every step of sequence from src, each accepted and
// the last granting, and drains the events.
func (g *gate) knockThrough(f family, src netip.Addr, sequence []maps.Port) {
	g.t.Helper()
	for i, st := range sequence {
		want := []string{"dropped_knock", "knock_advanced"}
		if i == len(sequence)-1 {
			want = append(want, "granted")
		}
		g.expect(fmt.Sprintf("%s: step %d (%s)", src, i+1, st), f.knock(src, st), xdpDrop, want...)
	}
	g.events()
}

// expectProgress checks src's knock progress: stage steps of service's
// sequence ("": none at all).
func (g *gate) expectProgress(what string, src netip.Addr, service string, stage int) {
	g.t.Helper()
	p, ok := g.progress(src)
	if service == "" {
		if ok {
			g.t.Errorf("%s: %s has progress %+v, want none", what, src, p)
		}
		return
	}
	if !ok || int(p.Stage) != stage || int(p.Service) != g.index(service) || p.Generation != uint16(g.cfg.Generation) {
		g.t.Errorf("%s: %s has progress %+v (%v), want stage %d of %s (index %d)", what, src, p, ok, stage, service, g.index(service))
	}
}

// portCase is a packet to a port and whose it is.
type portCase struct {
	port    maps.Port
	service string // "": nobody's
}

var svcPorts = []portCase{{ssh, "default"}, {mdns, "default"}, {https, "web"}, {console, "web"}, {rdpPort, "rdp"}, {unrelated2, ""}}

// unrelated2 is a port no service of svcConfig claims.
var unrelated2 = tcp(80)

// expectOpenTo checks src reaches exactly the ports of the services in
// open (plus those nobody protects), with SYNs and ACKs alike.
func (g *gate) expectOpenTo(what string, f family, src netip.Addr, open ...string) {
	g.t.Helper()
	for _, c := range svcPorts {
		verdict, counter := uint32(xdpDrop), "dropped_protected"
		switch {
		case c.service == "":
			verdict, counter = xdpPass, "passed"
		case contains(open, c.service):
			verdict, counter = xdpPass, "passed_granted"
		}
		g.expect(fmt.Sprintf("%s: %s to %s (%s)", what, src, c.port, c.service), f.knock(src, c.port), verdict, counter)
		if c.port.Proto == maps.TCP {
			g.expect(fmt.Sprintf("%s: %s ACK to %s (%s)", what, src, c.port, c.service), f.tcp(src, c.port.Num, packet.ACK), verdict, counter)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Each service's grant lasts its own window, opens its own ports only, and
// expires on its own: reported once, under its service, counted in its
// service's counters.
func TestServiceGrantsAndExpiries(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig())
		def, web, rdp := g.index("default"), g.index("web"), g.index("rdp")
		if def != 0 || web == rdp || web == 0 || rdp == 0 {
			t.Fatalf("indices: default %d, web %d, rdp %d", def, web, rdp)
		}
		t0 := g.boot()
		g.expectOpenTo("stranger", f, f.src)
		sc := g.serviceCounters()

		g.knockThrough(f, f.src, seq)
		g.expectGrants("default's sequence", f.src, map[int]uint64{def: t0 + uint64(30*time.Second)})
		g.expectOpenTo("after default's sequence", f, f.src, "default")
		g.knockThrough(f, f.src, webSeq)
		web0 := t0 + uint64(2*time.Hour)
		g.expectGrants("web's sequence", f.src, map[int]uint64{def: t0 + uint64(30*time.Second), web: web0})
		g.expectOpenTo("after both sequences", f, f.src, "default", "web")
		g.expectOpenTo("another source", f, f.other)
		g.expectServiceCounters("two sequences", sc, map[string][2]uint64{"default": {1, 0}, "web": {1, 0}})

		// default's window ends first, to the nanosecond; web's goes on.
		g.setBoot(t0 + uint64(30*time.Second) - 1)
		g.expect("22 a nanosecond before default's end", f.knock(f.src, ssh), xdpPass, "passed_granted")
		g.setBoot(t0 + uint64(30*time.Second))
		sc = g.serviceCounters()
		g.expect("22 at default's end", f.knock(f.src, ssh), xdpDrop, "dropped_protected", "grant_expired")
		g.expectEvs("default expired", ev{"expire", f.src, "default", 0, 0, t0 + uint64(30*time.Second)})
		g.expect("5353 after default's end", f.knock(f.src, mdns), xdpDrop, "dropped_protected")
		g.expect("443 after default's end", f.knock(f.src, https), xdpPass, "passed_granted")
		g.expectServiceCounters("default expired", sc, map[string][2]uint64{"default": {0, 1}})
		g.expectEvs("reported once")

		g.setBoot(web0 - 1)
		g.expect("8443 a nanosecond before web's end", f.knock(f.src, console), xdpPass, "passed_granted")
		g.setBoot(web0)
		sc = g.serviceCounters()
		g.expect("8443 at web's end", f.knock(f.src, console), xdpDrop, "dropped_protected", "grant_expired")
		g.expect("443 at web's end", f.knock(f.src, https), xdpDrop, "dropped_protected")
		g.expectEvs("web expired", ev{"expire", f.src, "web", 0, 0, web0})
		g.expectServiceCounters("web expired", sc, map[string][2]uint64{"web": {0, 1}})
		g.expectOpenTo("after both ends", f, f.src)

		// An expired grant of one service does not hold up another's
		// sequence, nor its own.
		g.knockThrough(f, f.src, webSeq)
		g.expectGrants("web again", f.src, map[int]uint64{def: t0 + uint64(30*time.Second), web: web0 + uint64(2*time.Hour)})
		g.expectOpenTo("web again", f, f.src, "web")
	})
}

// A grant of one service is refused on every other service's port, with
// SYNs and ACKs alike; the operator's grants are per service too, and a
// grant of a service the gate does not have is an error.
func TestServiceGrantOpensOnlyItsPorts(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig())
		for i, name := range []string{"default", "web", "rdp"} {
			src := f.source(i)
			if err := g.maps.Grant(src, name, g.boot()+uint64(time.Hour)); err != nil {
				t.Fatal(err)
			}
			g.expectOpenTo("granted "+name, f, src, name)
		}
		if err := g.maps.Grant(f.src, "nosuch", g.boot()+uint64(time.Hour)); !errors.Is(err, maps.ErrNoService) {
			t.Errorf("grant of an unknown service: %v, want ErrNoService", err)
		}
		both := f.source(9)
		for _, name := range []string{"web", "rdp"} {
			if err := g.maps.Grant(both, name, g.boot()+uint64(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		g.expectOpenTo("granted web and rdp", f, both, "web", "rdp")
		// Revoked per service, then for all.
		if had, err := g.maps.Revoke(both, "web"); err != nil || !had {
			t.Fatalf("revoke web: %v %v", had, err)
		}
		g.expectOpenTo("web revoked", f, both, "rdp")
		if err := g.maps.Grant(both, "default", g.boot()+uint64(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if had, err := g.maps.Revoke(both, ""); err != nil || !had {
			t.Fatalf("revoke all: %v %v", had, err)
		}
		g.expectOpenTo("all revoked", f, both)
		g.expectGrants("all revoked", both, map[int]uint64{})
		if _, err := g.maps.RebuildHints(); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, g.index("web"), g.index("rdp")} {
			if hinted, err := g.maps.Hinted(maps.GrantKey(both, i)); err != nil || hinted {
				t.Errorf("service %d hinted after revoking all and a rebuild: %v (%v)", i, hinted, err)
			}
		}
	})
}

// A source follows one sequence at a time: a step of another service's
// sequence resets its progress (counted, a reset event under the service it
// was following), and when that step is the other sequence's first it
// starts that one; any other step of it is an out-of-order knock.
func TestInterleavedSequencesOneSource(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig())
		src := f.src
		a1, a2, a3, b1, b2 := seq[0], seq[1], seq[2], webSeq[0], webSeq[1]

		g.expect("A1", f.knock(src, a1), xdpDrop, "dropped_knock", "knock_advanced")
		g.expectProgress("A1", src, "default", 1)
		g.expectEvs("A1", ev{"knock", src, "default", 1, 0, 0})

		g.expect("B1 after A1", f.knock(src, b1), xdpDrop, "dropped_knock", "knock_reset", "knock_advanced")
		g.expectProgress("B1 after A1", src, "web", 1)
		g.expectEvs("B1 after A1", ev{"reset", src, "default", 1, 0, 0}, ev{"knock", src, "web", 1, 0, g.boot() + uint64(5*time.Second)})

		g.expect("B1 again", f.knock(src, b1), xdpDrop, "dropped_knock", "knock_repeated")
		g.expectProgress("B1 again", src, "web", 1)

		g.expect("A2 after B1", f.knock(src, a2), xdpDrop, "dropped_knock", "knock_reset")
		g.expectProgress("A2 after B1", src, "", 0)
		g.expectEvs("A2 after B1", ev{"reset", src, "web", 1, 0, 0})

		g.expect("B2 without progress", f.knock(src, b2), xdpDrop, "dropped_knock")
		g.expectProgress("B2 without progress", src, "", 0)

		g.expect("A1", f.knock(src, a1), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("A2", f.knock(src, a2), xdpDrop, "dropped_knock", "knock_advanced")
		g.expectProgress("A1 A2", src, "default", 2)
		g.events()
		// B2 is web's second step: to default's progress, a wrong knock.
		g.expect("B2 after A1 A2", f.knock(src, b2), xdpDrop, "dropped_knock", "knock_reset")
		g.expectProgress("B2 after A1 A2", src, "", 0)
		g.expectEvs("B2 after A1 A2", ev{"reset", src, "default", 2, 0, 0})
		g.expect("A3 after the reset", f.knock(src, a3), xdpDrop, "dropped_knock")
		g.expectGrants("A3 after the reset", src, map[int]uint64{})

		// A1 A2, then web's whole sequence: web granted, default not.
		g.expect("A1", f.knock(src, a1), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("A2", f.knock(src, a2), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("B1 after A1 A2", f.knock(src, b1), xdpDrop, "dropped_knock", "knock_reset", "knock_advanced")
		g.events()
		g.expect("B2", f.knock(src, b2), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.expectEvs("B2", ev{"open", src, "web", 2, 0, g.boot() + uint64(2*time.Hour)})
		g.expectProgress("web granted", src, "", 0)
		g.expectGrants("web granted", src, map[int]uint64{g.index("web"): g.boot() + uint64(2*time.Hour)})
		g.expect("A3 now", f.knock(src, a3), xdpDrop, "dropped_knock")
		g.expectOpenTo("web granted", f, src, "web")

		// Then default's, which web's grant does not hold up.
		g.knockThrough(f, src, seq)
		g.expectOpenTo("both granted", f, src, "default", "web")
	})
}

// Two sources knocking two sequences at once: each follows its own, and
// both complete.
func TestInterleavedSequencesTwoSources(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig())
		a, b := f.src, f.other
		steps := []struct {
			src     netip.Addr
			port    maps.Port
			service string
			stage   int
		}{
			{a, seq[0], "default", 1},
			{b, webSeq[0], "web", 1},
			{a, seq[1], "default", 2},
			{b, webSeq[1], "", 0}, // web complete
			{a, seq[2], "", 0},    // default complete
		}
		for i, s := range steps {
			want := []string{"dropped_knock", "knock_advanced"}
			if s.service == "" {
				want = append(want, "granted")
			}
			what := fmt.Sprintf("step %d: %s > %s", i, s.src, s.port)
			g.expect(what, f.knock(s.src, s.port), xdpDrop, want...)
			g.expectProgress(what, s.src, s.service, s.stage)
		}
		g.expectGrants("a", a, map[int]uint64{0: g.boot() + uint64(30*time.Second)})
		g.expectGrants("b", b, map[int]uint64{g.index("web"): g.boot() + uint64(2*time.Hour)})
		g.expectOpenTo("a", f, a, "default")
		g.expectOpenTo("b", f, b, "web")
	})
}

// A first step from a source that holds a grant of that step's service is
// ignored (counted); a grant of another service does not stop it.
func TestKnockWhileGrantedPerService(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig())
		far := g.boot() + uint64(time.Hour)
		if err := g.maps.Grant(f.src, "web", far); err != nil {
			t.Fatal(err)
		}
		g.expect("web's first step, web granted", f.knock(f.src, webSeq[0]), xdpDrop, "dropped_knock", "knock_while_granted")
		g.expectProgress("web's first step, web granted", f.src, "", 0)
		g.expect("default's first step, web granted", f.knock(f.src, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expectProgress("default's first step, web granted", f.src, "default", 1)
		// web's first step resets default's progress, then is ignored.
		g.expect("web's first step mid-default", f.knock(f.src, webSeq[0]), xdpDrop, "dropped_knock", "knock_reset", "knock_while_granted")
		g.expectProgress("web's first step mid-default", f.src, "", 0)
		g.expectEvs("knocks while granted web", ev{"knock", f.src, "default", 1, 0, 0}, ev{"reset", f.src, "default", 1, 0, 0})
		g.knockThrough(f, f.src, seq)
		g.expect("default's first step, both granted", f.knock(f.src, seq[0]), xdpDrop, "dropped_knock", "knock_while_granted")
		g.expectGrants("after", f.src, map[int]uint64{0: g.boot() + uint64(30*time.Second), g.index("web"): far})

		if err := g.maps.Grant(f.other, "default", far); err != nil {
			t.Fatal(err)
		}
		g.expect("web's first step, default granted", f.knock(f.other, webSeq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expectProgress("web's first step, default granted", f.other, "web", 1)
		g.expectEvs("knocks while granted default", ev{"knock", f.other, "web", 1, 0, 0})
	})
}

// spaAsk is a version-2 packet of key at ts asking for the named services
// (an unknown name hashes like any other).
func spaAsk(key *spa.Key, ts time.Time, open netip.Addr, names ...string) []byte {
	p := spa.Packet{KeyID: key.ID, Time: ts, Open: open, Request: spa.RequestOf(names)}
	rand.Read(p.Nonce[:])
	return p.Marshal(key.Secret)
}

// spaWords is a version-2 packet of key at ts whose four request words are
// words, as they go on the wire (0: unused), tagged right.
func spaWords(key *spa.Key, ts time.Time, words [spa.MaxRequest]uint32) []byte {
	b := spaAsk(key, ts, netip.Addr{}, "default")
	for i, w := range words {
		binary.BigEndian.PutUint32(b[spa.Signed+4*i:], w)
	}
	binary.LittleEndian.PutUint64(b[spa.SignedRequest:], spa.Sum64(key.Secret, b[:spa.SignedRequest]))
	return b
}

// snapshot is what a refused SPA packet must leave as it was.
type snapshot struct {
	grants   map[bpf.KnockgateGrantKey]bpf.KnockgateGrant
	last     map[uint32]uint64
	services []uint64 // service_counters, summed over CPUs, by index
}

func (g *gate) snapshot() snapshot {
	g.t.Helper()
	s := snapshot{grants: g.grants(), last: map[uint32]uint64{}}
	n := int(g.objs.ServiceCounters.MaxEntries())
	ncpu := ebpf.MustPossibleCPU()
	keys, values := make([]uint32, n), make([]uint64, n*ncpu)
	var cursor ebpf.MapBatchCursor
	if _, err := g.objs.ServiceCounters.BatchLookup(&cursor, keys, values, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		g.t.Fatal(err)
	}
	s.services = make([]uint64, n)
	for k := range keys {
		for c := range ncpu {
			s.services[keys[k]] += values[k*ncpu+c]
		}
	}
	var id uint32
	var ts uint64
	it := g.objs.SpaLast.Iterate()
	for it.Next(&id, &ts) {
		s.last[id] = ts
	}
	if err := it.Err(); err != nil {
		g.t.Fatal(err)
	}
	return s
}

// refusedSPA runs an SPA frame that must be refused for reason: dropped,
// that one counter, and nothing else changed: no grant, no replay state
// moved, no service counter, no event, no progress.
func (g *gate) refusedSPA(what string, frame []byte, src netip.Addr, reason string) {
	g.t.Helper()
	before := g.snapshot()
	g.expect(what, frame, xdpDrop, "dropped_spa", reason)
	after := g.snapshot()
	if !reflect.DeepEqual(before.grants, after.grants) {
		g.t.Errorf("%s: grants changed from %v to %v", what, before.grants, after.grants)
	}
	if !reflect.DeepEqual(before.last, after.last) {
		g.t.Errorf("%s: replay state moved from %v to %v", what, before.last, after.last)
	}
	if !reflect.DeepEqual(before.services, after.services) {
		g.t.Errorf("%s: service counters moved from %v to %v", what, before.services, after.services)
	}
	g.noProgress(what, src)
	g.expectEvs(what)
}

// A key opens the services of its scope: a version-1 packet all of them,
// each for the key's window (open=) if it has one, else the service's own;
// one open event per service, naming it and the key.
func TestSPAKeyScopes(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig(), svcKeys...)
		st := &stamps{at: g.gateTime()}
		now := g.boot()
		web, rdp := g.index("web"), g.index("rdp")
		sc := g.serviceCounters()

		a := f.source(1)
		g.expect("laptop (default only)", f.spaFrame(a, spaPayload(&laptopKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvs("laptop", ev{"open", a, "default", 0, laptopKey.ID, now + uint64(30*time.Second)})
		g.expectGrants("laptop", a, map[int]uint64{0: now + uint64(30*time.Second)})
		g.expectOpenTo("laptop", f, a, "default")

		b := f.source(2)
		g.expect("contractor (web)", f.spaFrame(b, spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvs("contractor", ev{"open", b, "web", 0, contractorKey.ID, now + uint64(2*time.Hour)})
		g.expectGrants("contractor", b, map[int]uint64{web: now + uint64(2*time.Hour)})
		g.expectOpenTo("contractor", f, b, "web")

		c := f.source(3)
		g.expect("rdp-only", f.spaFrame(c, spaPayload(&rdpKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvs("rdp-only", ev{"open", c, "rdp", 0, rdpKey.ID, now + uint64(10*time.Minute)})
		g.expectOpenTo("rdp-only", f, c, "rdp")

		d := f.source(4)
		ops := now + uint64(45*time.Minute)
		g.expect("ops (every service, open=45m)", f.spaFrame(d, spaPayload(&opsKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted", "granted", "granted")
		g.expectEvs("ops", ev{"open", d, "default", 0, opsKey.ID, ops}, ev{"open", d, "web", 0, opsKey.ID, ops},
			ev{"open", d, "rdp", 0, opsKey.ID, ops})
		g.expectGrants("ops", d, map[int]uint64{0: ops, web: ops, rdp: ops})
		g.expectOpenTo("ops", f, d, "default", "web", "rdp")
		g.expectServiceCounters("four keys", sc, map[string][2]uint64{"default": {2, 0}, "web": {2, 0}, "rdp": {2, 0}})

		// Never shortened: ops again after web's own two hours were given.
		g.expect("contractor for d", f.spaFrame(d, spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expect("ops for d again", f.spaFrame(d, spaPayload(&opsKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted", "granted", "granted")
		g.expectGrants("ops after contractor", d, map[int]uint64{0: ops, web: now + uint64(2*time.Hour), rdp: ops})
		g.events()
	})
}

// A version-2 packet opens the services it asks for, and only those; a
// request outside the key's scope, naming a service the gate does not have,
// or naming none, is refused (spa_bad_service) with nothing else changed.
func TestSPARequests(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig(), svcKeys...)
		st := &stamps{at: g.gateTime()}
		now := g.boot()
		web, rdp := g.index("web"), g.index("rdp")
		ops := now + uint64(45*time.Minute)
		accept := func(what string, src netip.Addr, b []byte, services ...string) {
			t.Helper()
			want := []string{"dropped_spa", "spa_accepted"}
			for range services {
				want = append(want, "granted")
			}
			g.expect(what, f.spaFrame(src, b).Bytes(), xdpDrop, want...)
		}

		a := f.source(1)
		accept("ops asks for web", a, spaAsk(&opsKey, st.next(), netip.Addr{}, "web"), "web")
		g.expectEvs("ops asks for web", ev{"open", a, "web", 0, opsKey.ID, ops})
		g.expectGrants("ops asks for web", a, map[int]uint64{web: ops})
		g.expectOpenTo("ops asks for web", f, a, "web")

		b := f.source(2)
		accept("ops asks for rdp and default", b, spaAsk(&opsKey, st.next(), netip.Addr{}, "rdp", "default"), "default", "rdp")
		g.expectEvs("ops asks for rdp and default", ev{"open", b, "default", 0, opsKey.ID, ops}, ev{"open", b, "rdp", 0, opsKey.ID, ops})
		g.expectOpenTo("ops asks for rdp and default", f, b, "default", "rdp")

		c := f.source(3)
		accept("ops asks for web twice", c, spaAsk(&opsKey, st.next(), netip.Addr{}, "web", "web"), "web")
		accept("ops asks for rdp after a gap", c, spaWords(&opsKey, st.next(), [4]uint32{0, 0, spa.ServiceHash("rdp"), 0}), "rdp")
		g.expectEvs("web twice, rdp after a gap", ev{"open", c, "web", 0, opsKey.ID, ops}, ev{"open", c, "rdp", 0, opsKey.ID, ops})
		g.expectGrants("web twice, rdp after a gap", c, map[int]uint64{web: ops, rdp: ops})

		d := f.source(4)
		accept("contractor asks for web", d, spaAsk(&contractorKey, st.next(), netip.Addr{}, "web"), "web")
		g.expectEvs("contractor asks for web", ev{"open", d, "web", 0, contractorKey.ID, now + uint64(2*time.Hour)})
		// The other address, for an any-address key only, per service too.
		e, e2 := f.source(5), f.source(6)
		anyOps := opsKey
		anyOps.ID, anyOps.AnyAddress = 0x1c, true
		if err := g.maps.SetSPAKeys(append(svcKeys[:len(svcKeys):len(svcKeys)], anyOps)); err != nil {
			t.Fatal(err)
		}
		accept("any-address ops asks for rdp for another", e, spaAsk(&anyOps, st.next(), e2, "rdp"), "rdp")
		g.expectEvs("for another", ev{"open", e2, "rdp", 0, anyOps.ID, ops})
		g.expectGrants("for another", e2, map[int]uint64{rdp: ops})
		g.expectGrants("not the sender", e, map[int]uint64{})
		g.refusedSPA("ops asks for rdp for another", f.spaFrame(e, spaAsk(&opsKey, st.next(), e2, "rdp")).Bytes(), e, "spa_bad_address")

		x := f.source(7)
		refusals := []struct {
			what string
			b    []byte
		}{
			{"contractor asks for rdp (outside its scope)", spaAsk(&contractorKey, st.next(), netip.Addr{}, "rdp")},
			{"contractor asks for web and rdp", spaAsk(&contractorKey, st.next(), netip.Addr{}, "web", "rdp")},
			{"contractor asks for default", spaAsk(&contractorKey, st.next(), netip.Addr{}, "default")},
			{"laptop asks for web", spaAsk(&laptopKey, st.next(), netip.Addr{}, "web")},
			{"ops asks for a service the gate lacks", spaAsk(&opsKey, st.next(), netip.Addr{}, "nosuch")},
			{"ops asks for web and a service the gate lacks", spaAsk(&opsKey, st.next(), netip.Addr{}, "web", "nosuch")},
			{"ops asks for a lacking service after web (last word)", spaWords(&opsKey, st.next(), [4]uint32{spa.ServiceHash("web"), 0, 0, 0xdeadbeef})},
			{"ops asks for nothing", spaWords(&opsKey, st.next(), [4]uint32{})},
		}
		for _, r := range refusals {
			g.refusedSPA(r.what, f.spaFrame(x, r.b).Bytes(), x, "spa_bad_service")
		}
		// The same stamps, made right, are still fresh: the refusals moved
		// no replay state.
		last := st.at
		accept("ops at the last refused stamp", x, spaAsk(&opsKey, last, netip.Addr{}, "web"), "web")
		g.expectEvs("ops at the last refused stamp", ev{"open", x, "web", 0, opsKey.ID, ops})
		// Versions and lengths go together.
		v2 := spaAsk(&opsKey, st.next(), netip.Addr{}, "web")
		v2[0] = spa.Version
		g.refusedSPA("72 bytes of version 1", f.spaFrame(x, v2).Bytes(), x, "spa_bad_version")
		v1 := spaPayload(&opsKey, st.next(), netip.Addr{})
		v1[0] = spa.VersionRequest
		g.refusedSPA("56 bytes of version 2", f.spaFrame(x, v1).Bytes(), x, "spa_bad_version")
		for _, n := range []int{57, 64, 71, 73} {
			b := make([]byte, n)
			copy(b, spaAsk(&opsKey, st.next(), netip.Addr{}, "web"))
			g.refusedSPA(fmt.Sprintf("%d bytes", n), f.spaFrame(x, b).Bytes(), x, "spa_bad_length")
		}
		g.events()
	})
}

// Every single-bit flip of a valid version-2 packet is refused, by the
// first check it breaks, and changes nothing but that counter: the request
// is inside the tagged bytes.
func TestSPARequestBitFlips(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig(), svcKeys...)
		st := &stamps{at: g.gateTime()}
		valid := spaAsk(&opsKey, st.next(), netip.Addr{}, "web", "rdp")
		if len(valid) != spa.LenRequest {
			t.Fatalf("%d bytes, want %d", len(valid), spa.LenRequest)
		}
		for bit := range spa.LenRequest * 8 {
			b := append([]byte(nil), valid...)
			b[bit/8] ^= 1 << (bit % 8)
			reason := "spa_bad_tag"
			switch {
			case bit < 32:
				reason = "spa_bad_version"
			case bit < 64:
				reason = "spa_unknown_key"
			}
			g.refusedSPA(fmt.Sprintf("bit %d flipped", bit), f.spaFrame(f.src, b).Bytes(), f.src, reason)
		}
		g.expect("the packet itself", f.spaFrame(f.src, valid).Bytes(), xdpDrop, "dropped_spa", "spa_accepted", "granted", "granted")
		g.expectOpenTo("the packet itself", f, f.src, "web", "rdp")
	})
}

// allConfig: default guards 22 behind its sequence, web protects all (every
// port no other service claims) behind its own, rdp guards 3389 (SPA only).
func allConfig() conf {
	c := svcConfig()
	w := webService()
	w.Protect, w.ProtectAll = nil, true
	c.Protected = []maps.Port{ssh}
	c.Services = []policy.Service{w, rdpService()}
	return c
}

// The service that protects all takes the ports no other service claims;
// listed ports stay their own service's; a knock step is protected (against
// what is no knock) by the protect-all service only, not by its own; DHCP
// replies pass; the SPA port is SPA's.
func TestProtectAllBesideServices(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, allConfig(), svcKeys...)
		cases := []struct {
			what    string
			frame   func(src netip.Addr) []byte
			service string // whose grant passes it
		}{
			{"SYN to 22", func(s netip.Addr) []byte { return f.knock(s, ssh) }, "default"},
			{"ACK to 22", func(s netip.Addr) []byte { return f.tcp(s, 22, packet.ACK) }, "default"},
			{"SYN to 3389", func(s netip.Addr) []byte { return f.knock(s, rdpPort) }, "rdp"},
			{"SYN to 80", func(s netip.Addr) []byte { return f.knock(s, tcp(80)) }, "web"},
			{"SYN to 443", func(s netip.Addr) []byte { return f.knock(s, https) }, "web"},
			{"UDP to 5353", func(s netip.Addr) []byte { return f.knock(s, mdns) }, "web"},
			{"SYN to 65535", func(s netip.Addr) []byte { return f.knock(s, tcp(65535)) }, "web"},
			{"ACK to default's step 7000", func(s netip.Addr) []byte { return f.tcp(s, seq[0].Num, packet.ACK) }, "web"},
			{"SYN+ACK to default's step 9000", func(s netip.Addr) []byte { return f.tcp(s, seq[2].Num, packet.SYN|packet.ACK) }, "web"},
			{"ACK to web's step 7100", func(s netip.Addr) []byte { return f.tcp(s, webSeq[0].Num, packet.ACK) }, "web"},
			{"SYN to 7200/tcp (web's step is udp)", func(s netip.Addr) []byte { return f.knock(s, tcp(7200)) }, "web"},
		}
		far := g.boot() + uint64(time.Hour)
		for i, name := range []string{"", "default", "web", "rdp"} {
			src := f.source(10 + i)
			if name != "" {
				if err := g.maps.Grant(src, name, far); err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range cases {
				verdict, counter := uint32(xdpDrop), "dropped_protected"
				if c.service == name {
					verdict, counter = xdpPass, "passed_granted"
				}
				g.expect(fmt.Sprintf("%s granted %q", c.what, name), c.frame(src), verdict, counter)
			}
			// Knocks are knocks, whoever is granted what (web's grant
			// only makes its own first step a knock while granted).
			knock := []string{"dropped_knock", "knock_advanced"}
			if name == "default" {
				knock = []string{"dropped_knock", "knock_while_granted"}
			}
			g.expect(fmt.Sprintf("default's step 1 granted %q", name), f.knock(src, seq[0]), xdpDrop, knock...)
			// web's second step: a wrong knock to default's progress, an
			// out-of-order one without progress.
			wrong := []string{"dropped_knock", "knock_reset"}
			if name == "default" {
				wrong = wrong[:1]
			}
			g.expect(fmt.Sprintf("web's step 2 out of order granted %q", name), f.knock(src, webSeq[1]), xdpDrop, wrong...)
			g.events()
		}
		// What a host needs to keep its address and neighbours.
		g.expect("ICMP echo", packet.ICMP(f.src, f.dst).Bytes(), xdpPass, "passed")
		if f.dst.Is4() {
			g.expect("ARP", packet.ARP(f.src, f.dst), xdpPass, "passed")
			g.expect("DHCP offer", packet.UDP(f.src, netip.MustParseAddr("255.255.255.255"), 67, 68).Bytes(), xdpPass, "passed")
		} else {
			g.expect("DHCPv6 advertise", packet.UDP(f.src, f.dst, 547, 546).Bytes(), xdpPass, "passed")
		}
		g.expect("not a DHCP reply", packet.UDP(f.src, f.dst, 68, 68).Bytes(), xdpDrop, "dropped_protected")
		// The SPA port is SPA's, granted or not; and SPA opens web's "all".
		st := &stamps{at: g.gateTime()}
		web := f.source(12)
		g.refusedSPA("garbage to the SPA port from a web-granted source", f.spaFrame(web, []byte("hello")).Bytes(), web, "spa_bad_length")
		g.expect("contractor opens all", f.spaFrame(f.other, spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expect("SYN to 80 after the contractor's packet", f.knock(f.other, tcp(80)), xdpPass, "passed_granted")
		g.expect("SYN to 22 after the contractor's packet", f.knock(f.other, ssh), xdpDrop, "dropped_protected")
	})
}

// webNet is the web service's own allow list for family f, and an address
// inside it.
func (f family) webNet() (netip.Prefix, netip.Addr) {
	if f.src.Is4() {
		return netip.MustParsePrefix("198.18.7.0/24"), netip.MustParseAddr("198.18.7.9")
	}
	return netip.MustParsePrefix("2001:db8:7eb::/48"), netip.MustParseAddr("2001:db8:7eb::9")
}

// The top-level allow list passes every service's ports; a service's own
// passes that service's only.
func TestServiceAllowLists(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := svcConfig()
		net, inNet := f.webNet()
		cfg.Services[0].Allow = []netip.Prefix{net}
		cfg.Allow = []netip.Prefix{f.allow}
		g := newServiceGate(t, cfg)
		for _, c := range svcPorts {
			verdict, counter := uint32(xdpDrop), "dropped_protected"
			switch c.service {
			case "":
				verdict, counter = xdpPass, "passed"
			case "web":
				verdict, counter = xdpPass, "passed_allowed"
			}
			g.expect(fmt.Sprintf("web's allow list to %s", c.port), f.knock(inNet, c.port), verdict, counter)
			if c.service != "" {
				verdict, counter = xdpPass, "passed_allowed"
			}
			g.expect(fmt.Sprintf("the gate's allow list to %s", c.port), f.knock(f.allowed, c.port), verdict, counter)
		}
		g.expectOpenTo("stranger", f, f.src)
		// Read back as written.
		got, err := g.maps.ReadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if w := got.Policy.Service("web"); w == nil || !reflect.DeepEqual(w.Allow, []netip.Prefix{net}) ||
			!reflect.DeepEqual(got.Policy.Allow, []netip.Prefix{f.allow}) || len(got.Policy.Default().Allow) != 0 {
			t.Errorf("allow lists read back: %+v", got.Policy)
		}
		// A source on web's list knocks for default like anyone.
		g.knockThrough(f, inNet, seq)
		g.expect("22 after default's sequence", f.knock(inNet, ssh), xdpPass, "passed_granted")
		g.expect("443 still by the list", f.knock(inNet, https), xdpPass, "passed_allowed")
	})
}

// allowEntries lists the allow trie's entries by service index, of every
// allow epoch.
func (g *gate) allowEntries() map[int][]netip.Prefix {
	g.t.Helper()
	out := map[int][]netip.Prefix{}
	var k bpf.KnockgateAllowKey
	var bits uint8
	it := g.objs.Allow.Iterate()
	for it.Next(&k, &bits) {
		addr := netip.AddrFrom16(k.Addr)
		n := int(k.Prefixlen) - 16
		if addr.Is4In6() && n >= 96 {
			addr, n = addr.Unmap(), n-96
		}
		out[int(k.Service)] = append(out[int(k.Service)], netip.PrefixFrom(addr, n))
	}
	if err := it.Err(); err != nil {
		g.t.Fatal(err)
	}
	return out
}

// A configuration change removes a service at once: its ports pass (or fall
// to the service that protects all), its grants, allow entries and key
// scope bits are gone once the write returns; a service added in the same
// write gets another index, so nothing of the removed one reaches it; the
// services kept keep their indices and their grants.
func TestServiceRemovedAndAdded(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := svcConfig()
		net, inNet := f.webNet()
		cfg.Services[0].Allow = []netip.Prefix{net}
		g := newServiceGate(t, cfg, svcKeys...)
		st := &stamps{at: g.gateTime()}
		web, rdp := g.index("web"), g.index("rdp")
		far := g.boot() + uint64(time.Hour)
		for _, name := range []string{"web", "rdp"} {
			if err := g.maps.Grant(f.src, name, far); err != nil {
				t.Fatal(err)
			}
		}
		g.knockThrough(f, f.other, webSeq)
		g.expectOpenTo("before", f, f.src, "web", "rdp")
		g.expect("web's list before", f.knock(inNet, https), xdpPass, "passed_allowed")
		if e := g.allowEntries(); len(e[web]) != 1 {
			t.Fatalf("allow entries before: %v", e)
		}
		// A source part-way through web's sequence.
		partway := f.source(1)
		g.expect("web's step 1", f.knock(partway, webSeq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.events()

		// web goes, api (443, SPA only) comes in the same write.
		next := spaConfig()
		api := policy.Service{Name: "api", StepTimeout: time.Second, Open: time.Minute, Protect: []maps.Port{https}}
		next.Services = []policy.Service{rdpService(), api}
		g.configure(next)
		installed, err := g.maps.ReadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if installed.Index["rdp"] != rdp {
			t.Errorf("rdp moved from index %d to %d", rdp, installed.Index["rdp"])
		}
		if i := installed.Index["api"]; i == web || i == 0 || i == rdp {
			t.Errorf("api took index %d (web's was %d, rdp's %d): a service removed keeps its index for one write", i, web, rdp)
		}
		if _, ok := installed.Index["web"]; ok {
			t.Errorf("web still configured: %v", installed.Index)
		}
		for k := range g.grants() {
			if int(k.Service) == web {
				t.Errorf("grant of %s of the removed web (index %d) still there", maps.AddrOf(k.Addr), web)
			}
		}
		if _, err := g.maps.RebuildHints(); err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{f.src, f.other} {
			if hinted, err := g.maps.Hinted(maps.GrantKey(a, web)); err != nil || hinted {
				t.Errorf("%s's web grant hinted after the removal and a rebuild: %v (%v)", a, hinted, err)
			}
		}
		if e := g.allowEntries(); len(e[web]) != 0 {
			t.Errorf("allow entries of the removed web: %v", e[web])
		}
		g.expect("443 (api's now) from web's grantee", f.knock(f.src, https), xdpDrop, "dropped_protected")
		g.expect("8443 (nobody's now)", f.knock(f.src, console), xdpPass, "passed")
		g.expect("8443 from a stranger", f.knock(f.source(2), console), xdpPass, "passed")
		g.expect("3389 (rdp kept, with its grant)", f.knock(f.src, rdpPort), xdpPass, "passed_granted")
		g.expect("443 from web's list", f.knock(inNet, https), xdpDrop, "dropped_protected")
		// web's sequence is gone: its ports are no knocks, its progress void.
		g.expect("web's step 2 from the source part-way", f.knock(partway, webSeq[1]), xdpPass, "passed")
		g.expect("web's step 1", f.knock(partway, webSeq[0]), xdpPass, "passed")
		g.expectGrants("part-way", partway, map[int]uint64{})
		// Keys: web's bit is gone from every scope.
		g.refusedSPA("contractor (web only) after web went", f.spaFrame(f.source(3), spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(),
			f.source(3), "spa_bad_service")
		g.refusedSPA("ops asks for web after web went", f.spaFrame(f.source(3), spaAsk(&opsKey, st.next(), netip.Addr{}, "web")).Bytes(),
			f.source(3), "spa_bad_service")
		g.refusedSPA("ops asks for api (not in its scope)", f.spaFrame(f.source(3), spaAsk(&opsKey, st.next(), netip.Addr{}, "api")).Bytes(),
			f.source(3), "spa_bad_service")
		var raw bpf.KnockgateSpaKey
		if err := g.objs.SpaKeys.Lookup(opsKey.ID, &raw); err != nil || raw.Services != 1|1<<rdp {
			t.Errorf("ops key's scope after web went: %#x (%v), want %#x", raw.Services, err, 1|1<<rdp)
		}
		g.expect("ops opens default and rdp", f.spaFrame(f.source(3), spaPayload(&opsKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted", "granted")
		g.expectGrants("ops after web went", f.source(3), map[int]uint64{0: 0, rdp: 0})
		g.events()

		// web back: the lowest free index (its old one, free now), and
		// nothing of what it had.
		again := next
		back := webService()
		back.Protect = []maps.Port{console} // 443 is api's now
		again.Services = []policy.Service{rdpService(), api, back}
		g.configure(again)
		if i := g.index("web"); i != web {
			t.Logf("web came back at index %d (was %d)", i, web)
		}
		g.expect("8443 (web's again) from its former grantee", f.knock(f.src, console), xdpDrop, "dropped_protected")
		g.expect("8443 from its former list", f.knock(inNet, console), xdpDrop, "dropped_protected")
		g.expectGrants("web back", f.other, map[int]uint64{})
		g.expect("web's step 1", f.knock(partway, webSeq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.events()

		// A removed service's ports fall to the service that protects all.
		g.configure(allConfig())
		if err := g.maps.Grant(f.source(4), "web", far); err != nil {
			t.Fatal(err)
		}
		g.configure(func() conf { c := allConfig(); c.Services = c.Services[:1]; return c }())
		g.expect("3389 (rdp gone) falls to all", f.knock(f.src, rdpPort), xdpDrop, "dropped_protected")
		g.expect("3389 from web's grantee", f.knock(f.source(4), rdpPort), xdpPass, "passed_granted")
	})
}

// Under safe mode a removed service's grants wait for the confirmation:
// the change rolled back, they are good again; confirmed, they go.
func TestServiceRemovalRollsBack(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newServiceGate(t, svcConfig(), svcKeys...)
		st := &stamps{at: g.gateTime()}
		web := g.index("web")
		far := g.boot() + uint64(time.Hour)
		if err := g.maps.Grant(f.src, "web", far); err != nil {
			t.Fatal(err)
		}
		without := func() conf {
			c := svcConfig()
			c.Services = []policy.Service{rdpService()}
			c.ConfirmBy = g.boot() + uint64(time.Hour)
			return c
		}
		g.configure(without())
		g.expect("443 while the removal awaits confirmation", f.knock(f.src, https), xdpPass, "passed")
		g.expect("443 from a stranger meanwhile", f.knock(f.other, https), xdpPass, "passed")
		// The operator grants by the configuration in force.
		if err := g.maps.Grant(f.source(7), "web", far); !errors.Is(err, maps.ErrNoService) {
			t.Errorf("grant of web while its removal is in force: %v, want ErrNoService", err)
		}
		if _, ok := g.grantAt(f.src, web); !ok {
			t.Fatal("web's grant went before the change was confirmed")
		}
		g.refusedSPA("contractor while web is away", f.spaFrame(f.other, spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(),
			f.other, "spa_bad_service")

		g.backdateConfirm()
		if err := g.maps.Grant(f.source(7), "web", far); err != nil {
			t.Errorf("grant of web once its removal lapsed: %v", err)
		}
		g.expect("443 once the change lapsed", f.knock(f.src, https), xdpPass, "passed_granted")
		g.expect("443 from a stranger", f.knock(f.other, https), xdpDrop, "dropped_protected")
		if _, err := g.maps.ConfirmConfig(); !errors.Is(err, maps.ErrRolledBack) {
			t.Fatalf("confirm after the deadline: %v, want ErrRolledBack", err)
		}
		if i := g.index("web"); i != web {
			t.Errorf("web at index %d after the rollback, was %d", i, web)
		}
		g.expect("443 after the rollback", f.knock(f.src, https), xdpPass, "passed_granted")
		g.expect("contractor after the rollback", f.spaFrame(f.other, spaPayload(&contractorKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.events()

		// The same change, confirmed: the grants go with it.
		g.configure(without())
		if _, err := g.maps.ConfirmConfig(); err != nil {
			t.Fatal(err)
		}
		for k := range g.grants() {
			if int(k.Service) == web {
				t.Errorf("grant of %s of web after the removal was confirmed", maps.AddrOf(k.Addr))
			}
		}
		g.expect("443 after the confirmation", f.knock(f.src, https), xdpPass, "passed")
	})
}

// Services added and removed while packets flow: the services that stay
// keep their indices and grants in every packet's view (a granted source is
// never dropped, a stranger never passes), and the one that comes and goes
// is only ever open to its grantee or to all.
func TestServicesChangeUnderTraffic(t *testing.T) {
	netns.Require(t)
	f := families[0]
	g := newServiceGate(t, svcConfig())
	far := g.boot() + uint64(time.Hour)
	for _, name := range []string{"default", "web"} {
		if err := g.maps.Grant(f.src, name, far); err != nil {
			t.Fatal(err)
		}
	}
	web := g.index("web")
	api := tcp(9443)
	with := svcConfig()
	with.Services = append(with.Services, policy.Service{Name: "api", StepTimeout: time.Second, Open: time.Minute, Protect: []maps.Port{api}})
	without := svcConfig()

	frames := []struct {
		what string
		b    []byte
		ok   []uint32
	}{
		{"granted to 22", f.knock(f.src, ssh), []uint32{xdpPass}},
		{"granted to 443", f.knock(f.src, https), []uint32{xdpPass}},
		{"granted ACK to 8443", f.tcp(f.src, 8443, packet.ACK), []uint32{xdpPass}},
		{"stranger to 22", f.knock(f.other, ssh), []uint32{xdpDrop}},
		{"stranger to 443", f.knock(f.other, https), []uint32{xdpDrop}},
		{"stranger to 3389", f.knock(f.other, rdpPort), []uint32{xdpDrop}},
		{"api's grantee to 9443", f.knock(f.source(1), api), []uint32{xdpPass, xdpDrop}},
	}
	var stop atomic.Bool
	var wrong sync.Map
	var runs atomic.Int64
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; !stop.Load(); i++ {
				fr := frames[i%len(frames)]
				v, err := g.objs.Knockgate.Run(&ebpf.RunOptions{Data: fr.b})
				if err != nil {
					wrong.Store(fr.what, err.Error())
					return
				}
				if !contains(verdictNames(fr.ok), verdictName(v)) {
					wrong.Store(fr.what, verdictName(v))
				}
				runs.Add(1)
			}
		}()
	}
	for i := range 30 {
		installed, err := g.maps.WriteConfig(with.config())
		if err != nil {
			t.Fatal(err)
		}
		if installed.Index["web"] != web {
			t.Errorf("write %d: web moved to index %d", i, installed.Index["web"])
		}
		if err := g.maps.Grant(f.source(1), "api", far); err != nil {
			t.Fatal(err)
		}
		if installed, err = g.maps.WriteConfig(without.config()); err != nil {
			t.Fatal(err)
		}
		if installed.Index["web"] != web {
			t.Errorf("write %d: web moved to index %d", i, installed.Index["web"])
		}
	}
	stop.Store(true)
	wg.Wait()
	wrong.Range(func(k, v any) bool {
		t.Errorf("%s: %s under changes", k, v)
		return true
	})
	if runs.Load() == 0 {
		t.Fatal("no packet ran")
	}
	t.Logf("%d packets during 60 writes", runs.Load())
	for k := range g.grants() {
		if maps.AddrOf(k.Addr) == f.source(1) {
			t.Errorf("api's grant (index %d) outlived api", k.Service)
		}
	}
	g.expectOpenTo("after the changes", f, f.src, "default", "web")
}

func verdictNames(vs []uint32) []string {
	var out []string
	for _, v := range vs {
		out = append(out, verdictName(v))
	}
	return out
}

// Each service counts its grants (sequences and SPA packets, not the
// operator's) and its expiries, read back by name.
func TestServiceCounters(t *testing.T) {
	netns.Require(t)
	f := families[0]
	g := newServiceGate(t, svcConfig(), svcKeys...)
	st := &stamps{at: g.gateTime()}
	start := g.serviceCounters()
	if len(start) != 3 {
		t.Fatalf("service counters of %d services, want 3: %v", len(start), start)
	}
	for name, c := range start {
		if c != (maps.ServiceCounters{}) {
			t.Errorf("%s starts at %+v", name, c)
		}
	}
	g.knockThrough(f, f.src, webSeq)
	g.knockThrough(f, f.other, webSeq)
	g.expect("ops", f.spaFrame(f.source(1), spaPayload(&opsKey, st.next(), netip.Addr{})).Bytes(), xdpDrop,
		"dropped_spa", "spa_accepted", "granted", "granted", "granted")
	if err := g.maps.Grant(f.source(2), "rdp", g.boot()+1); err != nil { // the operator's: not counted
		t.Fatal(err)
	}
	g.expectServiceCounters("grants", start, map[string][2]uint64{"default": {1, 0}, "web": {3, 0}, "rdp": {1, 0}})
	g.setBoot(g.boot() + uint64(3*time.Hour))
	mid := g.serviceCounters()
	for _, src := range []netip.Addr{f.src, f.other, f.source(1)} {
		g.run(f.knock(src, https))
		g.run(f.knock(src, console)) // reported once per grant
	}
	g.run(f.knock(f.source(2), rdpPort))
	g.run(f.knock(f.source(2), rdpPort))
	g.expectServiceCounters("expiries", mid, map[string][2]uint64{"web": {0, 3}, "rdp": {0, 1}})
	g.events()
	c := g.counters()
	if n := c.Counter(bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED); n != 4 {
		t.Errorf("grant_expired %d, want 4 (the gate's total)", n)
	}
}

// A service that takes the index of one removed before starts from zero:
// its counters are its own (maps' purge of a freed index zeroes them).
func TestServiceCountersOfAReusedIndex(t *testing.T) {
	netns.Require(t)
	f := families[0]
	g := newServiceGate(t, svcConfig())
	g.knockThrough(f, f.src, webSeq)
	web := g.index("web")
	if got := g.serviceCounters()["web"]; got.Granted != 1 {
		t.Fatalf("web's counters %+v, want one grant", got)
	}
	gone := svcConfig()
	gone.Services = gone.Services[1:]
	g.configure(gone)
	api := svcConfig()
	api.Services = []policy.Service{rdpService(), {Name: "api", StepTimeout: time.Second, Open: time.Minute, Protect: []maps.Port{https}}}
	g.configure(api)
	if i := g.index("api"); i != web {
		t.Fatalf("api at index %d, want web's former %d (the lowest free)", i, web)
	}
	if got := g.serviceCounters()["api"]; got != (maps.ServiceCounters{}) {
		t.Errorf("api, new at web's former index %d, starts with web's counters %+v", web, got)
	}
}

// The most services a gate holds, at once: each opens its own port only,
// by its own sequence, by SPA (a key of all of them, and a request for
// some), or by the operator; and a source without a grant of a service
// never reaches the grants map for it (the hint filter).
func TestThirtyTwoServices(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := spaConfig()
		var names []string
		port := func(i int) maps.Port { return tcp(uint16(10000 + i)) }
		for i := 1; i < maps.MaxServices; i++ {
			s := policy.Service{Name: fmt.Sprintf("s%02d", i), StepTimeout: time.Second, Open: time.Duration(i) * time.Minute,
				Protect: []maps.Port{port(i)}}
			switch i % 3 {
			case 1:
				s.Sequence = []maps.Port{udp(uint16(20000 + i))}
			case 2:
				s.Sequence = []maps.Port{tcp(uint16(21000 + i)), tcp(uint16(22000 + i))}
			}
			cfg.Services = append(cfg.Services, s)
			names = append(names, s.Name)
		}
		all := spa.Key{ID: 0x77, Name: "all", Services: append([]string{"default"}, names...)}
		all.Secret[0] = 0x77
		g := newServiceGate(t, cfg, all)
		installed, err := g.maps.ReadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if len(installed.Index) != maps.MaxServices {
			t.Fatalf("%d services installed, want %d", len(installed.Index), maps.MaxServices)
		}
		ports := map[string]maps.Port{"default": ssh}
		for i, name := range names {
			ports[name] = port(i + 1)
		}
		// expectOnly checks src reaches the ports of open, and no other.
		expectOnly := func(what string, src netip.Addr, open ...string) {
			t.Helper()
			for name, p := range ports {
				verdict, counter := uint32(xdpDrop), "dropped_protected"
				if contains(open, name) {
					verdict, counter = xdpPass, "passed_granted"
				}
				g.expect(fmt.Sprintf("%s: %s (%s)", what, p, name), f.knock(src, p), verdict, counter)
			}
		}
		expectOnly("stranger", f.src)

		// Each sequence from one source, one after the other.
		var knocked []string
		for i, s := range cfg.Services {
			if len(s.Sequence) > 0 {
				g.knockThrough(f, f.src, s.Sequence)
				knocked = append(knocked, names[i])
			}
		}
		expectOnly("every sequence knocked", f.src, knocked...)
		for _, name := range knocked {
			svc := installed.Policy.Service(name)
			if gr, ok, err := g.maps.LookupGrant(f.src, name); err != nil || !ok || gr.ExpiresNs != g.boot()+uint64(svc.Open) {
				t.Errorf("%s's grant: %+v %v %v, want until +%s", name, gr, ok, err, svc.Open)
			}
		}

		// One packet of the key of all: 32 grants, 32 events.
		st := &stamps{at: g.gateTime()}
		counters := []string{"dropped_spa", "spa_accepted"}
		for range maps.MaxServices {
			counters = append(counters, "granted")
		}
		g.expect("the key of all", f.spaFrame(f.other, spaPayload(&all, st.next(), netip.Addr{})).Bytes(), xdpDrop, counters...)
		evs := g.events()
		if len(evs) != maps.MaxServices {
			t.Errorf("%d open events, want %d", len(evs), maps.MaxServices)
		}
		for i, e := range evs {
			if e.Type != "open" || e.ServiceIndex != i || e.KeyID != all.ID || e.Src != f.other {
				t.Errorf("event %d: %+v, want open of service %d by key %#x", i, e.Event, i, all.ID)
			}
		}
		expectOnly("the key of all", f.other, append([]string{"default"}, names...)...)
		// A request for the last four.
		g.expect("a request for four", f.spaFrame(f.source(1), spaAsk(&all, st.next(), netip.Addr{}, names[27:]...)).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted", "granted", "granted", "granted")
		g.events()
		expectOnly("a request for four", f.source(1), names[27:]...)

		// The hint filter: a stranger's (source, service) bits are not all
		// set, and the program then never looks in the grants map. A grant
		// put there behind the hints' back is not seen; the same grant made
		// the proper way is.
		stranger := strangerOf(t, g, f)
		for name, p := range ports {
			i := installed.Index[name]
			k := maps.GrantKey(stranger, i)
			if hinted, err := g.maps.Hinted(k); err != nil || hinted {
				t.Fatalf("a stranger's %s hinted: %v (%v)", name, hinted, err)
			}
			if err := g.objs.Grants.Update(k, bpf.KnockgateGrant{ExpiresNs: g.boot() + uint64(time.Hour)}, ebpf.UpdateNoExist); err != nil {
				t.Fatal(err)
			}
			g.expect(fmt.Sprintf("a grant of %s behind the hints' back", name), f.knock(stranger, p), xdpDrop, "dropped_protected")
			if err := g.objs.Grants.Delete(k); err != nil {
				t.Fatal(err)
			}
			if err := g.maps.Grant(stranger, name, g.boot()+uint64(time.Hour)); err != nil {
				t.Fatal(err)
			}
			g.expect(fmt.Sprintf("a grant of %s made the proper way", name), f.knock(stranger, p), xdpPass, "passed_granted")
			if _, err := g.maps.Revoke(stranger, name); err != nil {
				t.Fatal(err)
			}
			if _, err := g.maps.RebuildHints(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// strangerOf is a source none of whose (source, service) hints the grants
// of g set.
func strangerOf(t *testing.T, g *gate, f family) netip.Addr {
	t.Helper()
	for n := 1000; n < 2000; n++ {
		a := f.source(n)
		free := true
		for i := range maps.MaxServices {
			hinted, err := g.maps.Hinted(maps.GrantKey(a, i))
			if err != nil {
				t.Fatal(err)
			}
			free = free && !hinted
		}
		if free {
			return a
		}
	}
	t.Fatal("no stranger clear of every grant's hint bits")
	return netip.Addr{}
}
