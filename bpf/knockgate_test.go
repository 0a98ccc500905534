package bpf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// XDP verdicts (enum xdp_action).
const (
	xdpDrop = 1
	xdpPass = 2
)

// testSources sizes the knock and grant maps: the tests track a handful of
// sources, and a small map keeps each load cheap.
const testSources = 1024

func tcp(n uint16) maps.Port { return maps.Port{Num: n, Proto: maps.TCP} }
func udp(n uint16) maps.Port { return maps.Port{Num: n, Proto: maps.UDP} }

// The default gate: a three-step TCP sequence guarding ssh and mDNS.
var (
	seq       = []maps.Port{tcp(7000), tcp(8000), tcp(9000)}
	ssh       = tcp(22)
	mdns      = udp(5353)
	unrelated = tcp(443)
)

// conf is a gate's configuration as these tests write it: the service
// default's settings flat beside the gate's, other services beside, and
// what the write of it installed (Generation, TAIOffset, SlotKey).
type conf struct {
	Sequence    []maps.Port
	StepTimeout time.Duration
	Open        time.Duration
	Protected   []maps.Port
	ProtectAll  bool
	Flows       bool
	FlowIdleTCP time.Duration
	FlowIdleUDP time.Duration
	SPAPort     uint16
	SPAWindow   time.Duration
	Allow       []netip.Prefix
	Services    []policy.Service // beside default
	ConfirmBy   uint64
	SlotKey     [2]uint64
	Generation  uint32
	TAIOffset   time.Duration
}

// config is c as the maps take it.
func (c conf) config() maps.Config {
	return maps.Config{
		Policy: policy.Policy{
			Services: append([]policy.Service{{Name: policy.DefaultService, Sequence: c.Sequence, StepTimeout: c.StepTimeout,
				Open: c.Open, Protect: c.Protected, ProtectAll: c.ProtectAll}}, c.Services...),
			Allow: c.Allow, Flows: c.Flows, FlowIdleTCP: c.FlowIdleTCP, FlowIdleUDP: c.FlowIdleUDP,
			SPAPort: c.SPAPort, SPAWindow: c.SPAWindow,
		},
		ConfirmBy: c.ConfirmBy,
		SlotKey:   c.SlotKey,
	}
}

func defaultConfig() conf {
	return conf{
		Sequence:    seq,
		StepTimeout: 10 * time.Second,
		Open:        30 * time.Second,
		Protected:   []maps.Port{ssh, mdns},
	}
}

// family is one address family's cast: two sources, the gate's address, and
// an allow-listed prefix with an address inside it.
type family struct {
	name       string
	src, other netip.Addr
	dst        netip.Addr
	allow      netip.Prefix
	allowed    netip.Addr
}

var families = []family{
	{
		name:  "ipv4",
		src:   netip.MustParseAddr("192.0.2.10"),
		other: netip.MustParseAddr("192.0.2.11"),
		dst:   netip.MustParseAddr("198.51.100.1"),
		allow: netip.MustParsePrefix("203.0.113.0/24"), allowed: netip.MustParseAddr("203.0.113.7"),
	},
	{
		name:  "ipv6",
		src:   netip.MustParseAddr("2001:db8:1::10"),
		other: netip.MustParseAddr("2001:db8:1::11"),
		dst:   netip.MustParseAddr("2001:db8:2::1"),
		allow: netip.MustParsePrefix("2001:db8:a11::/48"), allowed: netip.MustParseAddr("2001:db8:a11::7"),
	},
}

// forFamilies runs fn once per address family.
func forFamilies(t *testing.T, fn func(t *testing.T, f family)) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) { fn(t, f) })
	}
}

// frame describes a packet from src to port p of the gate: a bare SYN for
// TCP (a knock, when p is a step), a datagram for UDP.
func (f family) frame(src netip.Addr, p maps.Port) packet.Frame {
	if p.Proto == maps.UDP {
		return packet.UDP(src, f.dst, 40000, p.Num)
	}
	return packet.TCP(src, f.dst, 40000, p.Num, packet.SYN)
}

// knock is the frame for p from src.
func (f family) knock(src netip.Addr, p maps.Port) []byte { return f.frame(src, p).Bytes() }

// tcp is a TCP segment from src to port with flags.
func (f family) tcp(src netip.Addr, port uint16, flags uint8) []byte {
	return packet.TCP(src, f.dst, 40000, port, flags).Bytes()
}

// gate is one loaded, unattached program with its maps and an events reader.
type gate struct {
	t    *testing.T
	objs *loader.Objects
	maps *maps.Set
	cfg  conf // as installed, with its generation
	rd   *ringbuf.Reader
	// allow is the allow list every configuration the test writes keeps.
	allow []netip.Prefix
}

// newGate loads the program and installs cfg (unless it has no sequence:
// then the program runs with the empty configuration it loads with).
func newGate(t *testing.T, cfg conf, allow ...netip.Prefix) *gate {
	t.Helper()
	return newGateTuned(t, loader.Tuning{}, cfg, allow...)
}

// newGateTuned is newGate with load-time constants: TestClock gives the
// test a clock of its own (setClock), so that nothing it checks races the
// wall clock.
func newGateTuned(t *testing.T, tuning loader.Tuning, cfg conf, allow ...netip.Prefix) *gate {
	t.Helper()
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: testSources}, tuning)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	g := &gate{t: t, objs: objs, maps: maps.FromObjects(&objs.KnockgateMaps), allow: allow}
	if len(cfg.Sequence) > 0 {
		g.configure(cfg)
	}
	if g.rd, err = ringbuf.NewReader(objs.Events); err != nil {
		t.Fatalf("open event ring buffer: %v", err)
	}
	t.Cleanup(func() { g.rd.Close() })
	return g
}

// configure writes cfg (with the gate's allow list unless it has one) and
// records what was installed.
func (g *gate) configure(cfg conf) {
	g.t.Helper()
	if cfg.Allow == nil {
		cfg.Allow = g.allow
	}
	installed, err := g.maps.WriteConfig(cfg.config())
	if err != nil {
		g.t.Fatal(err)
	}
	cfg.Generation, cfg.TAIOffset, cfg.SlotKey = installed.Generation, installed.TAIOffset, installed.SlotKey
	g.cfg = cfg
}

