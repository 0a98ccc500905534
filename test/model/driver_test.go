package model_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/model"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// The differential driver: one random scenario through the model and
// through the real program (BPF_PROG_TEST_RUN, on a clock of the test's
// own), compared after every step. Small tables (a few sets) so that
// sources collide, sequences complete and flows fill their sets.
const (
	// knock table: 480 slots in 120 sets (six of the pool's sources share
	// one); grants: 160 entries, room for every (source, service) of the
	// pool, 14 x 5, and the LRU's per-CPU free target (a quarter of it
	// with 2 CPUs) beside, so that no grant is ever evicted.
	maxSources = 160
	maxFlows   = 16 // 4 sets
	burst      = 3  // knock/reset events at once
	spaPort    = 62201
)

var (
	gate4 = netip.MustParseAddr("198.51.100.1")
	gate6 = netip.MustParseAddr("2001:db8:2::1")
)

// step is one thing that happens: data, so a failing run can be printed
// and replayed.
type step struct {
	Kind    string        // in, out, time, set, grant, revoke, keys, fwknop-keys, fwknop-grant
	Frame   []byte        // in, out
	What    string        // a description of the frame
	D       time.Duration // time: how far the clocks move; grant, fwknop-grant: for how long
	Addr    netip.Addr    // grant, revoke, fwknop-grant
	Service string        // grant, revoke ("": every service)
	Cfg     maps.Config   // set
	Keys    []int         // keys, fwknop-keys: indexes into the scenario's keys
	// fwknop-grant: the stanza, the services with their ports, and
	// whether run read a configuration older than the one in force.
	Stanza uint32
	Grants []fwknopGrantOf
	Stale  bool
	Until  time.Time // fwknop-fleet: until when the fleet keeps the datagram (in Frame)
}

func (s step) String() string {
	switch s.Kind {
	case "in", "out":
		return fmt.Sprintf("%s %s (%x)", s.Kind, s.What, s.Frame)
	case "time":
		return "time +" + s.D.String()
	case "set":
		return "set " + describe(&s.Cfg.Policy)
	case "grant":
		return fmt.Sprintf("grant %s %s for %s", s.Addr, s.Service, s.D)
	case "revoke":
		return fmt.Sprintf("revoke %s %q", s.Addr, s.Service)
	case "keys", "fwknop-keys":
		return fmt.Sprintf("%s %v", s.Kind, s.Keys)
	case "fwknop-fleet":
		return fmt.Sprintf("fwknop-fleet %q until %d", s.Frame, s.Until.Unix())
	case "fwknop-grant":
		return fmt.Sprintf("fwknop-grant %s stanza %d for %s %+v stale %v", s.Addr, s.Stanza, s.D, s.Grants, s.Stale)
	}
	return s.Kind
}

// describe is p in a line: what a failing run prints of a configuration.
func describe(p *policy.Policy) string {
	var b strings.Builder
	fmt.Fprintf(&b, "allow %v flows %v (%s/%s) spa %d window %s;", p.Allow, p.Flows, p.FlowIdleTCP, p.FlowIdleUDP, p.SPAPort, p.SPAWindow)
	for _, s := range p.Services {
		protect := policy.FormatPorts(s.Protect)
		if s.ProtectAll {
			protect = "all"
		}
		fmt.Fprintf(&b, " [%s seq %s step %s open %s protect %s allow %v]", s.Name, policy.FormatSequence(s.Sequence),
			s.StepTimeout, s.Open, protect, s.Allow)
	}
	return b.String()
}

// scenario is what a seed makes: the pool of sources, the keys, the slot
// key, and the steps.
type scenario struct {
	slotKey [2]uint64
	pool    []netip.Addr
	keys    []spa.Key
	fwknop  []fwknopKey
	allow   netip.Prefix
	steps   []step
}

// gen makes random steps.
type gen struct {
	r    *rand.Rand
	sc   *scenario
	tai  uint64         // the clock, as the generator tracks it (for SPA stamps)
	cfg  policy.Policy  // the last configuration made
	sent []packet.Frame // the last frames the gate sent: replies answer them
	// knocking is each source's way through a sequence as the generator
	// sent it (the gate may see it otherwise: a step of another, an
	// eviction), so that sequences of several steps complete often.
	knocking map[netip.Addr]knocking
	// opened are sources the generator granted something, or sent what
	// may have: probes come from them half the time.
	opened []netip.Addr
	// fwknopSent are the last fwknop datagrams sent that a key of the
	// gate's may have verified: replays are made of them.
	fwknopSent [][]byte
	// pending are steps to come next (run's grant after a datagram).
	pending []step
}

type knocking struct {
	seq  []maps.Port
	next int
}

// open records that src may hold a grant now.
func (g *gen) open(src netip.Addr) {
	if g.opened = append(g.opened, src); len(g.opened) > 6 {
		g.opened = g.opened[1:]
	}
}

func newScenario(seed uint64, n int) *scenario {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	sc := &scenario{slotKey: [2]uint64{r.Uint64(), r.Uint64()}}
	// Six IPv4 sources that share one knock set (so first knocks evict),
	// four more IPv4 and four IPv6 anywhere.
	slots := loader.KnockSlots(maxSources)
	first, _ := maps.KnockPlace(sc.slotKey, slots, netip.AddrFrom4([4]byte{192, 0, 2, 1}))
	for i := 1; len(sc.pool) < 6 && i < 65536; i++ {
		a := netip.AddrFrom4([4]byte{192, 0, byte(2 + i>>8), byte(i)})
		if s, _ := maps.KnockPlace(sc.slotKey, slots, a); s == first {
			sc.pool = append(sc.pool, a)
		}
	}
	for i := range 4 {
		sc.pool = append(sc.pool, netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}))
		sc.pool = append(sc.pool, netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", 0x10+i)))
	}
	sc.allow = netip.PrefixFrom(sc.pool[len(sc.pool)-1], 128) // one IPv6 source is allow-listed
	// Keys of every scope: default alone, one other service, several
	// (with a window of its own), any address; their services come and go
	// with the configurations.
	scopes := [][]string{nil, {"web"}, {"default", "web", "rdp"}, {"rdp", "api"}, {"mail", "default"}}
	for i, scope := range scopes {
		k := spa.Key{ID: uint32(100 + i), Name: fmt.Sprintf("k%d", i), AnyAddress: i == 3, Services: scope}
		if i == 2 {
			k.Open = 90 * time.Second
		}
		for j := range k.Secret {
			k.Secret[j] = byte(r.Uint32())
		}
		sc.keys = append(sc.keys, k)
	}
	sc.fwknop = newFwknopKeys(r)
	g := &gen{r: r, sc: sc, tai: startTAI, knocking: map[netip.Addr]knocking{}}
	cfg := g.config()
	for cfg.Policy.SPAPort == 0 || len(cfg.Policy.Default().Sequence) == 0 {
		cfg = g.config() // start with both ways in
	}
	cfg.SlotKey = sc.slotKey
	sc.steps = append(sc.steps, step{Kind: "set", Cfg: cfg}, g.keys(true), step{Kind: "fwknop-keys", Keys: r.Perm(fwknopKeys - 1)})
	for len(sc.steps) < n {
		sc.steps = append(sc.steps, g.step())
	}
	return sc
}

