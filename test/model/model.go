package model

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// XDP actions.
const (
	XDPDrop = 1
	XDPPass = 2
)

// Addr is an address as every key holds it: 16 bytes, IPv4 v4-mapped.
type Addr = [16]byte

func key(a netip.Addr) Addr { return maps.Key(a).Addr }

// Slot is one slot of the knock table (README: "Knock progress under a
// flood"): a source's progress, or free (Tag 0; a freed slot keeps its
// generation and deadline, which nothing reads while it is free).
type Slot struct {
	Addr     Addr
	Gen      uint16 // the low 16 bits of the configuration's generation
	Stage    uint8
	Deadline uint64
	Tag      uint8
}

// Grant is a source's grant: until Expires; Reported once its expire event
// went out.
type Grant struct {
	Expires  uint64
	Reported bool
}

// Flow is one slot of the flow table (Tag 0: free).
type Flow struct {
	Key   bpf.KnockgateFlowKey
	Flags uint64
	Last  uint64
	Tag   uint8
}

// Event is one ring-buffer event.
type Event struct {
	Type          string
	Addr          Addr
	Port          uint16
	Proto         uint8
	Stage         uint8
	KeyID         uint32
	Time, Expires uint64
}

// Clock is what the programs read: CLOCK_BOOTTIME (knocks, grants), the
// coarse monotonic clock (flows), CLOCK_TAI (SPA).
type Clock struct{ Boot, Coarse, TAI uint64 }

// Gate is the whole state the datapath decides by and changes.
type Gate struct {
	Cfg        maps.Config // the configuration in force, as written
	Knocks     []Slot      // len: knock slots, sets of maps.KnockWays
	Flows      []Flow      // len: flow slots, sets of maps.FlowWays
	Grants     map[Addr]*Grant
	Allow      []netip.Prefix
	Keys       map[uint32]spa.Key
	Last       map[uint32]uint64 // per key: newest SPA timestamp accepted
	Counters   map[string]uint64 // by maps.CounterNames
	Events     []Event           // not yet read
	Clock      Clock
	EventBurst uint64
	budgetNext uint64 // the knock/reset event budget (one CPU)
}

// New is an empty gate: no configuration written yet (nothing protected,
// no sequence), tables of the given sizes.
func New(knockSlots, flowSlots uint32, burst uint32) *Gate {
	return &Gate{
		Knocks:     make([]Slot, knockSlots),
		Flows:      make([]Flow, flowSlots),
		Grants:     map[Addr]*Grant{},
		Keys:       map[uint32]spa.Key{},
		Last:       map[uint32]uint64{},
		Counters:   map[string]uint64{},
		EventBurst: uint64(burst),
	}
}

func (g *Gate) count(name string) { g.Counters[name]++ }

// verdict counts the packet's verdict and turns it into the XDP action:
// only the passed_* verdicts pass.
func (g *Gate) verdict(name string) uint32 {
	g.count(name)
	if name == "passed" || name == "passed_granted" || name == "passed_allowed" || name == "passed_flow" {
		return XDPPass
	}
	return XDPDrop
}

func (g *Gate) protected(proto uint8, port uint16) bool {
	return g.Cfg.Policy.Protects(policy.Port{Num: port, Proto: policy.Proto(proto)})
}

// def is the configuration's service default (an empty one before any).
func (g *Gate) def() *policy.Service {
	if d := g.Cfg.Policy.Default(); d != nil {
		return d
	}
	return &policy.Service{}
}