// setClock sets the clocks of a gate loaded with TestClock: its Unix time
// (what SPA timestamps are judged by) to unix under the installed
// configuration's TAI offset, and its boot and coarse clocks to now. They
// stay there until the next setClock.
func (g *gate) setClock(unix time.Time) {
	g.t.Helper()
	boot := maps.BootNow()
	for _, v := range []struct {
		v   *ebpf.Variable
		val uint64
	}{{g.objs.TestBootNs, boot}, {g.objs.TestCoarseNs, boot}, {g.objs.TestTaiNs, uint64(unix.UnixNano() + int64(g.cfg.TAIOffset))}} {
		if err := v.v.Set(v.val); err != nil {
			g.t.Fatalf("set the test clock: %v", err)
		}
	}
}

func (g *gate) counters() maps.Counters {
	g.t.Helper()
	c, err := g.maps.ReadCounters()
	if err != nil {
		g.t.Fatal(err)
	}
	return c
}

// run runs frame through the program once.
func (g *gate) run(frame []byte) uint32 {
	g.t.Helper()
	v, err := g.objs.Knockgate.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		g.t.Fatalf("run program: %v", err)
	}
	return v
}

func verdictName(v uint32) string {
	switch v {
	case xdpDrop:
		return "XDP_DROP"
	case xdpPass:
		return "XDP_PASS"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// expect runs frame and checks its verdict and that it bumped exactly the
// named counters (a name given twice: by two), nothing else.
func (g *gate) expect(what string, frame []byte, verdict uint32, counters ...string) {
	g.t.Helper()
	before := g.counters()
	got := g.run(frame)
	after := g.counters()
	if got != verdict {
		g.t.Errorf("%s: %s, want %s", what, verdictName(got), verdictName(verdict))
	}
	g.counted(what, before, after, counters...)
}

// counted checks that from before to after exactly the named counters went
// up (a name given twice: by two), nothing else.
func (g *gate) counted(what string, before, after maps.Counters, counters ...string) {
	g.t.Helper()
	want := map[string]uint64{}
	for _, c := range counters {
		want[c]++
	}
	var diffs []string
	for i, name := range maps.CounterNames {
		if d := after[i] - before[i]; d != want[name] {
			diffs = append(diffs, fmt.Sprintf("%s +%d (want +%d)", name, d, want[name]))
		}
	}
	if len(diffs) > 0 {
		g.t.Errorf("%s: counters: %s", what, strings.Join(diffs, ", "))
	}
}

func (g *gate) progress(addr netip.Addr) (bpf.KnockgateKnockSlot, bool) {
	g.t.Helper()
	p, ok, err := g.maps.LookupKnock(addr)
	if err != nil {
		g.t.Fatal(err)
	}
	return p, ok
}

func (g *gate) grant(addr netip.Addr) (bpf.KnockgateGrant, bool) {
	g.t.Helper()
	gr, ok, err := g.maps.LookupGrant(addr, "default")
	if err != nil {
		g.t.Fatal(err)
	}
	return gr, ok
}

// noProgress checks addr has no knock progress entry at all.
func (g *gate) noProgress(what string, addr netip.Addr) {
	g.t.Helper()
	if p, ok := g.progress(addr); ok {
		g.t.Errorf("%s: %s has progress %+v, want none", what, addr, p)
	}
}

// noGrant checks addr has no grant entry at all.
func (g *gate) noGrant(what string, addr netip.Addr) {
	g.t.Helper()
	if gr, ok := g.grant(addr); ok {
		g.t.Errorf("%s: %s has a grant until %d, want none", what, addr, gr.ExpiresNs)
	}
}

// event is a ring-buffer event, decoded and raw (for exact timestamps).
type event struct {
	maps.Event
	raw bpf.KnockgateEvent
}

// events drains the ring buffer without blocking.
func (g *gate) events() []event {
	g.t.Helper()
	// A deadline in the past makes Read return what is there, then
	// os.ErrDeadlineExceeded instead of waiting.
	g.rd.SetDeadline(time.Now())
	var out []event
	for {
		rec, err := g.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			g.t.Fatalf("read event: %v", err)
		}
		var ev event
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev.raw); err != nil {
			g.t.Fatalf("decode event: %v", err)
		}
		ev.Event = maps.DecodeEvent(&ev.raw)
		out = append(out, ev)
	}
}

// expectEvents drains the ring buffer and checks the events' types, in order.
func (g *gate) expectEvents(what string, types ...string) []event {
	g.t.Helper()
	evs := g.events()
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type)
	}
	if strings.Join(got, ",") != strings.Join(types, ",") {
		g.t.Errorf("%s: events %v, want %v", what, got, types)
		return nil
	}
	return evs
}

// clockSlack absorbs the difference between the program's
// bpf_ktime_get_boot_ns and our clock_gettime(CLOCK_BOOTTIME): the same
// clock read through different accessors. It is a tolerance on a bracket,
// not a timing assumption: nothing here depends on how long a run takes.
const clockSlack = uint64(time.Millisecond)

// within checks lo <= got <= hi, give or take clockSlack.
func within(t *testing.T, what string, got, lo, hi uint64) {
	t.Helper()
	if got+clockSlack < lo || got > hi+clockSlack {
		t.Errorf("%s = %d, want within [%d, %d]", what, got, lo, hi)
	}
}

// knockSteps sends steps[:n] of the sequence from src, each expected to be
// accepted, and drains the events they made.
func (g *gate) knockSteps(f family, src netip.Addr, n int) {
	g.t.Helper()
	for i := range n {
		want := []string{"dropped_knock", "knock_advanced"}
		if i == len(g.cfg.Sequence)-1 {
			want = append(want, "granted")
		}
		g.expect(fmt.Sprintf("step %d (%s)", i+1, g.cfg.Sequence[i]), f.knock(src, g.cfg.Sequence[i]), xdpDrop, want...)
	}
	g.events()
}

func TestUnconfiguredPassesEverything(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, conf{})
		g.expect("SYN to 22", f.knock(f.src, ssh), xdpPass, "passed")
		g.expect("SYN to 7000", f.knock(f.src, tcp(7000)), xdpPass, "passed")
		g.noProgress("after SYN to 7000", f.src)
		g.expectEvents("unconfigured")
	})
}

