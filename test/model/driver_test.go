package model_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
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
	maxSources = 32 // knock table: 96 slots in 24 sets; grants: 32 entries
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
	Kind  string        // in, out, time, set, grant, revoke, keys
	Frame []byte        // in, out
	What  string        // a description of the frame
	D     time.Duration // time: how far the clocks move; grant: for how long
	Addr  netip.Addr    // grant, revoke
	Cfg   maps.Config   // set
	Keys  []int         // keys: indexes into the scenario's keys
}

func (s step) String() string {
	switch s.Kind {
	case "in", "out":
		return fmt.Sprintf("%s %s (%x)", s.Kind, s.What, s.Frame)
	case "time":
		return "time +" + s.D.String()
	case "set":
		return fmt.Sprintf("set %+v", s.Cfg)
	case "grant":
		return fmt.Sprintf("grant %s for %s", s.Addr, s.D)
	case "revoke":
		return "revoke " + s.Addr.String()
	case "keys":
		return fmt.Sprintf("keys %v", s.Keys)
	}
	return s.Kind
}

// scenario is what a seed makes: the pool of sources, the keys, the slot
// key, and the steps.
type scenario struct {
	slotKey [2]uint64
	pool    []netip.Addr
	keys    []spa.Key
	allow   netip.Prefix
	steps   []step
}

// gen makes random steps.
type gen struct {
	r     *rand.Rand
	sc    *scenario
	tai   uint64 // the clock, as the generator tracks it (for SPA stamps)
	ports []uint16
	seq   []maps.Port    // the sequence of the last configuration made
	sent  []packet.Frame // the last frames the gate sent: replies answer them
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
	for i := range 4 {
		k := spa.Key{ID: uint32(100 + i), Name: fmt.Sprintf("k%d", i), AnyAddress: i == 3}
		if i == 2 {
			k.Open = 90 * time.Second
		}
		for j := range k.Secret {
			k.Secret[j] = byte(r.Uint32())
		}
		sc.keys = append(sc.keys, k)
	}
	g := &gen{r: r, sc: sc, tai: startTAI, ports: []uint16{22, 53, 443, 7000, 8000, 9000, 9001, spaPort, 67, 68, 546, 40000}}
	cfg := g.config()
	for cfg.Policy.SPAPort == 0 || len(cfg.Policy.Default().Sequence) == 0 {
		cfg = g.config() // start with both ways in
	}
	cfg.SlotKey = sc.slotKey
	sc.steps = append(sc.steps, step{Kind: "set", Cfg: cfg}, step{Kind: "keys", Keys: []int{0, 1, 2, 3}})
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

// config is a random configuration of the few kinds the rules tell apart.
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
	if r.IntN(3) != 0 || d.Sequence == nil {
		p.SPAPort = spaPort
	}
	switch r.IntN(4) {
	case 0:
		d.ProtectAll = true
	case 1:
		d.Protect = []maps.Port{{Num: 22, Proto: maps.TCP}, {Num: 53, Proto: maps.UDP}}
	default:
		d.Protect = []maps.Port{{Num: 22, Proto: maps.TCP}, {Num: 443, Proto: maps.TCP}}
	}
	p.Services = []policy.Service{d}
	g.seq = d.Sequence
	return maps.FromPolicy(&p)
}

func (g *gen) step() step {
	r := g.r
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
		return step{Kind: "grant", Addr: g.src(), D: time.Duration(1+r.IntN(60)) * time.Second}
	case n < 95:
		return step{Kind: "revoke", Addr: g.src()}
	default:
		var keys []int
		for i := range g.sc.keys {
			if r.IntN(3) != 0 {
				keys = append(keys, i)
			}
		}
		return step{Kind: "keys", Keys: keys}
	}
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
	switch n := r.IntN(100); {
	case n < 20 && len(g.seq) > 0:
		// A knock on a step of the sequence, from one of the six sources
		// that share a knock set: sequences advance, complete, repeat,
		// reset, and first knocks take each other's slots.
		st := g.seq[min(r.IntN(len(g.seq)+1), len(g.seq)-1)]
		if r.IntN(2) == 0 {
			st = g.seq[0]
		}
		src = g.sc.pool[r.IntN(6)]
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
		f = packet.TCP(src, dst, g.pick([]uint16{40000, 40001, 22, 443}), g.pick(g.ports), fl)
		what = fmt.Sprintf("tcp %s:%d > %d flags %#x", src, f.SrcPort, f.DstPort, fl)
	case n < 60:
		f = packet.UDP(src, dst, g.pick([]uint16{40000, 53, 67, 547}), g.pick(g.ports))
		f.Payload = []byte("knock")
		what = fmt.Sprintf("udp %s:%d > %d", src, f.SrcPort, f.DstPort)
	case n < 80:
		f = packet.UDP(src, dst, 40000, spaPort)
		f.Payload, what = g.spaPayload(src)
	case n < 88:
		// An ICMP error from a pool source quoting a packet the gate sent.
		q := packet.TCP(dst, src, g.pick([]uint16{22, 443, 40000}), g.pick([]uint16{40000, 40001}), packet.SYN|packet.ACK)
		if r.IntN(2) == 0 {
			q = packet.UDP(dst, src, g.pick([]uint16{53, 40000}), 40000)
		}
		f = packet.TooBig(src, dst, q)
		what = fmt.Sprintf("icmp error quoting %s:%d > %d proto %d", dst, q.SrcPort, q.DstPort, q.Proto)
	default:
		f = packet.TCP(src, dst, 40000, g.pick(g.ports), packet.SYN)
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

// spaPayload is an SPA payload from src: valid now, or off in one way.
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
	b := p.Marshal(k.Secret)
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
	t    testing.TB
	sc   *scenario
	objs *loader.Objects
	set  *maps.Set
	rd   *ringbuf.Reader
	m    *model.Gate
	clk  model.Clock
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
	h.m.Allow = []netip.Prefix{sc.allow}
	h.clk = model.Clock{Boot: startBoot, Coarse: startCoarse, TAI: startTAI}
	h.setClock()
	return h
}