const (
	startBoot   = uint64(1_000_000_000_000)
	startCoarse = uint64(2_000_000_000_000)
)

var startTAI = uint64(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())

func (g *gen) pick(p []uint16) uint16 { return p[g.r.IntN(len(p))] }

func (g *gen) src() netip.Addr { return g.sc.pool[g.r.IntN(len(g.sc.pool))] }

func (g *gen) dstFor(src netip.Addr) netip.Addr {
	if src.Is4() {
		return gate4
	}
	return gate6
}

// The services beside default a configuration may have, each with the
// sequences it may take (nil: none, SPA and the operator open it): step
// ports of their own, so no two sequences share one.
var extraServices = []struct {
	name string
	seqs [][]maps.Port
}{
	{"web", [][]maps.Port{{{Num: 7100, Proto: maps.TCP}, {Num: 7101, Proto: maps.UDP}}, {{Num: 7102, Proto: maps.UDP}}, nil}},
	{"rdp", [][]maps.Port{nil, {{Num: 7200, Proto: maps.UDP}, {Num: 7201, Proto: maps.TCP}, {Num: 7202, Proto: maps.TCP}}}},
	{"api", [][]maps.Port{{{Num: 7300, Proto: maps.TCP}}, {{Num: 7301, Proto: maps.TCP}, {Num: 7302, Proto: maps.TCP}}, nil}},
	{"mail", [][]maps.Port{nil, {{Num: 7400, Proto: maps.UDP}, {Num: 7401, Proto: maps.UDP}}}},
}

// protectable are the ports services protect: each at most one service.
var protectable = []maps.Port{{Num: 22, Proto: maps.TCP}, {Num: 53, Proto: maps.UDP}, {Num: 443, Proto: maps.TCP},
	{Num: 8443, Proto: maps.TCP}, {Num: 3389, Proto: maps.TCP}, {Num: 25, Proto: maps.TCP}, {Num: 5353, Proto: maps.UDP},
	{Num: 80, Proto: maps.TCP}}

// config is a random configuration of the kinds the rules tell apart:
// default as before (a sequence or none, some ports or all), and 0-4 other
// services in a random order (so they take indices in any order), each with
// a sequence or none, ports of its own, all (when default does not), or
// none, and an allow list of its own or not.
func (g *gen) config() maps.Config {
	r := g.r
	seqs := [][]maps.Port{
		{{Num: 9000, Proto: maps.TCP}, {Num: 8000, Proto: maps.TCP}},
		{{Num: 7000, Proto: maps.TCP}, {Num: 8000, Proto: maps.UDP}, {Num: 9000, Proto: maps.TCP}},
		{{Num: 9001, Proto: maps.UDP}},
		nil,
	}
	d := policy.Service{
		Name:        policy.DefaultService,
		Sequence:    seqs[r.IntN(len(seqs))],
		StepTimeout: time.Duration(1+r.IntN(20)) * time.Second,
		Open:        time.Duration(5+r.IntN(120)) * time.Second,
	}
	p := policy.Policy{
		Allow:       []netip.Prefix{g.sc.allow},
		Flows:       r.IntN(4) != 0,
		FlowIdleTCP: time.Duration(30+r.IntN(300)) * time.Second,
		FlowIdleUDP: time.Duration(5+r.IntN(60)) * time.Second,
		SPAWindow:   time.Duration(1+r.IntN(30)) * time.Second,
	}
	free := slices.Clone(protectable)
	take := func(n int) []maps.Port {
		var out []maps.Port
		for range n {
			if len(free) == 0 {
				break
			}
			i := r.IntN(len(free))
			out = append(out, free[i])
			free = slices.Delete(free, i, i+1)
		}
		return out
	}
	all := false
	switch r.IntN(4) {
	case 0:
		d.ProtectAll, all = true, true
	case 1:
		d.Protect = []maps.Port{{Num: 22, Proto: maps.TCP}, {Num: 53, Proto: maps.UDP}}
	default:
		d.Protect = []maps.Port{{Num: 22, Proto: maps.TCP}, {Num: 443, Proto: maps.TCP}}
	}
	free = slices.DeleteFunc(free, func(q maps.Port) bool { return slices.Contains(d.Protect, q) })
	if r.IntN(6) == 0 {
		d.Allow = []netip.Prefix{g.allowOf()}
	}
	p.Services = []policy.Service{d}
	noSeq := len(d.Sequence) == 0
	for _, i := range r.Perm(len(extraServices))[:r.IntN(len(extraServices)+1)] {
		x := extraServices[i]
		s := policy.Service{
			Name:        x.name,
			Sequence:    x.seqs[r.IntN(len(x.seqs))],
			StepTimeout: time.Duration(1+r.IntN(20)) * time.Second,
			Open:        time.Duration(5+r.IntN(300)) * time.Second,
		}
		switch n := r.IntN(6); {
		case n == 0 && !all:
			s.ProtectAll, all = true, true
		case n == 1:
			// no port of its own (the operator's grants, its allow list)
		default:
			s.Protect = take(1 + r.IntN(2))
		}
		if r.IntN(3) == 0 {
			s.Allow = []netip.Prefix{g.allowOf()}
		}
		noSeq = noSeq || len(s.Sequence) == 0
		p.Services = append(p.Services, s)
	}
	if r.IntN(3) != 0 || noSeq {
		p.SPAPort = spaPort
	}
	g.cfg = p.Clone()
	return maps.FromPolicy(&p)
}

// allowOf is an allow list entry of some of the pool: one source, or the
// four IPv4 sources outside the shared knock set.
func (g *gen) allowOf() netip.Prefix {
	if g.r.IntN(3) == 0 {
		return netip.MustParsePrefix("203.0.113.8/29")
	}
	a := g.src()
	return netip.PrefixFrom(a, a.BitLen())
}

// names are the services of the last configuration made.
func (g *gen) names() []string {
	var out []string
	for _, s := range g.cfg.Services {
		out = append(out, s.Name)
	}
	return out
}