func TestProtectedPort(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig(), f.allow)

		g.expect("SYN to 22 without grant", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
		g.expect("ACK to 22 without grant", f.tcp(f.src, 22, packet.ACK), xdpDrop, "dropped_protected")
		g.expect("UDP to 5353 without grant", f.knock(f.src, mdns), xdpDrop, "dropped_protected")
		// Protection is per protocol: 22/udp and 5353/tcp are not protected.
		g.expect("UDP to 22", f.knock(f.src, udp(22)), xdpPass, "passed")
		g.expect("ACK to 5353/tcp", f.tcp(f.src, 5353, packet.ACK), xdpPass, "passed")
		g.noProgress("after unauthorised traffic", f.src)
		g.noGrant("after unauthorised traffic", f.src)

		expires := maps.BootAfter(time.Minute)
		if err := g.maps.Grant(f.src, "default", expires); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN to 22 with grant", f.knock(f.src, ssh), xdpPass, "passed_granted")
		g.expect("ACK to 22 with grant", f.tcp(f.src, 22, packet.ACK), xdpPass, "passed_granted")
		g.expect("UDP to 5353 with grant", f.knock(f.src, mdns), xdpPass, "passed_granted")
		if gr, ok := g.grant(f.src); !ok || gr.ExpiresNs != expires {
			t.Errorf("grant after use: %+v %v, want until %d", gr, ok, expires)
		}
		g.expect("SYN to 22 from another source", f.knock(f.other, ssh), xdpDrop, "dropped_protected")

		g.expect("SYN to 22 from allow-listed source", f.knock(f.allowed, ssh), xdpPass, "passed_allowed")
		g.expect("UDP to 5353 from allow-listed source", f.knock(f.allowed, mdns), xdpPass, "passed_allowed")
		g.noGrant("allow-listed source", f.allowed)
		g.expectEvents("protected port")
	})
}

func TestUnrelatedTrafficPasses(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		g.expect("SYN to 443", f.knock(f.src, unrelated), xdpPass, "passed")
		g.expect("ACK to 443", f.tcp(f.src, 443, packet.ACK), xdpPass, "passed")
		g.expect("UDP to 5000", f.knock(f.src, udp(5000)), xdpPass, "passed")
		g.expect("ICMP echo", packet.ICMP(f.src, f.dst).Bytes(), xdpPass, "passed")
		g.expect("ARP request", packet.ARP(netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.1")), xdpPass, "passed")
		// Other transports are not judged, even "to" a protected port number.
		other := packet.Frame{Src: f.src, Dst: f.dst, Proto: 132, Payload: []byte{0, 22, 0, 22}} // SCTP
		g.expect("SCTP", other.Bytes(), xdpPass, "passed")
		g.noProgress("unrelated traffic", f.src)
		g.noGrant("unrelated traffic", f.src)
		g.expectEvents("unrelated traffic")
	})
}

func TestKnockSequenceGrants(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		g := newGate(t, cfg)

		for i, step := range seq[:len(seq)-1] {
			what := fmt.Sprintf("step %d (%s)", i+1, step)
			before := maps.BootNow()
			g.expect(what, f.knock(f.src, step), xdpDrop, "dropped_knock", "knock_advanced")
			after := maps.BootNow()
			p, ok := g.progress(f.src)
			if !ok || int(p.Stage) != i+1 || p.Generation != uint16(g.cfg.Generation) {
				t.Fatalf("%s: progress %+v %v, want stage %d generation %d", what, p, ok, i+1, g.cfg.Generation)
			}
			within(t, what+": deadline", p.DeadlineNs, before+uint64(cfg.StepTimeout), after+uint64(cfg.StepTimeout))
			evs := g.expectEvents(what, "knock")
			if len(evs) == 1 {
				ev := evs[0]
				if ev.Src != f.src || ev.Port != step || ev.Stage != i+1 || ev.raw.ExpiresNs != p.DeadlineNs {
					t.Errorf("%s: event %+v, want %s %s stage %d until %d", what, ev.Event, f.src, step, i+1, p.DeadlineNs)
				}
			}
			g.noGrant(what, f.src)
			// An ACK: a SYN would be a wrong knock and reset the progress.
			g.expect(what+": 22 still closed", f.tcp(f.src, ssh.Num, packet.ACK), xdpDrop, "dropped_protected")
		}

		last := seq[len(seq)-1]
		before := maps.BootNow()
		g.expect("last step", f.knock(f.src, last), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		after := maps.BootNow()
		g.noProgress("after the last step", f.src)
		gr, ok := g.grant(f.src)
		if !ok {
			t.Fatal("last step: no grant")
		}
		within(t, "grant expiry", gr.ExpiresNs, before+uint64(cfg.Open), after+uint64(cfg.Open))
		if evs := g.expectEvents("last step", "open"); len(evs) == 1 {
			ev := evs[0]
			if ev.Src != f.src || ev.Port != last || ev.Stage != len(seq) || ev.raw.ExpiresNs != gr.ExpiresNs {
				t.Errorf("open event %+v, want %s %s stage %d until %d", ev.Event, f.src, last, len(seq), gr.ExpiresNs)
			}
		}

		g.expect("SYN to 22 after the sequence", f.knock(f.src, ssh), xdpPass, "passed_granted")
		g.expect("SYN to 22 from another source", f.knock(f.other, ssh), xdpDrop, "dropped_protected")
	})
}

func TestSingleStepSequence(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		cfg.Sequence = []maps.Port{udp(7000)}
		g := newGate(t, cfg)
		g.expect("the only step", f.knock(f.src, udp(7000)), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.noProgress("single step", f.src)
		if _, ok := g.grant(f.src); !ok {
			t.Error("single step: no grant")
		}
		g.expectEvents("single step", "open")
		g.expect("SYN to 22", f.knock(f.src, ssh), xdpPass, "passed_granted")
	})
}