// Ingress is the XDP program: the verdict on one inbound frame.
func (g *Gate) Ingress(frame []byte) uint32 {
	parsed, p := ParseFrame(frame)
	switch parsed {
	case Pass:
		return g.verdict("passed")
	case Malformed:
		return g.verdict("dropped_malformed")
	}
	cfg := &g.Cfg
	if parsed == ICMPError {
		// An error about a packet the host sent from a protected port
		// passes while that packet's flow is live.
		if !cfg.Policy.Flows || !g.protected(p.Proto, p.Sport) {
			return g.verdict("passed")
		}
		if g.flowIn(&p, false) {
			return g.verdict("passed_flow")
		}
		return g.verdict("dropped_protected")
	}
	if p.Proto == protoUDP && cfg.Policy.SPAPort != 0 && p.Dport == cfg.Policy.SPAPort {
		g.spa(&p)
		return g.verdict("dropped_spa")
	}
	bare := p.Flags & (tcpSYN | tcpACK | tcpRST | tcpFIN)
	isKnock := p.Proto == protoUDP || bare == tcpSYN
	if isKnock && len(g.def().Sequence) > 0 && g.knock(&p) {
		return g.verdict("dropped_knock")
	}
	if !g.protected(p.Proto, p.Dport) {
		return g.verdict("passed")
	}
	if cfg.Policy.Flows && !(p.Proto == protoTCP && bare == tcpSYN) && g.flowIn(&p, true) {
		return g.verdict("passed_flow")
	}
	if g.granted(&p) {
		return g.verdict("passed_granted")
	}
	if len(g.Allow) > 0 && g.allowed(p.Src) {
		return g.verdict("passed_allowed")
	}
	if g.def().ProtectAll && p.Proto == protoUDP && (p.Sport == 67 && p.Dport == 68 || p.Sport == 547 && p.Dport == 546) {
		return g.verdict("passed")
	}
	return g.verdict("dropped_protected")
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func (g *Gate) allowed(a netip.Addr) bool {
	for _, p := range g.Allow {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// budgeted: may a knock or reset event go out? At most EventBurst at once,
// refilled at 100 a second; a refusal is counted. (The ring is read after
// every step, so its reserve never runs short.)
func (g *Gate) budgeted(now uint64) bool {
	const interval = uint64(time.Second / 100)
	t := max(g.budgetNext, now)
	if t+interval > now+interval*g.EventBurst {
		g.count("events_suppressed")
		return false
	}
	g.budgetNext = t + interval
	return true
}

func (g *Gate) emit(ev Event) { g.Events = append(g.Events, ev) }

// granted: a live grant? An expired one is reported once and kept.
func (g *Gate) granted(p *Packet) bool {
	gr, ok := g.Grants[key(p.Src)]
	if !ok {
		return false
	}
	now := g.Clock.Boot
	if now < gr.Expires {
		return true
	}
	if !gr.Reported {
		gr.Reported = true
		g.count("grant_expired")
		g.emit(Event{Type: "expire", Addr: key(p.Src), Port: p.Dport, Proto: p.Proto, Time: now, Expires: gr.Expires})
	}
	return false
}

// grant opens addr for open from now, never shortening a grant it has.
func (g *Gate) grant(addr Addr, open uint64, about Event) {
	now := g.Clock.Boot
	exp := now + open
	if old, ok := g.Grants[addr]; ok && old.Expires > exp {
		exp = old.Expires
	}
	g.Grants[addr] = &Grant{Expires: exp}
	g.count("granted")
	about.Type, about.Addr, about.Time, about.Expires = "open", addr, now, exp
	g.emit(about)
}

// place is a source's set of the knock table and its tag.
func (g *Gate) place(a Addr) (base int, tag uint8) {
	set, tag := maps.KnockPlace(g.Cfg.SlotKey, uint32(len(g.Knocks)), netip.AddrFrom16(a))
	return int(set) * maps.KnockWays, tag
}

// search looks through a set: the way holding src's progress (-1: none;
// the look stops there), and the way a first knock would take: the first
// free one (free says one was seen), else the one with the oldest progress
// (void progress is oldest).
func (g *Gate) search(base int, tag uint8, src Addr) (found, victim int, free bool) {
	found, victim = -1, 0
	oldest := ^uint64(0)
	for w := range maps.KnockWays {
		s := &g.Knocks[base+w]
		if s.Tag == 0 {
			if !free {
				free, victim = true, w
			}
			continue
		}
		if s.Tag == tag && s.Addr == src {
			return w, victim, free
		}
		d := uint64(0)
		if s.Gen == uint16(g.Cfg.Generation) {
			d = s.Deadline
		}
		if !free && d < oldest {
			oldest, victim = d, w
		}
	}
	return -1, victim, free
}

func (s *Slot) free() { s.Addr, s.Stage, s.Tag = Addr{}, 0, 0 }

// knock is the knock state machine (README: "A knock"); true when the
// packet was a knock (dropped), false when the protected-port rules judge
// it.
func (g *Gate) knock(p *Packet) bool {
	cfg := &g.Cfg
	def := g.def()
	var match uint32
	for i, s := range def.Sequence {
		if s.Num == p.Dport && uint8(s.Proto) == p.Proto {
			match |= 1 << i
		}
	}
	src := key(p.Src)
	base, tag := g.place(src)
	maybe := false
	for w := range maps.KnockWays {
		maybe = maybe || g.Knocks[base+w].Tag == tag
	}
	if !maybe && match == 0 {
		return false
	}
	if !maybe && match&1 == 0 {
		return true // a later step out of order: still a knock port
	}
	nsteps := uint8(len(def.Sequence))
	found, victim, free := -1, 0, false
	searched := false
	if maybe {
		found, victim, free = g.search(base, tag, src)
		searched = true
	}
	now := g.Clock.Boot
	if found >= 0 {
		s := &g.Knocks[base+found]
		stage := s.Stage
		if s.Gen == uint16(cfg.Generation) && now < s.Deadline && stage > 0 && stage < nsteps {
			switch {
			case match&(1<<stage) != 0:
				g.count("knock_advanced")
				stage++
				if stage == nsteps {
					s.free()
					g.grant(src, uint64(def.Open), Event{Port: p.Dport, Proto: p.Proto, Stage: nsteps})
					return true
				}
				s.Stage, s.Deadline = stage, now+uint64(def.StepTimeout)
				if g.budgeted(now) {
					g.emit(Event{Type: "knock", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: stage, Time: now, Expires: s.Deadline})
				}
				return true
			case match&(1<<stage-1) != 0:
				g.count("knock_repeated") // a retransmission of a step taken
				return true
			default:
				s.free()
				g.count("knock_reset")
				if g.budgeted(now) {
					g.emit(Event{Type: "reset", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: stage, Time: now})
				}
				return match != 0
			}
		}
		// Expired, or made under another configuration: no progress, and
		// the slot is free again: the first free one, unless the look
		// passed one before it.
		s.free()
		if !free {
			victim = found
		}
	}
	if match == 0 {
		return false
	}
	if match&1 == 0 {
		return true
	}
	if g.granted(p) {
		g.count("knock_while_granted")
		return true
	}
	g.count("knock_advanced")
	if nsteps == 1 {
		g.grant(src, uint64(def.Open), Event{Port: p.Dport, Proto: p.Proto, Stage: nsteps})
		return true
	}
	if !searched {
		_, victim, _ = g.search(base, tag, src)
	}
	s := &g.Knocks[base+victim]
	*s = Slot{Addr: src, Gen: uint16(cfg.Generation), Stage: 1, Deadline: now + uint64(def.StepTimeout), Tag: tag}
	if g.budgeted(now) {
		g.emit(Event{Type: "knock", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: 1, Time: now, Expires: s.Deadline})
	}
	return true
}

// Revoke is `knockgate revoke`: the grant and the knock progress go.
func (g *Gate) Revoke(a netip.Addr) {
	k := key(a)
	delete(g.Grants, k)
	base, _ := g.place(k)
	for w := range maps.KnockWays {
		if g.Knocks[base+w].Addr == k {
			g.Knocks[base+w] = Slot{}
			return
		}
	}
}

// GrantFor is `knockgate grant`: a grant until expires, reported anew.
func (g *Gate) GrantFor(a netip.Addr, expires uint64) {
	g.Grants[key(a)] = &Grant{Expires: expires}
}

// flowKey is p's flow as the host sees it: reverse for an inbound packet.
func flowKey(p *Packet, reverse bool) bpf.KnockgateFlowKey {
	local, remote := netip.AddrPortFrom(p.Src, p.Sport), netip.AddrPortFrom(p.Dst, p.Dport)
	if reverse {
		local, remote = remote, local
	}
	return maps.FlowKey(local, remote, maps.Proto(p.Proto))
}

func (g *Gate) flowPlace(k bpf.KnockgateFlowKey) (int, uint8) {
	base, tag := maps.FlowPlace(g.Cfg.SlotKey, uint32(len(g.Flows)), k)
	return int(base), tag
}

func (g *Gate) findFlow(base int, tag uint8, k bpf.KnockgateFlowKey) int {
	for w := range maps.FlowWays {
		if f := &g.Flows[base+w]; f.Tag == tag && f.Key == k {
			return base + w
		}
	}
	return -1
}

// live: may the flow's replies pass at now? (README: when a flow ends.)
func (g *Gate) live(f *Flow, now uint64) bool {
	ttl := uint64(g.Cfg.Policy.FlowIdleUDP)
	if f.Key.Proto == protoTCP {
		fins := uint64(bpf.KnockgateFlowFlagFLOW_FIN_OUT | bpf.KnockgateFlowFlagFLOW_FIN_IN)
		switch {
		case f.Flags&fins == fins || f.Flags&uint64(bpf.KnockgateFlowFlagFLOW_RST_IN) != 0:
			ttl = uint64(10 * time.Second)
		case f.Flags&uint64(bpf.KnockgateFlowFlagFLOW_ANSWERED) == 0:
			ttl = uint64(60 * time.Second)
		default:
			ttl = uint64(g.Cfg.Policy.FlowIdleTCP)
		}
	}
	return now < f.Last+ttl
}

// flowIn: is p (inbound when reverse; else the packet an ICMP error
// quotes) in a live flow of the host's? An inbound packet marks the flow
// answered, and closing on a FIN or RST; it never makes or keeps one.
func (g *Gate) flowIn(p *Packet, reverse bool) bool {
	k := flowKey(p, reverse)
	base, tag := g.flowPlace(k)
	at := g.findFlow(base, tag, k)
	if at < 0 || !g.live(&g.Flows[at], g.Clock.Coarse) {
		return false
	}
	mark := uint64(bpf.KnockgateFlowFlagFLOW_ANSWERED)
	if reverse && p.Flags&tcpFIN != 0 {
		mark |= uint64(bpf.KnockgateFlowFlagFLOW_FIN_IN)
	}
	if reverse && p.Flags&tcpRST != 0 {
		mark |= uint64(bpf.KnockgateFlowFlagFLOW_RST_IN)
	}
	g.Flows[at].Flags |= mark
	return true
}

// Egress is the tcx egress program: the host's packet makes or refreshes
// its flow when it leaves a protected port; it never changes the packet's
// fate.
func (g *Gate) Egress(frame []byte) {
	if !g.Cfg.Policy.Flows {
		return
	}
	parsed, p := ParseFrame(frame)
	if parsed != L4 || !g.protected(p.Proto, p.Sport) {
		return
	}
	k := flowKey(&p, false)
	now := g.Clock.Coarse
	base, tag := g.flowPlace(k)
	rst := p.Proto == protoTCP && p.Flags&tcpRST != 0
	if at := g.findFlow(base, tag, k); at >= 0 {
		f := &g.Flows[at]
		if rst { // the host's RST ends it
			f.Key, f.Tag = bpf.KnockgateFlowKey{}, 0
			g.count("flows_ended")
			return
		}
		f.Last = now
		f.Flags &^= uint64(bpf.KnockgateFlowFlagFLOW_RST_IN) // the host goes on
		if p.Flags&tcpFIN != 0 {
			f.Flags |= uint64(bpf.KnockgateFlowFlagFLOW_FIN_OUT)
		}
		return
	}
	if rst {
		return // an RST never makes a flow
	}
	// A free slot of the set, else one whose flow is no longer live; a
	// live flow is never pushed out.
	way := -1
	for w := range maps.FlowWays {
		f := &g.Flows[base+w]
		if f.Tag == 0 {
			way = w
			break
		}
		if !g.live(f, now) && way < 0 {
			way = w
		}
	}
	if way < 0 {
		g.count("flows_full")
		return
	}
	f := &g.Flows[base+way]
	*f = Flow{Key: k, Last: now, Tag: tag}
	if p.Flags&tcpFIN != 0 {
		f.Flags = uint64(bpf.KnockgateFlowFlagFLOW_FIN_OUT)
	}
	g.count("flows_learned")
}

// spa judges an SPA datagram (README: "The checks", in their order) and
// grants its address when it passes; the packet is dropped either way.
func (g *Gate) spa(p *Packet) {
	outcome, addr, k := g.spaCheck(p)
	g.count(outcome)
	if outcome != "spa_accepted" {
		return
	}
	open := uint64(k.Open)
	if open == 0 {
		open = uint64(g.def().Open)
	}
	g.grant(addr, open, Event{Port: p.Dport, Proto: protoUDP, KeyID: k.ID})
}

func (g *Gate) spaCheck(p *Packet) (string, Addr, spa.Key) {
	b := p.Payload
	if !p.LenValid || len(b) != spa.Len {
		return "spa_bad_length", Addr{}, spa.Key{}
	}
	if b[0] != spa.Version || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return "spa_bad_version", Addr{}, spa.Key{}
	}
	id := binary.BigEndian.Uint32(b[4:])
	k, ok := g.Keys[id]
	if !ok {
		return "spa_unknown_key", Addr{}, spa.Key{}
	}
	if spa.Sum64(k.Secret, b[:spa.Signed]) != binary.LittleEndian.Uint64(b[spa.Signed:]) {
		return "spa_bad_tag", Addr{}, spa.Key{}
	}
	ts := binary.BigEndian.Uint64(b[8:])
	now := uint64(int64(g.Clock.TAI)-int64(g.Cfg.TAIOffset)) / 1e6
	window := uint64(g.Cfg.Policy.SPAWindow / time.Millisecond)
	if ts > now+window || ts+window < now {
		return "spa_clock", Addr{}, spa.Key{}
	}
	addr := key(p.Src)
	if want := Addr(b[32:48]); want != (Addr{}) {
		if want != addr && !k.AnyAddress {
			return "spa_bad_address", Addr{}, spa.Key{}
		}
		addr = want
	}
	last, ok := g.Last[id]
	if !ok {
		return "spa_unknown_key", Addr{}, spa.Key{}
	}
	if ts <= last {
		return "spa_replay", Addr{}, spa.Key{}
	}
	g.Last[id] = ts
	return "spa_accepted", addr, k
}

// SetKeys is `set --spa-keys`: exactly these keys; a kept key keeps its
// replay state, a removed one loses it.
func (g *Gate) SetKeys(keys []spa.Key) {
	want := map[uint32]spa.Key{}
	for _, k := range keys {
		want[k.ID] = k
	}
	for id := range g.Keys {
		if _, ok := want[id]; !ok {
			delete(g.Keys, id)
			delete(g.Last, id)
		}
	}
	for id, k := range want {
		g.Keys[id] = k
		if _, ok := g.Last[id]; !ok {
			g.Last[id] = 0
		}
	}
}

// TakeEvents returns the events not yet read.
func (g *Gate) TakeEvents() []Event {
	evs := g.Events
	g.Events = nil
	return evs
}