// keys is a keys step: a random subset of the scenario's keys, mostly of
// those whose services the last configuration has (valid: always so),
// else any (then the gate refuses the change when one lacks a service).
func (g *gen) keys(valid bool) step {
	names := g.names()
	any := !valid && g.r.IntN(4) == 0
	var keys []int
	for i, k := range g.sc.keys {
		ok := true
		for _, s := range k.Scope() {
			ok = ok && slices.Contains(names, s)
		}
		if (ok || any) && (valid || g.r.IntN(3) != 0) {
			keys = append(keys, i)
		}
	}
	return step{Kind: "keys", Keys: keys}
}

// service is the name of a service of the last configuration made, now and
// then one it lacks.
func (g *gen) service() string {
	if g.r.IntN(20) == 0 {
		return "nosuch"
	}
	names := g.names()
	return names[g.r.IntN(len(names))]
}

func (g *gen) step() step {
	r := g.r
	if len(g.pending) > 0 {
		s := g.pending[0]
		g.pending = g.pending[1:]
		return s
	}
	switch n := r.IntN(100); {
	case n < 50:
		return g.inbound()
	case n < 65:
		return g.outbound()
	case n < 82:
		ds := []time.Duration{0, time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, time.Second,
			5 * time.Second, 11 * time.Second, 31 * time.Second, 61 * time.Second, 5 * time.Minute}
		d := ds[r.IntN(len(ds))]
		g.tai += uint64(d)
		return step{Kind: "time", D: d}
	case n < 86:
		return step{Kind: "set", Cfg: g.config()}
	case n < 90:
		s := step{Kind: "grant", Addr: g.src(), Service: g.service(), D: time.Duration(1+r.IntN(60)) * time.Second}
		g.open(s.Addr)
		return s
	case n < 95:
		s := step{Kind: "revoke", Addr: g.src()}
		if r.IntN(2) == 0 {
			s.Service = g.service()
		}
		return s
	case n < 98:
		return g.keys(false)
	case n < 99:
		return g.fwknopKeysStep()
	default:
		return g.fwknopFleet()
	}
}

// sequences are the sequences of the last configuration made.
func (g *gen) sequences() [][]maps.Port {
	var out [][]maps.Port
	for _, s := range g.cfg.Services {
		if len(s.Sequence) > 0 {
			out = append(out, s.Sequence)
		}
	}
	return out
}

// portsToProbe are the ports that matter to the last configuration made:
// what it and the others protect, its steps and the SPA port, DHCP's, and
// one nobody's.
func (g *gen) portsToProbe() []maps.Port {
	out := slices.Clone(protectable)
	for _, x := range extraServices {
		for _, sq := range x.seqs {
			out = append(out, sq...)
		}
	}
	for _, n := range []uint16{7000, 8000, 9000, 9001, 40000} {
		out = append(out, maps.Port{Num: n, Proto: maps.TCP}, maps.Port{Num: n, Proto: maps.UDP})
	}
	return append(out, maps.Port{Num: spaPort, Proto: maps.UDP}, maps.Port{Num: 68, Proto: maps.UDP}, maps.Port{Num: 546, Proto: maps.UDP})
}

var tcpFlags = []uint8{packet.SYN, packet.SYN, packet.ACK, packet.SYN | packet.ACK, packet.RST, packet.FIN | packet.ACK,
	packet.PSH | packet.ACK, packet.SYN | packet.FIN, packet.RST | packet.ACK}

// inbound is a frame from a pool source to the gate: mostly well-formed
// TCP and UDP to the ports that matter, SPA packets (valid, replayed,
// mutated, mis-stamped), ICMP errors, and mangled frames.
func (g *gen) inbound() step {
	r := g.r
	src := g.src()
	dst := g.dstFor(src)
	var f packet.Frame
	what := ""
	seqs := g.sequences()
	switch n := r.IntN(100); {
	case n < 20 && len(seqs) > 0:
		// A knock on a step of a sequence, from one of the six sources
		// that share a knock set: sequences advance, complete, repeat,
		// reset, interleave with other services' sequences, and first
		// knocks take each other's slots.
		src = g.sc.pool[r.IntN(6)]
		sq := seqs[r.IntN(len(seqs))]
		st := sq[min(r.IntN(len(sq)+1), len(sq)-1)]
		if k, ok := g.knocking[src]; ok && r.IntN(3) != 0 && k.next < len(k.seq) {
			// On through the sequence it started.
			sq, st = k.seq, k.seq[k.next]
		} else if r.IntN(2) == 0 {
			st = sq[0]
		}
		switch i := slices.Index(sq, st); {
		case i == len(sq)-1:
			delete(g.knocking, src)
			g.open(src)
		case i >= 0:
			g.knocking[src] = knocking{seq: sq, next: i + 1}
		}
		dst = g.dstFor(src)
		if st.Proto == maps.UDP {
			f = packet.UDP(src, dst, 40000, st.Num)
		} else {
			f = packet.TCP(src, dst, 40000, st.Num, packet.SYN)
		}
		what = fmt.Sprintf("knock %s > %s", src, st)
	case n < 35 && len(g.sent) > 0:
		// A reply to a frame the gate sent (a flow's inbound half).
		q := g.sent[r.IntN(len(g.sent))]
		src, dst = q.Dst, q.Src
		if q.Proto == packet.ProtoUDP {
			f = packet.UDP(src, dst, q.DstPort, q.SrcPort)
		} else {
			f = packet.TCP(src, dst, q.DstPort, q.SrcPort, tcpFlags[r.IntN(len(tcpFlags))])
		}
		what = fmt.Sprintf("reply %s:%d > %s:%d proto %d flags %#x", src, f.SrcPort, dst, f.DstPort, f.Proto, f.Flags)
	case n < 50:
		fl := tcpFlags[r.IntN(len(tcpFlags))]
		probe := g.portsToProbe()
		if len(g.opened) > 0 && r.IntN(2) == 0 {
			src = g.opened[r.IntN(len(g.opened))]
			dst = g.dstFor(src)
		}
		f = packet.TCP(src, dst, g.pick([]uint16{40000, 40001, 22, 443}), probe[r.IntN(len(probe))].Num, fl)
		what = fmt.Sprintf("tcp %s:%d > %d flags %#x", src, f.SrcPort, f.DstPort, fl)
	case n < 60:
		probe := g.portsToProbe()
		f = packet.UDP(src, dst, g.pick([]uint16{40000, 53, 67, 547}), probe[r.IntN(len(probe))].Num)
		f.Payload = []byte("knock")
		what = fmt.Sprintf("udp %s:%d > %d", src, f.SrcPort, f.DstPort)
	case n < 71:
		f = packet.UDP(src, dst, 40000, spaPort)
		f.Payload, what = g.spaPayload(src)
		g.open(src)
	case n < 80:
		f = packet.UDP(src, dst, 40000, spaPort)
		f.Payload, what = g.fwknopPayload(src)
	case n < 88:
		// An ICMP error from a pool source quoting a packet the gate sent.
		q := packet.TCP(dst, src, g.pick([]uint16{22, 443, 40000}), g.pick([]uint16{40000, 40001}), packet.SYN|packet.ACK)
		if r.IntN(2) == 0 {
			q = packet.UDP(dst, src, g.pick([]uint16{53, 40000}), 40000)
		}
		f = packet.TooBig(src, dst, q)
		what = fmt.Sprintf("icmp error quoting %s:%d > %d proto %d", dst, q.SrcPort, q.DstPort, q.Proto)
	default:
		probe := g.portsToProbe()
		f = packet.TCP(src, dst, 40000, probe[r.IntN(len(probe))].Num, packet.SYN)
		what = fmt.Sprintf("tcp syn %s > %d", src, f.DstPort)
	}
	// Shapes the parse tells apart.
	switch r.IntN(12) {
	case 0:
		f.VLANs = []packet.VLAN{{TPID: packet.EtherTypeVLAN, ID: 5}}
		what += " +vlan"
	case 1:
		f.VLANs = []packet.VLAN{{TPID: packet.EtherTypeQinQ, ID: 5}, {TPID: packet.EtherTypeVLAN, ID: 6}, {TPID: packet.EtherTypeVLAN, ID: 7}}
		what += " +3 vlans"
	case 2:
		if src.Is6() {
			for range 1 + r.IntN(7) {
				f.Ext = append(f.Ext, packet.Ext{Type: packet.ProtoDstOpts})
			}
			what += fmt.Sprintf(" +%d ext", len(f.Ext))
		}
	case 3:
		f.FragOffset, f.MoreFragments = uint16(r.IntN(2)), true
		if src.Is6() {
			f.Ext = append(f.Ext, packet.Ext{Type: packet.ProtoFragment, FragOffset: f.FragOffset, MoreFragments: true})
		}
		what += fmt.Sprintf(" +fragment %d", f.FragOffset)
	case 4:
		if src.Is4() {
			f.IHL = r.IntN(16)
			what += fmt.Sprintf(" +ihl %d", f.IHL)
		}
	}
	b := f.Bytes()
	if r.IntN(10) == 0 {
		n := 14 + r.IntN(len(b)-13) // BPF_PROG_TEST_RUN takes no runt below an Ethernet header
		b = b[:n]
		what += fmt.Sprintf(" cut to %d", n)
	} else if r.IntN(20) == 0 {
		b = append(b, make([]byte, 1+r.IntN(20))...)
		what += " +trailer"
	}
	return step{Kind: "in", Frame: b, What: what}
}