func TestRetransmittedStepIgnored(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		g.knockSteps(f, f.src, 2)
		want, ok := g.progress(f.src)
		if !ok || want.Stage != 2 {
			t.Fatalf("after two steps: progress %+v %v", want, ok)
		}
		for i, step := range seq[:2] {
			what := fmt.Sprintf("retransmitted step %d", i+1)
			g.expect(what, f.knock(f.src, step), xdpDrop, "dropped_knock", "knock_repeated")
			if p, ok := g.progress(f.src); !ok || p != want {
				t.Errorf("%s: progress %+v %v, want unchanged %+v", what, p, ok, want)
			}
		}
		g.expectEvents("retransmissions")
		g.expect("last step after retransmissions", f.knock(f.src, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
	})
}

func TestWrongKnockResets(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		cases := []struct {
			what    string
			frame   []byte
			verdict uint32
			counter string // the verdict counter after the reset
		}{
			{"SYN to an unrelated port", f.knock(f.src, unrelated), xdpPass, "passed"},
			{"UDP to an unrelated port", f.knock(f.src, udp(5000)), xdpPass, "passed"},
			{"SYN to a protected port", f.knock(f.src, ssh), xdpDrop, "dropped_protected"},
			{"a later step out of order", f.knock(f.src, seq[2]), xdpDrop, "dropped_knock"},
			{"the right port with the wrong protocol", f.knock(f.src, udp(seq[1].Num)), xdpPass, "passed"},
		}
		for _, c := range cases {
			g.knockSteps(f, f.src, 1)
			g.expect(c.what, c.frame, c.verdict, c.counter, "knock_reset")
			g.noProgress(c.what, f.src)
			if evs := g.expectEvents(c.what, "reset"); len(evs) == 1 && evs[0].Stage != 1 {
				t.Errorf("%s: reset event stage %d, want 1", c.what, evs[0].Stage)
			}
			// The sequence has to start over: step 2 is now out of order.
			g.expect(c.what+": step 2 after the reset", f.knock(f.src, seq[1]), xdpDrop, "dropped_knock")
			g.noProgress(c.what+": step 2 after the reset", f.src)
		}
		g.noGrant("resets", f.src)
	})
}

func TestPortSweepCannotComplete(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		// An ordered sweep passes every step in order, but also every port
		// between them, each of which resets the progress.
		for port := uint16(1); port <= 10000; port++ {
			g.run(f.tcp(f.src, port, packet.SYN))
		}
		g.noGrant("after the sweep", f.src)
		g.noProgress("after the sweep", f.src)
		c := g.counters()
		if n := c.Counter(bpf.KnockgateCounterCOUNTER_GRANTED); n != 0 {
			t.Errorf("sweep: granted %d times", n)
		}
		if n := c.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_RESET); n != 1 {
			t.Errorf("sweep: %d resets, want 1 (7001 resets the start at 7000; 8000 and 9000 are out of order)", n)
		}
		g.expect("SYN to 22 after the sweep", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
	})
}

func TestSynWithOtherFlagsIsNotAKnock(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		flags := []struct {
			name  string
			flags uint8
		}{
			{"SYN+ACK", packet.SYN | packet.ACK},
			{"SYN+RST", packet.SYN | packet.RST},
			{"SYN+FIN", packet.SYN | packet.FIN},
			{"ACK", packet.ACK},
			{"no flags", 0},
		}
		for _, fl := range flags {
			g.expect(fl.name+" to step 1", f.tcp(f.src, seq[0].Num, fl.flags), xdpPass, "passed")
			g.noProgress(fl.name+" to step 1", f.src)
		}
		// Mid-sequence they neither advance nor reset.
		g.knockSteps(f, f.src, 1)
		want, _ := g.progress(f.src)
		for _, fl := range flags {
			g.expect(fl.name+" to step 2", f.tcp(f.src, seq[1].Num, fl.flags), xdpPass, "passed")
			g.expect(fl.name+" to 443", f.tcp(f.src, 443, fl.flags), xdpPass, "passed")
			if p, ok := g.progress(f.src); !ok || p != want {
				t.Errorf("%s mid-sequence: progress %+v %v, want unchanged %+v", fl.name, p, ok, want)
			}
		}
		g.expectEvents("non-knocks")
		// A PSH on a SYN does not disqualify it.
		g.expect("SYN+PSH to step 2", f.tcp(f.src, seq[1].Num, packet.SYN|packet.PSH), xdpDrop, "dropped_knock", "knock_advanced")
	})
}

func TestUDPSteps(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		cfg.Sequence = []maps.Port{udp(7000), tcp(8000)}
		g := newGate(t, cfg)

		g.expect("SYN to 7000/tcp", f.knock(f.src, tcp(7000)), xdpPass, "passed")
		g.noProgress("SYN to 7000/tcp", f.src)

		g.expect("UDP to 7000", f.knock(f.src, udp(7000)), xdpDrop, "dropped_knock", "knock_advanced")
		if p, ok := g.progress(f.src); !ok || p.Stage != 1 {
			t.Fatalf("after UDP to 7000: progress %+v %v", p, ok)
		}
		g.expect("UDP to 7000 again", f.knock(f.src, udp(7000)), xdpDrop, "dropped_knock", "knock_repeated")
		g.expect("SYN to 8000", f.knock(f.src, tcp(8000)), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		if _, ok := g.grant(f.src); !ok {
			t.Error("UDP then TCP: no grant")
		}
		g.expectEvents("UDP sequence", "knock", "open")

		// UDP to the TCP step's port is a wrong knock.
		g.expect("other: UDP to 7000", f.knock(f.other, udp(7000)), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("other: UDP to 8000", f.knock(f.other, udp(8000)), xdpPass, "passed", "knock_reset")
		g.noProgress("other: UDP to 8000", f.other)
		g.noGrant("other: UDP to 8000", f.other)
	})
}