func (h *harness) close() {
	h.rd.Close()
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

// apply runs one step on both; for a packet, it returns both verdicts.
func (h *harness) apply(s step) (got, want uint32, err error) {
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
		h.m.GrantFor(s.Addr, exp)
		err = h.set.Grant(s.Addr, policy.DefaultService, exp)
	case "revoke":
		h.m.Revoke(s.Addr)
		_, err = h.set.Revoke(s.Addr, "")
	case "keys":
		var keys []spa.Key
		for _, i := range s.Keys {
			keys = append(keys, h.sc.keys[i])
		}
		h.m.SetKeys(keys)
		err = h.set.SetSPAKeys(keys)
	}
	return got, want, err
}

// writeConfig installs cfg (without waiting for RCU grace periods: see
// maps.Set.NoGraceWait), and gives the model what was installed.
func (h *harness) writeConfig(cfg maps.Config) error {
	cfg.SlotKey = h.sc.slotKey
	installed, err := h.set.WriteConfig(cfg)
	if err != nil {
		return err
	}
	h.m.Cfg = installed
	return nil
}

// compare says how the program's state differs from the model's ("" when
// it does not).
func (h *harness) compare() string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }

	// The counters, and the verdicts of the interface slot test runs count
	// in (loopback's): read one by one, cheaper than every slot's batch.
	for i, name := range maps.CounterNames {
		m, idx := h.objs.Counters, uint32(i-maps.Verdicts)
		if i < maps.Verdicts {
			m, idx = h.objs.Verdicts, uint32(maps.IfaceSlot(1)*maps.Verdicts+i)
		}
		var perCPU []uint64
		if err := m.Lookup(idx, &perCPU); err != nil {
			return err.Error()
		}
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		if n != h.m.Counters[name] {
			add("counter %s: program %d, model %d", name, n, h.m.Counters[name])
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
			Proto: raw.Proto, Stage: raw.Stage, KeyID: raw.KeyId, Time: raw.TimeNs, Expires: raw.ExpiresNs})
	}
	if want := h.m.TakeEvents(); !slices.Equal(evs, want) {
		add("events: program %+v, model %+v", evs, want)
	}

	var tags []byte
	if err := h.objs.KnockTags.Lookup(uint32(0), &tags); err != nil {
		return err.Error()
	}
	slots := make([]bpf.KnockgateKnockSlot, len(h.m.Knocks))
	if err := batch(h.objs.Knocks, slots); err != nil {
		return err.Error()
	}
	for i := range h.m.Knocks {
		s := &slots[i]
		got := model.Slot{Addr: s.Addr, Gen: s.Generation, Stage: s.Stage, Deadline: s.DeadlineNs, Tag: tags[i]}
		want := h.m.Knocks[i]
		if want.Tag == 0 && got.Tag == 0 {
			// A free slot: its leftovers are nobody's.
			got.Gen, got.Deadline, want.Gen, want.Deadline = 0, 0, 0, 0
		}
		if got != want {
			add("knock slot %d: program %+v, model %+v", i, got, want)
		}
	}

	grants := map[model.Addr]model.Grant{}
	var gk bpf.KnockgateGrantKey
	var gv bpf.KnockgateGrant
	it := h.objs.Grants.Iterate()
	for it.Next(&gk, &gv) {
		if gk.Service != 0 {
			add("grant %s of service %d: the model has default's only", netip.AddrFrom16(gk.Addr).Unmap(), gk.Service)
			continue
		}
		grants[gk.Addr] = model.Grant{Expires: gv.ExpiresNs, Reported: gv.ExpiryReported != 0}
	}
	if err := it.Err(); err != nil {
		return err.Error()
	}
	for a, g := range h.m.Grants {
		if got, ok := grants[a]; !ok || got != *g {
			add("grant %s: program %+v (%v), model %+v", netip.AddrFrom16(a).Unmap(), got, ok, *g)
		}
		delete(grants, a)
	}
	for a, g := range grants {
		add("grant %s: program %+v, model none", netip.AddrFrom16(a).Unmap(), g)
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

	last := map[uint32]uint64{}
	var id uint32
	var ts uint64
	it = h.objs.SpaLast.Iterate()
	for it.Next(&id, &ts) {
		last[id] = ts
	}
	if err := it.Err(); err != nil {
		return err.Error()
	}
	if fmt.Sprint(last) != fmt.Sprint(h.m.Last) {
		add("spa replay state: program %v, model %v", last, h.m.Last)
	}
	return strings.Join(diffs, "\n")
}

// seen sums, over every scenario run, how often each counter moved: what
// the random steps reached.
var seen = map[string]uint64{}

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
	const keep = 2 // the first two steps make the gate
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