// spaPayload is an SPA payload from src: valid now, or off in one way;
// version 1 (every service of the key) or 2 (a request: within the key's
// scope, outside it, naming a service the gate lacks or none at all).
func (g *gen) spaPayload(src netip.Addr) ([]byte, string) {
	r := g.r
	k := g.sc.keys[r.IntN(len(g.sc.keys))]
	ts := int64(g.tai)/1e6 + int64(r.IntN(2001)) - 1000 // within a second of the clock
	what := fmt.Sprintf("spa key %d", k.ID)
	var open netip.Addr
	switch r.IntN(8) {
	case 0:
		ts += int64(r.IntN(120_000)) - 60_000
		what += " stamp off"
	case 1:
		open = g.src()
		what += " open " + open.String()
	case 2:
		k.ID = 999
		what += " unknown key"
	}
	p := spa.Packet{KeyID: k.ID, Time: time.UnixMilli(ts), Open: open}
	binary.LittleEndian.PutUint64(p.Nonce[:], r.Uint64())
	var words []uint32 // a request as it goes on the wire, when not made by Marshal
	if r.IntN(2) == 0 {
		var names []string
		scope := k.Scope()
		switch n := r.IntN(8); {
		case n < 4: // some of the key's services (the gate may lack some)
			for _, i := range r.Perm(len(scope))[:1+r.IntN(len(scope))] {
				names = append(names, scope[i])
			}
		case n == 4: // one outside the key's scope
			names = append(names, g.service())
			if r.IntN(2) == 0 {
				names = append(names, scope[0])
			}
		case n == 5: // one nobody has, beside one of the key's
			names = append(names, scope[r.IntN(len(scope))], "nosuch")
		case n == 6: // a service twice, and a gap before it
			words = []uint32{0, spa.ServiceHash(scope[0]), 0, spa.ServiceHash(scope[0])}
		default: // no service at all
			words = []uint32{0, 0, 0, 0}
		}
		if words == nil {
			r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			p.Request = spa.RequestOf(names[:min(len(names), spa.MaxRequest)])
			what += fmt.Sprintf(" asks %v", names)
		} else {
			p.Request = []uint32{1}
			what += fmt.Sprintf(" request words %#x", words)
		}
	}
	b := p.Marshal(k.Secret)
	if words != nil {
		for i, w := range words {
			binary.BigEndian.PutUint32(b[spa.Signed+4*i:], w)
		}
		binary.LittleEndian.PutUint64(b[spa.SignedRequest:], spa.Sum64(k.Secret, b[:spa.SignedRequest]))
	}
	switch r.IntN(10) {
	case 0:
		bit := r.IntN(len(b) * 8)
		b[bit/8] ^= 1 << (bit % 8)
		what += fmt.Sprintf(" bit %d flipped", bit)
	case 1:
		b = b[:r.IntN(len(b))]
		what += fmt.Sprintf(" %d bytes", len(b))
	}
	return b, what + fmt.Sprintf(" at %d", ts)
}

// outbound is a frame the gate sends to a pool source.
func (g *gen) outbound() step {
	r := g.r
	dst := g.src()
	src := g.dstFor(dst)
	var f packet.Frame
	if r.IntN(3) == 0 {
		f = packet.UDP(src, dst, g.pick([]uint16{53, 40000, 443}), g.pick([]uint16{40000, 40001}))
	} else {
		fl := tcpFlags[r.IntN(len(tcpFlags))]
		f = packet.TCP(src, dst, g.pick([]uint16{22, 443, 40000}), g.pick([]uint16{40000, 40001}), fl)
	}
	if g.sent = append(g.sent, f); len(g.sent) > 8 {
		g.sent = g.sent[1:]
	}
	return step{Kind: "out", Frame: f.Bytes(), What: fmt.Sprintf("%s:%d > %s:%d proto %d flags %#x", src, f.SrcPort, dst, f.DstPort, f.Proto, f.Flags)}
}