func TestExpiredProgressCountsAsNone(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		g := newGate(t, cfg)
		stale := bpf.KnockgateKnockSlot{DeadlineNs: maps.BootNow() - 1, Generation: uint16(g.cfg.Generation), Stage: 2}
		if err := g.maps.PutKnock(f.src, stale); err != nil {
			t.Fatal(err)
		}
		g.expect("last step after the deadline", f.knock(f.src, seq[2]), xdpDrop, "dropped_knock")
		g.noGrant("last step after the deadline", f.src)
		// The stale progress is removed on sight (its slot freed), so the
		// source's next packets take the stranger's path.
		g.noProgress("last step after the deadline", f.src)
		// Nor does it make a reset: there is nothing to reset.
		if err := g.maps.PutKnock(f.src, stale); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN to 443 after the deadline", f.knock(f.src, unrelated), xdpPass, "passed")
		g.noProgress("SYN to 443 after the deadline", f.src)
		g.expectEvents("expired progress")

		// A first step reuses a stale entry.
		if err := g.maps.PutKnock(f.src, stale); err != nil {
			t.Fatal(err)
		}
		before := maps.BootNow()
		g.expect("step 1 after the deadline", f.knock(f.src, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		after := maps.BootNow()
		p, ok := g.progress(f.src)
		if !ok || p.Stage != 1 {
			t.Fatalf("step 1 after the deadline: progress %+v %v, want a fresh start", p, ok)
		}
		within(t, "fresh deadline", p.DeadlineNs, before+uint64(cfg.StepTimeout), after+uint64(cfg.StepTimeout))
		if p.Generation != uint16(g.cfg.Generation) {
			t.Errorf("fresh progress of generation %d, want %d", p.Generation, g.cfg.Generation)
		}
	})
}

// An expired grant stops passing, is reported once, and stays in the map
// (marked) until replaced, revoked or recycled: deleting it from the program
// could race with a renewal on another CPU.
func TestExpiredGrantReportedOnce(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		past := maps.BootNow() - uint64(time.Second)
		if err := g.maps.Grant(f.src, "default", past); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN to 22 with an expired grant", f.knock(f.src, ssh), xdpDrop, "dropped_protected", "grant_expired")
		if gr, ok := g.grant(f.src); !ok || gr.ExpiresNs != past || gr.ExpiryReported != 1 {
			t.Errorf("expired grant: %+v %v, want it kept, marked reported", gr, ok)
		}
		if evs := g.expectEvents("expired grant", "expire"); len(evs) == 1 {
			if ev := evs[0]; ev.Src != f.src || ev.raw.ExpiresNs != past || ev.Port != ssh {
				t.Errorf("expire event %+v (expires %d), want %s %s expires %d", ev.Event, ev.raw.ExpiresNs, f.src, ssh, past)
			}
		}
		g.expect("SYN to 22 again", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
		g.expectEvents("after the report")

		// An expired grant does not block a new sequence either.
		if err := g.maps.Grant(f.src, "default", past); err != nil {
			t.Fatal(err)
		}
		g.expect("step 1 with an expired grant", f.knock(f.src, seq[0]), xdpDrop, "dropped_knock", "knock_advanced", "grant_expired")
		g.expectEvents("step 1 with an expired grant", "expire", "knock")
		for _, step := range seq[1:] {
			g.run(f.knock(f.src, step))
		}
		if gr, ok := g.grant(f.src); !ok || gr.ExpiresNs <= maps.BootNow() || gr.ExpiryReported != 0 {
			t.Errorf("renewed grant: %+v %v, want a live, unreported one", gr, ok)
		}
	})
}

func TestNewGenerationVoidsProgressKeepsGrants(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		g := newGate(t, cfg)
		g.knockSteps(f, f.src, 2)
		expires := maps.BootAfter(time.Hour)
		if err := g.maps.Grant(f.other, "default", expires); err != nil {
			t.Fatal(err)
		}
		old := g.cfg.Generation
		g.configure(cfg)
		if g.cfg.Generation == old {
			t.Fatalf("generation still %d after WriteConfig", old)
		}

		g.expect("last step under a new generation", f.knock(f.src, seq[2]), xdpDrop, "dropped_knock")
		g.noGrant("last step under a new generation", f.src)
		g.expect("granted source under a new generation", f.knock(f.other, ssh), xdpPass, "passed_granted")
		if gr, ok := g.grant(f.other); !ok || gr.ExpiresNs != expires {
			t.Errorf("grant after WriteConfig: %+v %v, want until %d", gr, ok, expires)
		}

		// The void progress is simply replaced by a new start.
		g.expect("step 1 under a new generation", f.knock(f.src, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		if p, ok := g.progress(f.src); !ok || p.Stage != 1 || p.Generation != uint16(g.cfg.Generation) {
			t.Errorf("progress %+v %v, want stage 1 of generation %d", p, ok, g.cfg.Generation)
		}
	})
}

func TestKnocksFromGrantedSource(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		g.knockSteps(f, f.src, len(seq))
		want, ok := g.grant(f.src)
		if !ok {
			t.Fatal("sequence did not grant")
		}
		for _, step := range seq {
			counters := []string{"dropped_knock"}
			if step == seq[0] {
				counters = append(counters, "knock_while_granted")
			}
			g.expect("granted source knocks "+step.String(), f.knock(f.src, step), xdpDrop, counters...)
		}
		g.expect("granted source SYN to 443", f.knock(f.src, unrelated), xdpPass, "passed")
		g.noProgress("granted source knocking", f.src)
		if gr, ok := g.grant(f.src); !ok || gr != want {
			t.Errorf("grant after knocks: %+v %v, want unchanged %+v", gr, ok, want)
		}
		g.expectEvents("knocks while granted")
		g.expect("SYN to 22", f.knock(f.src, ssh), xdpPass, "passed_granted")

		// A sequence completed while a longer grant is held does not
		// shorten it.
		long := maps.BootAfter(time.Hour)
		g.knockSteps(f, f.other, 2)
		if err := g.maps.Grant(f.other, "default", long); err != nil {
			t.Fatal(err)
		}
		g.expect("last step while holding a longer grant", f.knock(f.other, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		if gr, ok := g.grant(f.other); !ok || gr.ExpiresNs != long {
			t.Errorf("grant after completing: %+v %v, want the longer %d", gr, ok, long)
		}
	})
}

func TestVLAN(t *testing.T) {
	netns.Require(t)
	tags := []struct {
		name  string
		vlans []packet.VLAN
	}{
		{"single", []packet.VLAN{{TPID: packet.EtherTypeVLAN, ID: 100}}},
		{"double", []packet.VLAN{{TPID: packet.EtherTypeQinQ, ID: 100}, {TPID: packet.EtherTypeVLAN, ID: 200}}},
	}
	forFamilies(t, func(t *testing.T, f family) {
		for _, tag := range tags {
			t.Run(tag.name, func(t *testing.T) {
				g := newGate(t, defaultConfig())
				tagged := func(fr packet.Frame) []byte {
					fr.VLANs = tag.vlans
					return fr.Bytes()
				}
				g.expect("tagged SYN to 22", tagged(f.frame(f.src, ssh)), xdpDrop, "dropped_protected")
				for i, step := range seq {
					counters := []string{"dropped_knock", "knock_advanced"}
					if i == len(seq)-1 {
						counters = append(counters, "granted")
					}
					g.expect("tagged step "+step.String(), tagged(f.frame(f.src, step)), xdpDrop, counters...)
				}
				if _, ok := g.grant(f.src); !ok {
					t.Error("tagged sequence did not grant")
				}
				g.expect("tagged SYN to 22 after the sequence", tagged(f.frame(f.src, ssh)), xdpPass, "passed_granted")
				g.expect("tagged SYN to 22 from another source", tagged(f.frame(f.other, ssh)), xdpDrop, "dropped_protected")
				// A frame cut inside its tags cannot be judged.
				cut := packet.Truncate(tagged(f.frame(f.src, ssh)), 14+4*len(tag.vlans)-2)
				g.expect("frame cut inside its tags", cut, xdpDrop, "dropped_malformed")
			})
		}
		// Beyond two tags the ports are out of sight: nested VLAN devices
		// could still deliver the frame, so it must not pass unjudged.
		t.Run("triple", func(t *testing.T) {
			g := newGate(t, defaultConfig())
			fr := f.frame(f.src, ssh)
			fr.VLANs = []packet.VLAN{{TPID: packet.EtherTypeQinQ, ID: 1}, {TPID: packet.EtherTypeVLAN, ID: 2}, {TPID: packet.EtherTypeVLAN, ID: 3}}
			g.expect("triple-tagged SYN to 22", fr.Bytes(), xdpDrop, "dropped_malformed")
		})
	})
}

func TestIPv4Header(t *testing.T) {
	netns.Require(t)
	f := families[0]
	g := newGate(t, defaultConfig())
	withOptions := func(p maps.Port) []byte {
		fr := f.frame(f.src, p)
		fr.Options = []byte{1, 1, 0x94, 0x04, 0, 0} // NOP, NOP, Router Alert: IHL 7
		return fr.Bytes()
	}
	g.expect("SYN to 22 with IP options", withOptions(ssh), xdpDrop, "dropped_protected")
	// Ports read at the IHL offset: a knock through options is recognised.
	g.expect("step 1 with IP options", withOptions(seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
	if p, ok := g.progress(f.src); !ok || p.Stage != 1 {
		t.Errorf("step 1 with IP options: progress %+v %v", p, ok)
	}

	for _, ihl := range []int{0x1, 0x4} {
		fr := f.frame(f.other, seq[0])
		fr.IHL = ihl
		g.expect(fmt.Sprintf("IHL %d", ihl), fr.Bytes(), xdpDrop, "dropped_malformed")
	}
	long := f.frame(f.other, seq[0])
	long.IHL = 15 // 60 bytes of header: more than the 40 the frame has after Ethernet
	g.expect("IHL beyond the frame", long.Bytes(), xdpDrop, "dropped_malformed")
	g.noProgress("malformed IPv4", f.other)
}

func TestTruncated(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		syn := f.frame(f.src, seq[0])
		g.expect("TCP header cut before the flags", syn.TruncatedL4(13), xdpDrop, "dropped_malformed")
		g.expect("TCP header cut after the flags", syn.TruncatedL4(19), xdpDrop, "dropped_malformed")
		g.expect("UDP header cut", f.frame(f.src, udp(7000)).TruncatedL4(7), xdpDrop, "dropped_malformed")
		g.expect("IP header cut", packet.Truncate(syn.Bytes(), 14+8), xdpDrop, "dropped_malformed")
		g.expect("Ethernet header only", packet.Truncate(syn.Bytes(), 14), xdpDrop, "dropped_malformed")
		g.noProgress("truncated", f.src)
		// Complete headers with no payload are fine.
		g.expect("bare TCP header", syn.TruncatedL4(20), xdpDrop, "dropped_knock", "knock_advanced")
	})
}

// extChain is a SYN (or datagram) from the IPv6 source to p behind the
// extension headers ext, of varied lengths so that the walk must use each
// header's own length field.
func extChain(p maps.Port, ext ...uint8) packet.Frame {
	f := families[1]
	fr := f.frame(f.src, p)
	for i, e := range ext {
		fr.Ext = append(fr.Ext, packet.Ext{Type: e, Len: 8 * (1 + i%3)})
	}
	return fr
}

const (
	hop  = packet.ProtoHopOpts
	dopt = packet.ProtoDstOpts
	rt   = packet.ProtoRouting
	frag = packet.ProtoFragment
)

func TestIPv6ExtensionHeaders(t *testing.T) {
	netns.Require(t)
	f := families[1]
	g := newGate(t, defaultConfig())
	g.expect("SYN to 22 behind hop+dst+routing", extChain(ssh, hop, dopt, rt).Bytes(), xdpDrop, "dropped_protected")
	g.expect("step 1 behind hop+dst+routing", extChain(seq[0], hop, dopt, rt).Bytes(), xdpDrop, "dropped_knock", "knock_advanced")
	g.expect("step 2 behind dst+frag(0)+dst", extChain(seq[1], dopt, frag, dopt).Bytes(), xdpDrop, "dropped_knock", "knock_advanced")
	if p, ok := g.progress(f.src); !ok || p.Stage != 2 {
		t.Errorf("knocks behind extension headers: progress %+v %v, want stage 2", p, ok)
	}
	g.expect("SYN to 443 behind hop", extChain(unrelated, hop).Bytes(), xdpPass, "passed", "knock_reset")

	cut := extChain(ssh, hop, dopt)
	g.expect("extension header cut", packet.Truncate(cut.Bytes(), 14+40+8+1), xdpDrop, "dropped_malformed")
	g.expect("frame ends after the IPv6 header", packet.Truncate(cut.Bytes(), 14+40), xdpDrop, "dropped_malformed")
	none := packet.Frame{Src: f.src, Dst: f.dst, Proto: packet.ProtoNone}
	g.expect("no next header", none.Bytes(), xdpPass, "passed")
}