// harness runs steps through both.
type harness struct {
	t     testing.TB
	sc    *scenario
	objs  *loader.Objects
	set   *maps.Set
	rd    *ringbuf.Reader
	fwrd  *ringbuf.Reader // the fwknop ring: what run would read
	m     *model.Gate
	clk   model.Clock
	hints []byte // the hint bitmap, mapped (it is mmapable): read in place
	// hinted are the (source, service)s whose bits the active half may
	// hold: each grant the model has held since the last rebuild.
	hinted map[model.GrantKey]bool
	ncpu   int
	// checkKeys, checkAllow: the step may have changed the SPA keys or the
	// allow trie, which only the Go side writes (or cleared a knock slot
	// from Go: a revoke).
	checkKeys, checkAllow, checkSlots bool
	// checkFwknop: the step may have added to the fwknop replay map.
	checkFwknop bool
	steps       int
}

func newHarness(t testing.TB, sc *scenario) *harness {
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: maxSources, MaxFlows: maxFlows}, loader.Tuning{TestClock: true, EventBurst: burst})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, sc: sc, objs: objs, set: maps.FromObjects(&objs.KnockgateMaps)}
	h.set.NoGraceWait = true
	h.m = model.New(objs.Knocks.MaxEntries(), objs.Flows.MaxEntries(), burst)
	if h.rd, err = ringbuf.NewReader(objs.Events); err != nil {
		t.Fatal(err)
	}
	if h.fwrd, err = ringbuf.NewReader(objs.FwknopRing); err != nil {
		t.Fatal(err)
	}
	if h.hints, err = unix.Mmap(objs.HintBits.FD(), 0, int(objs.HintBits.ValueSize()), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		t.Fatal(err)
	}
	h.hinted = map[model.GrantKey]bool{}
	if h.ncpu, err = ebpf.PossibleCPU(); err != nil {
		t.Fatal(err)
	}
	h.clk = model.Clock{Boot: startBoot, Coarse: startCoarse, TAI: startTAI}
	h.setClock()
	return h
}

func (h *harness) close() {
	unix.Munmap(h.hints)
	h.rd.Close()
	h.fwrd.Close()
	h.objs.Close()
}

func (h *harness) setClock() {
	h.m.Clock = h.clk
	for _, v := range []struct {
		v *ebpf.Variable
		n uint64
	}{{h.objs.TestBootNs, h.clk.Boot}, {h.objs.TestCoarseNs, h.clk.Coarse}, {h.objs.TestTaiNs, h.clk.TAI}} {
		if err := v.v.Set(v.n); err != nil {
			h.t.Fatal(err)
		}
	}
}

// apply runs one step on both; for a packet, it returns both verdicts. A
// step the Go side refuses must be one the model refuses, and the other way
// round.
func (h *harness) apply(s step) (got, want uint32, err error) {
	h.steps++
	if h.steps%50 == 0 {
		// As run does now and then: the bits of grants gone cleared.
		defer func() {
			if _, rerr := h.set.RebuildHints(); rerr != nil && err == nil {
				err = rerr
			}
			clear(h.hinted)
			for k := range h.m.Grants {
				h.hinted[k] = true
			}
		}()
	}
	h.checkKeys, h.checkAllow = s.Kind == "keys" || s.Kind == "set", s.Kind == "set"
	h.checkSlots = s.Kind == "revoke"
	h.checkFwknop = s.Kind == "in" || s.Kind == "fwknop-fleet" || h.steps%64 == 0
	agree := func(prog, mod error) error {
		if (prog == nil) != (mod == nil) {
			return fmt.Errorf("program side: %v; model: %v", prog, mod)
		}
		return nil
	}
	switch s.Kind {
	case "in":
		want = h.m.Ingress(s.Frame)
		got, err = h.objs.Knockgate.Run(&ebpf.RunOptions{Data: s.Frame})
	case "out":
		h.m.Egress(s.Frame)
		got, err = h.objs.Egress.Run(&ebpf.RunOptions{Data: s.Frame})
		want = got // egress never changes a packet's fate
	case "time":
		h.clk.Boot += uint64(s.D)
		h.clk.Coarse += uint64(s.D)
		h.clk.TAI += uint64(s.D)
		h.setClock()
	case "set":
		err = h.writeConfig(s.Cfg)
	case "grant":
		exp := h.clk.Boot + uint64(s.D)
		err = agree(h.set.Grant(s.Addr, s.Service, exp), h.m.GrantFor(s.Addr, s.Service, exp))
	case "revoke":
		_, perr := h.set.Revoke(s.Addr, s.Service)
		err = agree(perr, h.m.Revoke(s.Addr, s.Service))
	case "keys":
		var keys []spa.Key
		for _, i := range s.Keys {
			keys = append(keys, h.sc.keys[i])
		}
		err = agree(h.set.SetSPAKeys(keys), h.m.SetKeys(keys))
	case "fwknop-keys":
		var keys []maps.FwknopKey
		var macs [][]byte
		for _, i := range s.Keys {
			keys = append(keys, maps.FwknopKey{HMACKey: h.sc.fwknop[i].mac, Name: fmt.Sprint(i + 1)})
			macs = append(macs, h.sc.fwknop[i].mac)
		}
		err = h.set.SetFwknopKeys(keys)
		h.m.SetFwknopKeys(macs)
	case "fwknop-grant":
		got, want, err = h.fwknopGrant(s)
	case "fwknop-fleet":
		// The digest from the datagram's text, by the standard library.
		tag := string(s.Frame[len(s.Frame)-43:])
		var d maps.FwknopDigest
		if _, err := base64.RawStdEncoding.Decode(d[:], []byte(tag)); err != nil {
			return 0, 0, err
		}
		added, perr := h.set.FwknopRemember(d, s.Until)
		if perr != nil {
			return 0, 0, perr
		}
		if madded := h.m.FwknopRemember(tag, s.Until.Unix()); added != madded {
			err = fmt.Errorf("fwknop-fleet: the program's map added %v, the model's %v", added, madded)
		}
	}
	return got, want, err
}