// TestIPv6ExtensionChainBound: MAX_IPV6_EXT (6) extension headers are
// walked to the transport header; a seventh is one too many, and since the
// ports behind it cannot be seen, the packet is dropped.
func TestIPv6ExtensionChainBound(t *testing.T) {
	netns.Require(t)
	g := newGate(t, defaultConfig())
	six := []uint8{hop, dopt, rt, dopt, rt, dopt}
	g.expect("SYN to 22 behind 6 headers", extChain(ssh, six...).Bytes(), xdpDrop, "dropped_protected")
	g.expect("SYN to 443 behind 6 headers", extChain(unrelated, six...).Bytes(), xdpPass, "passed")
	g.expect("SYN to 443 behind 7 headers", extChain(unrelated, append(six, dopt)...).Bytes(), xdpDrop, "dropped_malformed")
	g.expect("SYN to 443 behind 5 headers", extChain(unrelated, six[:5]...).Bytes(), xdpPass, "passed")
}

func TestFragments(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		fragment := func(p maps.Port, offset uint16) []byte {
			fr := f.frame(f.src, p)
			if f.src.Is4() {
				fr.FragOffset, fr.MoreFragments = offset, true
			} else {
				fr.Ext = []packet.Ext{{Type: packet.ProtoFragment, FragOffset: offset, MoreFragments: true}}
			}
			return fr.Bytes()
		}
		g.expect("first fragment to 22", fragment(ssh, 0), xdpDrop, "dropped_protected")
		g.expect("first fragment to 443", fragment(unrelated, 0), xdpPass, "passed")
		// A non-first fragment has no ports: what looks like a header is
		// payload, so it neither knocks nor is judged.
		g.expect("non-first fragment", fragment(ssh, 185), xdpPass, "passed")
		g.expect("non-first fragment shaped like step 1", fragment(seq[0], 185), xdpPass, "passed")
		g.noProgress("fragments", f.src)
		g.expect("first fragment of step 1", fragment(seq[0], 0), xdpDrop, "dropped_knock", "knock_advanced")
	})
}

// TestVerdictCounters checks that each verdict counter counts its own path,
// once per packet, in one table.
func TestVerdictCounters(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig(), f.allow)
		if err := g.maps.Grant(f.other, "default", maps.BootAfter(time.Minute)); err != nil {
			t.Fatal(err)
		}
		ipHdr := 14 + 20
		if f.src.Is6() {
			ipHdr = 14 + 40
		}
		cases := []struct {
			counter string
			frame   []byte
			verdict uint32
		}{
			{"passed", f.knock(f.src, unrelated), xdpPass},
			{"passed_granted", f.knock(f.other, ssh), xdpPass},
			{"passed_allowed", f.knock(f.allowed, ssh), xdpPass},
			{"dropped_protected", f.knock(f.src, ssh), xdpDrop},
			{"dropped_knock", f.knock(f.src, seq[1]), xdpDrop}, // out of order: no state change
			{"dropped_malformed", packet.Truncate(f.knock(f.src, ssh), ipHdr+4), xdpDrop},
		}
		for _, c := range cases {
			g.expect(c.counter, c.frame, c.verdict, c.counter)
		}
	})
}

// A source's hint bits must be set in the active half while it has a grant
// (or its packets would skip the lookup that finds it), whoever made it,
// through every rebuild; once no grant is left, a rebuild clears them (or
// sources that were once granted would stay on the slow path forever).
// Knock progress sets none: the knock table answers for itself.
func TestHintBitsFollowGrants(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		key := maps.GrantKey(f.src, 0)
		hinted := func(what string, want bool) {
			t.Helper()
			got, err := g.maps.Hinted(key)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: hinted %v, want %v", what, got, want)
			}
		}
		rebuild := func(what string, grants int) {
			t.Helper()
			st, err := g.maps.RebuildHints()
			if err != nil {
				t.Fatal(err)
			}
			if st.Grants != grants {
				t.Errorf("%s: rebuilt from %d grants, want %d", what, st.Grants, grants)
			}
		}
		revoke := func() {
			t.Helper()
			if _, err := g.maps.Revoke(f.src, ""); err != nil {
				t.Fatal(err)
			}
		}
		hinted("stranger", false)
		g.knockSteps(f, f.src, 1)
		hinted("knocking", false)
		g.expect("a wrong knock", f.knock(f.src, ssh), xdpDrop, "dropped_protected", "knock_reset")
		g.noProgress("after reset", f.src)
		hinted("after reset", false)
		g.events()

		// Made by the program; both halves: it survives each rebuild.
		g.knockSteps(f, f.src, len(seq))
		hinted("granted", true)
		for i := range 3 {
			rebuild(fmt.Sprintf("rebuild %d", i), 1)
			hinted(fmt.Sprintf("granted, rebuild %d", i), true)
			g.expect(fmt.Sprintf("SYN to 22, granted, rebuild %d", i), f.knock(f.src, ssh), xdpPass, "passed_granted")
		}
		revoke()
		hinted("revoked: stale until a rebuild", true)
		g.expect("SYN to 22, revoked, bits stale", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
		rebuild("after the revoke", 0)
		hinted("revoked, rebuilt", false)
		g.expect("SYN to 22, revoked, rebuilt", f.knock(f.src, ssh), xdpDrop, "dropped_protected")

		// Made by Go, replaced; an expired grant stays in the map, and so
		// do its bits (the program reports its expiry on the next packet).
		for range 2 {
			if err := g.maps.Grant(f.src, "default", maps.BootNow()-1); err != nil {
				t.Fatal(err)
			}
		}
		hinted("granted from Go", true)
		rebuild("an expired grant", 1)
		hinted("expired grant, rebuilt", true)
		g.expect("SYN to 22, grant expired", f.knock(f.src, ssh), xdpDrop, "dropped_protected", "grant_expired")
		revoke()
		rebuild("after the expired grant's revoke", 0)
		hinted("expired grant revoked, rebuilt", false)
		g.expectEvents("expired grant", "expire")

		// Granted in the half that became inactive: after the next flip
		// it is still there.
		if err := g.maps.Grant(f.src, "default", maps.BootAfter(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		if err := g.maps.Grant(f.src, "default", maps.BootAfter(time.Hour)); err != nil {
			t.Fatal(err)
		}
		rebuild("granted again", 1)
		g.expect("SYN to 22, granted again, rebuilt", f.knock(f.src, ssh), xdpPass, "passed_granted")
	})
}

// Rebuilds of the hint bits while the program makes grants on other CPUs
// lose none of them: put_grant sets a grant's bits, makes its entry and
// sets them again; RebuildHints clears the inactive half, walks the grants
// and flips. Grants are made by a one-step sequence from four goroutines
// (BPF_PROG_TEST_RUN runs each on its own CPU's thread) while rebuilds run
// back to back; then every grant's bits are set in the active half, and
// every granted source's SYN passes, after one more rebuild too. (The
// narrowest moment, a whole rebuild between a grant's bits and its entry,
// rarely comes up here: maps' TestHintRebuildBetweenBitsAndEntry plays it
// out.)
func TestHintRebuildRacesGrants(t *testing.T) {
	netns.Require(t)
	f := families[0]
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: 1 << 15}, loader.Tuning{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	g := &gate{t: t, objs: objs, maps: maps.FromObjects(&objs.KnockgateMaps)}
	cfg := defaultConfig()
	cfg.Sequence = seq[:1] // a knock is a grant
	g.configure(cfg)
	// Flips back to back: no packet reads the hints while they run (the
	// grace period only guards a reader of the half a rebuild clears).
	g.maps.NoGraceWait = true

	const workers, each = 4, 4000
	stop := make(chan struct{})
	rebuilt := make(chan error, 1)
	rebuilds := 0
	go func() {
		for {
			select {
			case <-stop:
				rebuilt <- nil
				return
			default:
			}
			if _, err := g.maps.RebuildHints(); err != nil {
				rebuilt <- err
				return
			}
			rebuilds++
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				v, err := objs.Knockgate.Run(&ebpf.RunOptions{Data: f.knock(f.source(w*each+i), seq[0])})
				if err != nil || v != xdpDrop {
					errs <- fmt.Errorf("knock %d of worker %d: %s, %v", i, w, verdictName(v), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-rebuilt; err != nil {
		t.Fatal(err)
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d grants made during %d rebuilds", workers*each, rebuilds)
	check := func(when string) {
		t.Helper()
		missing := 0
		for n := range workers * each {
			src := f.source(n)
			if _, ok, err := g.maps.LookupGrant(src, policy.DefaultService); err != nil || !ok {
				t.Fatalf("%s: no grant of %s (%v)", when, src, err)
			}
			hinted, err := g.maps.Hinted(maps.GrantKey(src, 0))
			if err != nil {
				t.Fatal(err)
			}
			if !hinted || g.run(f.knock(src, ssh)) != xdpPass {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d granted sources not hinted, or their SYN to 22 dropped", when, missing, workers*each)
		}
	}
	check("after the rebuilds")
	if _, err := g.maps.RebuildHints(); err != nil {
		t.Fatal(err)
	}
	check("after one more")
}

// Bytes after the IP packet (Ethernet padding, or bytes an attacker on the
// link appends) are not part of it: ports or flags read from them would
// judge a packet the kernel never sees. Padding alone changes nothing.
func TestBytesAfterThePacket(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		padded := func(b []byte) []byte { return append(b, make([]byte, 6)...) }
		g.expect("padded SYN to 22", padded(f.knock(f.src, ssh)), xdpDrop, "dropped_protected")
		g.expect("padded ACK to 443", padded(f.tcp(f.src, 443, packet.ACK)), xdpPass, "passed")
		g.expect("padded step 1", padded(f.knock(f.src, seq[0])), xdpDrop, "dropped_knock", "knock_advanced")

		// The IP length says the packet ends 8 bytes into TCP (ports, no
		// flags: a tiny first fragment); the frame goes on with a whole
		// SYN header.
		syn := f.frame(f.other, seq[0])
		b := syn.Bytes()
		l3 := syn.L4Offset() - 14 // IP header length (no VLAN tags)
		if f.src.Is4() {
			binary.BigEndian.PutUint16(b[14+2:], uint16(l3+8))
		} else {
			binary.BigEndian.PutUint16(b[14+4:], uint16(l3-40+8))
		}
		g.expect("flags only in the bytes after the packet", b, xdpDrop, "dropped_malformed")
		g.noProgress("flags only in the bytes after the packet", f.other)

		// The IP length claims more than the frame holds.
		b = syn.Bytes()
		if f.src.Is4() {
			binary.BigEndian.PutUint16(b[14+2:], uint16(len(b)-14+1))
		} else {
			binary.BigEndian.PutUint16(b[14+4:], uint16(len(b)-14-40+1))
		}
		g.expect("IP length beyond the frame", b, xdpDrop, "dropped_malformed")

		// A length of 0 is how GRO marks an aggregate over 64 KiB (BIG TCP,
		// seen in generic mode), and IPv6 a jumbogram: judged within the
		// frame, like any other packet.
		zeroLen := func(b []byte) []byte {
			if f.src.Is4() {
				binary.BigEndian.PutUint16(b[14+2:], 0)
			} else {
				binary.BigEndian.PutUint16(b[14+4:], 0)
			}
			return b
		}
		g.expect("length 0, ACK to 443", zeroLen(f.tcp(f.other, 443, packet.ACK)), xdpPass, "passed")
		g.expect("length 0, SYN to 22", zeroLen(f.knock(f.other, ssh)), xdpDrop, "dropped_protected")
	})
}

// An IPv6 packet from a v4-mapped address would use the grant of the IPv4
// address it maps.
func TestV4MappedIPv6SourceDropped(t *testing.T) {
	netns.Require(t)
	f := families[1]
	g := newGate(t, defaultConfig())
	v4 := families[0].src
	if err := g.maps.Grant(v4, "default", maps.BootAfter(time.Hour)); err != nil {
		t.Fatal(err)
	}
	mapped := netip.AddrFrom16(v4.As16())
	g.expect("IPv6 SYN to 22 from the granted IPv4 address, v4-mapped", f.knock(mapped, ssh), xdpDrop, "dropped_malformed")
}