// fwknopGrant asks both for the grant run would ask of fwknop_grant: the
// services by their indices under the configuration in force (a name it
// lacks skipped, as run skips it), under its generation or, stale, another.
// The verdicts are how many each granted, or 1000 when it refused the
// generation.
func (h *harness) fwknopGrant(s step) (got, want uint32, err error) {
	fg := &maps.FwknopGrant{Addr: s.Addr, Stanza: int(s.Stanza), Open: s.D, Generation: h.m.Cfg.Generation, Services: map[int]maps.Port{}}
	req := model.FwknopGrantReq{Addr: maps.Key(s.Addr).Addr, Stanza: s.Stanza, Open: uint64(s.D), Generation: fg.Generation,
		Services: map[int]model.FwknopPort{}}
	if s.Stale {
		fg.Generation--
		req.Generation--
	}
	for _, x := range s.Grants {
		i := x.Index
		if x.Service != "" {
			var ok bool
			if i, ok = h.m.Cfg.Index[x.Service]; !ok {
				continue
			}
		}
		fg.Services[i] = x.Port
		req.Services[i] = model.FwknopPort{Num: x.Port.Num, Proto: uint8(x.Port.Proto)}
	}
	const refused = 1000
	n, perr := maps.RunFwknopGrant(h.objs.FwknopGrant, fg)
	switch {
	case errors.Is(perr, maps.ErrStaleGeneration):
		got = refused
	case perr != nil:
		return 0, 0, perr
	default:
		got = uint32(n)
	}
	m, stale := h.m.FwknopGrant(req)
	want = uint32(m)
	if stale {
		want = refused
	}
	return got, want, nil
}

// writeConfig installs cfg (without waiting for RCU grace periods: see
// maps.Set.NoGraceWait), checks the indices the services got against the
// model's rule, and gives the model what was installed.
func (h *harness) writeConfig(cfg maps.Config) error {
	cfg.SlotKey = h.sc.slotKey
	want, werr := model.AssignIndices(&h.m.Cfg, &cfg.Policy)
	installed, err := h.set.WriteConfig(cfg)
	if err != nil || werr != nil {
		return fmt.Errorf("program side: %v; model: %v", err, werr)
	}
	if !reflect.DeepEqual(installed.Index, want) {
		return fmt.Errorf("service indices: program %v, model %v", installed.Index, want)
	}
	h.m.SetConfig(installed)
	return nil
}

// compare says how the program's state differs from the model's ("" when
// it does not).
func (h *harness) compare() string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }

	// The counters (one batch), and the verdicts of the interface slot
	// test runs count in (loopback's): a batch of the slots up to it,
	// cheaper than every slot's.
	counters, err := h.perCPU(h.objs.Counters, int(bpf.KnockgateCounterCOUNTER_MAX))
	if err != nil {
		return err.Error()
	}
	verdicts, err := h.perCPU(h.objs.Verdicts, (maps.IfaceSlot(1)+1)*maps.Verdicts)
	if err != nil {
		return err.Error()
	}
	for i, name := range maps.CounterNames {
		var n uint64
		if i < maps.Verdicts {
			n = verdicts[maps.IfaceSlot(1)*maps.Verdicts+i]
		} else {
			n = counters[i-maps.Verdicts]
		}
		if n != h.m.Counters[name] {
			add("counter %s: program %d, model %d", name, n, h.m.Counters[name])
		}
	}
	perService, err := h.perCPU(h.objs.ServiceCounters, int(h.objs.ServiceCounters.MaxEntries()))
	if err != nil {
		return err.Error()
	}
	for s := range model.MaxServices {
		got := model.ServiceCounters{
			Granted: perService[s*int(bpf.KnockgateServiceCounterSERVICE_COUNTER_MAX)+int(bpf.KnockgateServiceCounterSERVICE_GRANTED)],
			Expired: perService[s*int(bpf.KnockgateServiceCounterSERVICE_COUNTER_MAX)+int(bpf.KnockgateServiceCounterSERVICE_GRANT_EXPIRED)],
		}
		if got != h.m.ServiceCounters[s] {
			add("counters of service %d: program %+v, model %+v", s, got, h.m.ServiceCounters[s])
		}
	}
	var evs []model.Event
	h.rd.SetDeadline(time.Now())
	for {
		rec, err := h.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return err.Error()
		}
		var raw bpf.KnockgateEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return err.Error()
		}
		evs = append(evs, model.Event{Type: maps.EventTypeNames[bpf.KnockgateEventType(raw.Type)], Addr: raw.Addr, Port: raw.Port,
			Proto: raw.Proto, Stage: raw.Stage, Service: raw.Service, KeyID: raw.KeyId, Fwknop: raw.Fwknop != 0, Time: raw.TimeNs, Expires: raw.ExpiresNs})
	}
	if want := h.m.TakeEvents(); !slices.Equal(evs, want) {
		add("events: program %+v, model %+v", evs, want)
	}
	if d := h.compareFwknop(); d != "" {
		add("%s", d)
	}

	var tags []byte
	if err := h.objs.KnockTags.Lookup(uint32(0), &tags); err != nil {
		return err.Error()
	}
	// The knock table: every slot whose tag either side says is taken, and
	// now and then (and after the steps that clear slots from Go) every
	// slot, the free ones included (a free slot's address and stage are
	// zero): reading the whole table each step would be most of a step's
	// time.
	whole := h.steps%64 == 0 || h.checkSlots
	var slots []bpf.KnockgateKnockSlot
	if whole {
		slots = make([]bpf.KnockgateKnockSlot, len(h.m.Knocks))
		if err := batch(h.objs.Knocks, slots); err != nil {
			return err.Error()
		}
	}
	for i := range h.m.Knocks {
		want := h.m.Knocks[i]
		if !whole && want.Tag == 0 && tags[i] == 0 {
			continue
		}
		var s *bpf.KnockgateKnockSlot
		if whole {
			s = &slots[i]
		} else {
			s = new(bpf.KnockgateKnockSlot)
			if err := h.objs.Knocks.Lookup(uint32(i), s); err != nil {
				return err.Error()
			}
		}
		got := model.Slot{Addr: s.Addr, Gen: s.Generation, Stage: s.Stage, Service: s.Service, Deadline: s.DeadlineNs, Tag: tags[i]}
		if want.Tag == 0 && got.Tag == 0 {
			// A free slot: its leftovers are nobody's.
			got.Gen, got.Deadline, got.Service, want.Gen, want.Deadline, want.Service = 0, 0, 0, 0, 0, 0
		}
		if got != want {
			add("knock slot %d: program %+v, model %+v", i, got, want)
		}
	}

	// Grants, by (source, service), in one batch; and the hint bitmap's
	// active half: every grant's bits set, and no bit set that no grant
	// held since the last rebuild set (no grant is ever evicted here).
	gks := make([]bpf.KnockgateGrantKey, maxSources)
	gvs := make([]bpf.KnockgateGrant, maxSources)
	n, err := batchAll(h.objs.Grants, gks, gvs)
	if err != nil {
		return err.Error()
	}
	grants := map[model.GrantKey]model.Grant{}
	for i := range n {
		grants[model.GrantKey{Addr: gks[i].Addr, Service: gks[i].Service}] = model.Grant{Expires: gvs[i].ExpiresNs, Reported: gvs[i].ExpiryReported != 0}
	}
	words := maps.HintWordsOf(uint32(len(h.hints)))
	active := binary.NativeEndian.Uint32(h.hints) & 1
	half := func(w uint32) uint64 {
		return binary.NativeEndian.Uint64(h.hints[maps.HintHeader+8*(active*words+w):])
	}
	may := make([]uint64, words)
	for k, g := range h.m.Grants {
		h.hinted[k] = true
		w, m := maps.HintOf(bpf.KnockgateGrantKey{Addr: k.Addr, Service: k.Service}, words)
		if half(w)&m != m {
			add("grant %s of service %d: hint bits %#x of word %d not set (%#x)", netip.AddrFrom16(k.Addr).Unmap(), k.Service, m, w, half(w))
		}
		if got, ok := grants[k]; !ok || got != *g {
			add("grant %s of service %d: program %+v (%v), model %+v", netip.AddrFrom16(k.Addr).Unmap(), k.Service, got, ok, *g)
		}
		delete(grants, k)
	}
	for k, g := range grants {
		add("grant %s of service %d: program %+v, model none", netip.AddrFrom16(k.Addr).Unmap(), k.Service, g)
	}
	for k := range h.hinted {
		w, m := maps.HintOf(bpf.KnockgateGrantKey{Addr: k.Addr, Service: k.Service}, words)
		may[w] |= m
	}
	for w := range words {
		if extra := half(w) &^ may[w]; extra != 0 {
			add("hint word %d: bits %#x set that no grant since the last rebuild sets", w, extra)
		}
	}

	if err := h.objs.FlowTags.Lookup(uint32(0), &tags); err != nil {
		return err.Error()
	}
	flows := make([]bpf.KnockgateFlow, len(h.m.Flows))
	if err := batch(h.objs.Flows, flows); err != nil {
		return err.Error()
	}
	for i := range h.m.Flows {
		f := &flows[i]
		got := model.Flow{Key: f.Key, Flags: f.Flags, Last: f.LastNs, Tag: tags[i]}
		if want := h.m.Flows[i]; got != want {
			add("flow slot %d: program %+v, model %+v", i, got, want)
		}
	}

	ids := make([]uint32, spa.MaxKeys)
	stamps := make([]uint64, spa.MaxKeys)
	if n, err = batchAll(h.objs.SpaLast, ids, stamps); err != nil {
		return err.Error()
	}
	last := map[uint32]uint64{}
	for i := range n {
		last[ids[i]] = stamps[i]
	}
	if fmt.Sprint(last) != fmt.Sprint(h.m.Last) {
		add("spa replay state: program %v, model %v", last, h.m.Last)
	}

	// What only the Go side writes, after the steps that write it: each
	// key's scope, and the allow trie (an entry per prefix of the gate's
	// list and of each service's own, under its index).
	if h.checkKeys {
		keys := make([]bpf.KnockgateSpaKey, spa.MaxKeys)
		if n, err = batchAll(h.objs.SpaKeys, ids, keys); err != nil {
			return err.Error()
		}
		scopes := map[uint32]uint32{}
		for i := range n {
			scopes[ids[i]] = keys[i].Services
		}
		if fmt.Sprint(scopes) != fmt.Sprint(h.m.Scopes) {
			add("spa key scopes: program %v, model %v", scopes, h.m.Scopes)
		}
	}
	if h.checkAllow {
		var got []string
		var k bpf.KnockgateAllowKey
		var bits uint8
		it := h.objs.Allow.Iterate()
		for it.Next(&k, &bits) {
			if k.Epoch != h.m.Cfg.AllowEpoch {
				add("allow trie: an entry of epoch %d beside the configuration's %d", k.Epoch, h.m.Cfg.AllowEpoch)
			}
			got = append(got, fmt.Sprintf("%d %s/%d", k.Service, netip.AddrFrom16(k.Addr), k.Prefixlen))
		}
		if err := it.Err(); err != nil {
			return err.Error()
		}
		var want []string
		entry := func(service int, p netip.Prefix) {
			bits := p.Bits() + 16
			if p.Addr().Is4() {
				bits += 96
			}
			e := fmt.Sprintf("%d %s/%d", service, netip.AddrFrom16(p.Masked().Addr().As16()), bits)
			if !slices.Contains(want, e) {
				want = append(want, e)
			}
		}
		for _, p := range h.m.Cfg.Policy.Allow {
			entry(0xff, p)
		}
		for _, s := range h.m.Cfg.Policy.Services {
			for _, p := range s.Allow {
				entry(h.m.Cfg.Index[s.Name], p)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			add("allow trie: program %v, model %v", got, want)
		}
	}
	return strings.Join(diffs, "\n")
}

// perCPU reads the first n values of the per-CPU array m, summed over
// CPUs, in one batch.
func (h *harness) perCPU(m *ebpf.Map, n int) ([]uint64, error) {
	keys := make([]uint32, n)
	values := make([]uint64, n*h.ncpu)
	var cursor ebpf.MapBatchCursor
	got, err := m.BatchLookup(&cursor, keys, values, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("batch read %d of %d", got, n)
	}
	out := make([]uint64, n)
	for k := range n {
		for c := range h.ncpu {
			out[keys[k]] += values[k*h.ncpu+c]
		}
	}
	return out, nil
}

// batchAll reads every entry of the hash map m into keys and values (each
// long enough for all of them) and returns how many there are.
func batchAll[K, V any](m *ebpf.Map, keys []K, values []V) (int, error) {
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := m.BatchLookup(&cursor, keys[total:], values[total:], nil)
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// seen sums, over every scenario run, how often each counter moved, each
// service's counters (by index) and each rule about services decided:
// what the random steps reached.
var (
	seen        = map[string]uint64{}
	seenService [model.MaxServices]model.ServiceCounters
	seenPaths   = map[string]uint64{}
)

// batch reads every value of the array m into out, in one call.
func batch[T any](m *ebpf.Map, out []T) error {
	keys := make([]uint32, len(out))
	var cursor ebpf.MapBatchCursor
	n, err := m.BatchLookup(&cursor, keys, out, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if n != len(out) {
		return fmt.Errorf("batch read %d of %d", n, len(out))
	}
	return nil
}

// run runs sc's steps and returns the index of the first step after which
// the two disagree (-1: never) and how.
func run(t testing.TB, sc *scenario) (int, string) {
	h := newHarness(t, sc)
	defer h.close()
	defer func() {
		for k, v := range h.m.Counters {
			seen[k] += v
		}
		for i, c := range h.m.ServiceCounters {
			seenService[i].Granted += c.Granted
			seenService[i].Expired += c.Expired
		}
		for k, v := range h.m.Paths {
			seenPaths[k] += v
		}
	}()
	for i, s := range sc.steps {
		got, want, err := h.apply(s)
		if err != nil {
			return i, "step failed: " + err.Error()
		}
		if got != want {
			return i, fmt.Sprintf("verdict: program %d, model %d", got, want)
		}
		if d := h.compare(); d != "" {
			return i, d
		}
	}
	return -1, ""
}

// onOneCPU pins the calling goroutine's thread to CPU 0: the program's
// per-CPU event budget is then one, as in the model.
func onOneCPU(t testing.TB) {
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.SchedSetaffinity(0, &old) })
}

// shrink drops steps while the run still disagrees somewhere, and returns
// the shortest scenario found (the replayable case): chunks of halving size
// (delta debugging), for at most a minute.
func shrink(t testing.TB, sc *scenario, at int) *scenario {
	cur := *sc
	cur.steps = slices.Clone(sc.steps[:at+1])
	deadline := time.Now().Add(time.Minute)
	const keep = 3 // the first three steps make the gate
	for size := (len(cur.steps) - keep) / 2; size >= 1 && time.Now().Before(deadline); size /= 2 {
		for i := keep; i+size <= len(cur.steps)-1 && time.Now().Before(deadline); {
			cand := cur
			cand.steps = slices.Delete(slices.Clone(cur.steps), i, i+size)
			if n, _ := run(t, &cand); n >= 0 {
				cand.steps = cand.steps[:n+1]
				cur = cand
				continue // the same i now holds the next chunk
			}
			i += size
		}
	}
	return &cur
}

func report(t testing.TB, seed uint64, sc *scenario, at int, diff string) {
	small := shrink(t, sc, at)
	n, d := run(t, small)
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: step %d of %d disagrees:\n%s\n", seed, at, len(sc.steps), diff)
	fmt.Fprintf(&b, "shrunk to %d steps (replay: KG_MODEL_SEED=%d, or these steps), disagreeing at the last:\n%s\n", len(small.steps), seed, d)
	for i, s := range small.steps {
		if i <= n {
			fmt.Fprintf(&b, "  %3d %s\n", i, s)
		}
	}
	t.Fatal(b.String())
}

// TestDatapathAgainstModel: at least 100 000 random steps, in scenarios of
// a few thousand steps from consecutive seeds (KG_MODEL_SEED picks the
// first, KG_MODEL_STEPS the total), with zero disagreements.
func TestDatapathAgainstModel(t *testing.T) {
	netns.Require(t)
	onOneCPU(t)
	seed, total := uint64(1), 100_000
	if s := os.Getenv("KG_MODEL_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	if s := os.Getenv("KG_MODEL_STEPS"); s != "" {
		fmt.Sscan(s, &total)
	}
	const perScenario = 2000
	steps := 0
	for ; steps < total; seed++ {
		sc := newScenario(seed, perScenario)
		if at, diff := run(t, sc); at >= 0 {
			report(t, seed, sc, at, diff)
		}
		steps += len(sc.steps)
	}
	t.Logf("%d steps in %d scenarios, no disagreement", steps, (steps+perScenario-1)/perScenario)
	var reached, missed []string
	for _, name := range maps.CounterNames {
		if seen[name] > 0 {
			reached = append(reached, fmt.Sprintf("%s %d", name, seen[name]))
		} else {
			missed = append(missed, name)
		}
	}
	t.Logf("counters reached: %s", strings.Join(reached, ", "))
	if len(missed) > 0 {
		t.Logf("never reached: %s", strings.Join(missed, ", "))
	}
	var per []string
	for i, c := range seenService {
		if c != (model.ServiceCounters{}) {
			per = append(per, fmt.Sprintf("%d: granted %d expired %d", i, c.Granted, c.Expired))
		}
	}
	t.Logf("service counters reached (by index): %s", strings.Join(per, "; "))
	var paths []string
	for k, v := range seenPaths {
		paths = append(paths, fmt.Sprintf("%s %d", k, v))
	}
	slices.Sort(paths)
	t.Logf("service rules reached:\n  %s", strings.Join(paths, "\n  "))
}

// FuzzDatapath: the same, for as long as `make fuzz` runs, each input a
// seed and a length.
func FuzzDatapath(f *testing.F) {
	f.Add(uint64(1), uint16(500))
	f.Add(uint64(7), uint16(3000))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16) {
		netns.Require(t)
		onOneCPU(t)
		sc := newScenario(seed, 3+int(n%4000))
		if at, diff := run(t, sc); at >= 0 {
			report(t, seed, sc, at, diff)
		}
	})
}

// compareFwknop says how the fwknop datagrams the program handed over on
// its ring, and (after the steps that may add to it) its replay map,
// differ from the model's.
func (h *harness) compareFwknop() string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	var got []model.FwknopRecord
	h.fwrd.SetDeadline(time.Now())
	for {
		rec, err := h.fwrd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return err.Error()
		}
		var raw bpf.KnockgateFwknopRecord
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return err.Error()
		}
		if raw.Ifindex != 1 || int(raw.Len) > len(raw.Data) {
			add("fwknop record: ifindex %d (test runs come in on loopback), %d bytes", raw.Ifindex, raw.Len)
			continue
		}
		got = append(got, model.FwknopRecord{Time: raw.TimeNs, Src: raw.Src, Dst: raw.Dst, Key: int(raw.Key), Data: raw.Data[:raw.Len]})
	}
	want := h.m.TakeFwknop()
	if !reflect.DeepEqual(got, want) && (len(got) > 0 || len(want) > 0) {
		add("fwknop records: program %+v, model %+v", got, want)
	}
	if !h.checkFwknop {
		return strings.Join(diffs, "\n")
	}
	seen := map[string]model.FwknopSeen{}
	var d bpf.KnockgateFwknopDigest
	var v bpf.KnockgateFwknopSeen
	it := h.objs.FwknopReplay.Iterate()
	for it.Next(&d, &v) {
		seen[base64.RawStdEncoding.EncodeToString(d.B[:])] = model.FwknopSeen{At: v.SeenNs, KeepUntil: v.KeepUntil}
	}
	if err := it.Err(); err != nil {
		return err.Error()
	}
	wantSeen := map[string]model.FwknopSeen{}
	for tag, s := range h.m.FwknopSeen {
		s.Src = model.Addr{} // the map does not hold it
		wantSeen[tag] = s
	}
	if !reflect.DeepEqual(seen, wantSeen) {
		add("fwknop replay map: program %v, model %v", seen, wantSeen)
	}
	return strings.Join(diffs, "\n")
}
