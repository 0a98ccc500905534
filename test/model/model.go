package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
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
// flood"): a source's progress through one service's sequence, or free (Tag
// 0; a freed slot keeps its generation, deadline and service, which nothing
// reads while it is free).
type Slot struct {
	Addr     Addr
	Gen      uint16 // the low 16 bits of the configuration's generation
	Stage    uint8
	Service  uint8 // whose sequence: a source follows one at a time
	Deadline uint64
	Tag      uint8
}

// GrantKey is what a grant is of: a source and a service (its index).
type GrantKey struct {
	Addr    Addr
	Service uint8
}

// Grant is a grant of a source and service: until Expires; Reported once
// its expire event went out.
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
	Service       uint8  // granted, expired, or whose sequence is knocked
	KeyID         uint32 // an SPA key's id, or an fwknop stanza's number
	Fwknop        bool   // an open by an fwknop datagram
	Time, Expires uint64
}

// Clock is what the programs read: CLOCK_BOOTTIME (knocks, grants), the
// coarse monotonic clock (flows), CLOCK_TAI (SPA).
type Clock struct{ Boot, Coarse, TAI uint64 }

// MaxServices is how many services a gate holds (an SPA key's scope is a
// 32-bit mask of their indices).
const MaxServices = maps.MaxServices

// ServiceCounters are one service's counters: grants made (sequences, SPA
// packets; never the operator's) and expired grants found.
type ServiceCounters struct{ Granted, Expired uint64 }

// Gate is the whole state the datapath decides by and changes.
type Gate struct {
	// Cfg is the configuration in force, as written: its policy (the
	// allow lists included) and each service's index (Cfg.Index).
	Cfg    maps.Config
	Knocks []Slot // len: knock slots, sets of maps.KnockWays
	Flows  []Flow // len: flow slots, sets of maps.FlowWays
	Grants map[GrantKey]*Grant
	Keys   map[uint32]spa.Key
	// Scopes are each key's services (bit i: the service at index i), as
	// resolved when the keys were set, less every service a configuration
	// has removed since.
	Scopes          map[uint32]uint32
	Last            map[uint32]uint64 // per key: newest SPA timestamp accepted
	Counters        map[string]uint64 // by maps.CounterNames
	ServiceCounters [MaxServices]ServiceCounters
	Events          []Event // not yet read
	Clock           Clock
	EventBurst      uint64
	budgetNext      uint64 // the knock/reset event budget (one CPU)
	// byIndex are Cfg's services by index.
	byIndex [MaxServices]*policy.Service
	// FwknopKeys are the fwknop HMAC keys the program tries, in order;
	// FwknopSeen the datagrams it handed over, by their HMAC's text (a
	// datagram goes once, ever); FwknopOut those on their way to run, not
	// yet read.
	FwknopKeys [][]byte
	FwknopSeen map[string]FwknopSeen
	FwknopOut  []FwknopRecord
	// Paths counts how often each rule about services decided something:
	// what a run of random steps reached.
	Paths map[string]uint64
}

func (g *Gate) path(name string) { g.Paths[name]++ }

// New is an empty gate: no configuration written yet (nothing protected,
// no sequence), tables of the given sizes.
func New(knockSlots, flowSlots uint32, burst uint32) *Gate {
	return &Gate{
		Knocks:     make([]Slot, knockSlots),
		Flows:      make([]Flow, flowSlots),
		Grants:     map[GrantKey]*Grant{},
		Keys:       map[uint32]spa.Key{},
		Scopes:     map[uint32]uint32{},
		Last:       map[uint32]uint64{},
		Counters:   map[string]uint64{},
		EventBurst: uint64(burst),
		FwknopSeen: map[string]FwknopSeen{},
		Paths:      map[string]uint64{},
	}
}

// liveMask is the mask of the indices of Cfg's services.
func (g *Gate) liveMask() uint32 {
	var m uint32
	for _, i := range g.Cfg.Index {
		m |= 1 << i
	}
	return m
}

// AssignIndices is the rule that places a configuration's services in the
// program's tables: default at 0; a service the configuration in force
// (cur) has keeps its index; a new one takes the lowest index cur does not
// use (so a service removed by this very write leaves its index unused
// until the next). An error when none is left.
func AssignIndices(cur *maps.Config, p *policy.Policy) (map[string]int, error) {
	used := uint32(1)
	for _, i := range cur.Index {
		used |= 1 << i
	}
	out := map[string]int{}
	for _, s := range p.Services {
		if s.Name == policy.DefaultService {
			out[s.Name] = 0
			continue
		}
		if i, ok := cur.Index[s.Name]; ok {
			out[s.Name] = i
			continue
		}
		i := bits.TrailingZeros32(^used)
		if i >= MaxServices {
			return nil, fmt.Errorf("service %s: no free index", s.Name)
		}
		used |= 1 << i
		out[s.Name] = i
	}
	return out, nil
}

// SetConfig is a configuration write (no safe mode): c, as installed, is
// in force; a service new to the gate starts with nothing of whatever held
// its index before, and a service c no longer has goes with its grants and
// its place in every key's scope.
func (g *Gate) SetConfig(c maps.Config) {
	before := g.liveMask()
	var now uint32
	for _, i := range c.Index {
		now |= 1 << i
	}
	fresh := now &^ before &^ 1 // default's grants are default's, whenever made
	if before&^now != 0 {
		g.path("config: a service removed")
	}
	if fresh&^1 != 0 && len(g.Cfg.Index) > 0 {
		g.path("config: a service added")
	}
	for name, i := range c.Index {
		if j, ok := g.Cfg.Index[name]; ok && i == j && i != 0 {
			g.path("config: a service kept its index")
		}
	}
	if len(c.Index) >= 5 {
		g.path("config: five services at once")
	}
	g.Cfg = c
	g.byIndex = [MaxServices]*policy.Service{}
	for i := range c.Policy.Services {
		s := &c.Policy.Services[i]
		g.byIndex[c.Index[s.Name]] = s
	}
	g.purge(fresh | before&^now)
}

// purge drops the grants and counters of the services in mask and takes
// them out of every key's scope.
func (g *Gate) purge(mask uint32) {
	if mask == 0 {
		return
	}
	for i := range g.ServiceCounters {
		if mask&(1<<i) != 0 {
			g.ServiceCounters[i] = ServiceCounters{}
		}
	}
	for k := range g.Grants {
		if mask&(1<<k.Service) != 0 {
			delete(g.Grants, k)
			g.path("config: a grant of a service removed (or of an index reused) dropped")
		}
	}
	for id := range g.Scopes {
		if g.Scopes[id]&mask != 0 {
			g.path("config: a key's scope narrowed")
		}
		g.Scopes[id] &^= mask
	}
}

// index is the index of service name in the configuration in force
// (default's is 0, configured or not).
func (g *Gate) index(name string) (int, error) {
	if name == policy.DefaultService {
		return 0, nil
	}
	i, ok := g.Cfg.Index[name]
	if !ok {
		return 0, fmt.Errorf("service %s: %w", name, ErrNoService)
	}
	return i, nil
}

// ErrNoService: the gate has no service of that name.
var ErrNoService = errors.New("no such service")

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

// protector is the index of the service whose grant a packet to proto/port
// needs (the one that lists the port, else the one that protects all; a
// knock step is listed by none), or -1 when nobody protects it.
func (g *Gate) protector(proto uint8, port uint16) int {
	s := g.Cfg.Policy.Protector(policy.Port{Num: port, Proto: policy.Proto(proto)})
	if s == nil {
		return -1
	}
	return g.Cfg.Index[s.Name]
}

func (g *Gate) protected(proto uint8, port uint16) bool { return g.protector(proto, port) >= 0 }

// step says which service's sequence proto/port is a step of (its index)
// and which steps (bit i: step i); match 0 when none.
func (g *Gate) step(proto uint8, port uint16) (service int, match uint32) {
	for i, s := range g.byIndex {
		if s == nil {
			continue
		}
		for k, st := range s.Sequence {
			if st.Num == port && uint8(st.Proto) == proto {
				service, match = i, match|1<<k
			}
		}
		if match != 0 {
			return service, match
		}
	}
	return 0, 0
}

// knocks: some service has a sequence. protectAll: some service protects
// all ports.
func (g *Gate) knocks() bool {
	return slices.ContainsFunc(g.Cfg.Policy.Services, func(s policy.Service) bool { return len(s.Sequence) > 0 })
}

func (g *Gate) protectAll() bool {
	return slices.ContainsFunc(g.Cfg.Policy.Services, func(s policy.Service) bool { return s.ProtectAll })
}

// svc is the service at index i, or an empty one.
func (g *Gate) svc(i int) *policy.Service {
	if i >= 0 && i < MaxServices && g.byIndex[i] != nil {
		return g.byIndex[i]
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
		// Two forms on one port, told apart by length: knockgate's
		// binary datagrams, fwknop's base64 text.
		if fwknopForm(&p) {
			g.fwknop(&p)
		} else {
			g.spa(&p)
		}
		return g.verdict("dropped_spa")
	}
	bare := p.Flags & (tcpSYN | tcpACK | tcpRST | tcpFIN)
	isKnock := p.Proto == protoUDP || bare == tcpSYN
	if isKnock && g.knocks() && g.knock(&p) {
		return g.verdict("dropped_knock")
	}
	s := g.protector(p.Proto, p.Dport)
	if s < 0 {
		return g.verdict("passed")
	}
	if cfg.Policy.Flows && !(p.Proto == protoTCP && bare == tcpSYN) && g.flowIn(&p, true) {
		return g.verdict("passed_flow")
	}
	if s != 0 && g.svc(s).ProtectAll {
		g.path("protected: by another service's protect all")
	}
	if _, match := g.step(p.Proto, p.Dport); match != 0 {
		g.path("protected: a knock step, by the service that protects all")
	}
	if g.granted(&p, s) {
		if s != 0 {
			g.path("passed_granted: another service than default")
		}
		return g.verdict("passed_granted")
	}
	if g.allowed(p.Src, s) {
		return g.verdict("passed_allowed")
	}
	if g.grantedElsewhere(p.Src, s) {
		g.path("dropped_protected: a live grant of another service")
	}
	if g.protectAll() && p.Proto == protoUDP && (p.Sport == 67 && p.Dport == 68 || p.Sport == 547 && p.Dport == 546) {
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

// allowed: is a on the gate's allow list (every service's) or on service
// s's own?
func (g *Gate) allowed(a netip.Addr, s int) bool {
	a = a.Unmap()
	for i, list := range [][]netip.Prefix{g.Cfg.Policy.Allow, g.svc(s).Allow} {
		for _, p := range list {
			if p.Contains(a) {
				g.path([]string{"passed_allowed: the gate's list", "passed_allowed: the service's own list"}[i])
				return true
			}
		}
	}
	for i := range g.byIndex {
		if i != s && slices.ContainsFunc(g.svc(i).Allow, func(p netip.Prefix) bool { return p.Contains(a) }) {
			g.path("not allowed: on another service's list")
			break
		}
	}
	return false
}

// grantedElsewhere: has a a live grant of a service other than s? (For the
// paths reached only.)
func (g *Gate) grantedElsewhere(a netip.Addr, s int) bool {
	for k, gr := range g.Grants {
		if k.Addr == key(a) && int(k.Service) != s && g.Clock.Boot < gr.Expires {
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

// granted: a live grant of service s? An expired one is reported once
// (counted for the gate and for s) and kept.
func (g *Gate) granted(p *Packet, s int) bool {
	gr, ok := g.Grants[GrantKey{key(p.Src), uint8(s)}]
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
		g.ServiceCounters[s].Expired++
		if s != 0 {
			g.path("grant_expired: another service than default")
		}
		g.emit(Event{Type: "expire", Addr: key(p.Src), Port: p.Dport, Proto: p.Proto, Service: uint8(s), Time: now, Expires: gr.Expires})
	}
	return false
}

// grant opens service s to addr for open from now, never shortening a
// grant of s it has.
func (g *Gate) grant(addr Addr, s int, open uint64, about Event) {
	now := g.Clock.Boot
	exp := now + open
	k := GrantKey{addr, uint8(s)}
	if old, ok := g.Grants[k]; ok && old.Expires > exp {
		exp = old.Expires
	}
	g.Grants[k] = &Grant{Expires: exp}
	g.count("granted")
	g.ServiceCounters[s].Granted++
	about.Type, about.Addr, about.Service, about.Time, about.Expires = "open", addr, uint8(s), now, exp
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
// it. A source follows one sequence at a time: its progress records the
// service, and a step of another service's sequence is, to it, a wrong
// knock (a reset), after which that sequence's first step starts that one.
func (g *Gate) knock(p *Packet) bool {
	cfg := &g.Cfg
	service, match := g.step(p.Proto, p.Dport)
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
		held := int(s.Service)
		hs := g.svc(held)
		nsteps := uint8(len(hs.Sequence))
		m := uint32(0) // a step of another sequence matches none of this one's
		if held == service {
			m = match
		}
		if s.Gen == uint16(cfg.Generation) && now < s.Deadline && stage > 0 && stage < nsteps {
			switch {
			case m&(1<<stage) != 0:
				g.count("knock_advanced")
				stage++
				if stage == nsteps {
					s.free()
					if held != 0 {
						g.path("knock: another service's sequence completed")
					}
					g.grant(src, held, uint64(hs.Open), Event{Port: p.Dport, Proto: p.Proto, Stage: nsteps})
					return true
				}
				s.Stage, s.Deadline = stage, now+uint64(hs.StepTimeout)
				if g.budgeted(now) {
					g.emit(Event{Type: "knock", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: stage, Service: uint8(held), Time: now, Expires: s.Deadline})
				}
				return true
			case m&(1<<stage-1) != 0:
				g.count("knock_repeated") // a retransmission of a step taken
				return true
			default:
				s.free()
				g.count("knock_reset")
				if match != 0 && held != service {
					g.path("knock: progress reset by a step of another service's sequence")
					if match&1 != 0 {
						g.path("knock: another service's first step starts its sequence after the reset")
					}
				}
				if g.budgeted(now) {
					g.emit(Event{Type: "reset", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: stage, Service: uint8(held), Time: now})
				}
				if match&1 == 0 {
					return match != 0
				}
				// The first step of another sequence: on to start it, in
				// the slot just freed.
			}
		} else {
			// Expired, or made under another configuration: no progress,
			// and the slot is free again.
			s.free()
		}
		// The slot freed is the first free one, unless the look passed one
		// before it.
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
	if g.granted(p, service) {
		g.count("knock_while_granted")
		if g.grantedElsewhere(p.Src, -1) && service != 0 {
			g.path("knock_while_granted: another service than default")
		}
		return true
	}
	if g.grantedElsewhere(p.Src, service) {
		g.path("knock: a first step while granted another service")
	}
	svc := g.svc(service)
	nsteps := uint8(len(svc.Sequence))
	g.count("knock_advanced")
	if nsteps == 1 {
		g.grant(src, service, uint64(svc.Open), Event{Port: p.Dport, Proto: p.Proto, Stage: nsteps})
		return true
	}
	if !searched {
		_, victim, _ = g.search(base, tag, src)
	}
	s := &g.Knocks[base+victim]
	*s = Slot{Addr: src, Gen: uint16(cfg.Generation), Stage: 1, Service: uint8(service), Deadline: now + uint64(svc.StepTimeout), Tag: tag}
	if g.budgeted(now) {
		g.emit(Event{Type: "knock", Addr: src, Port: p.Dport, Proto: p.Proto, Stage: 1, Service: uint8(service), Time: now, Expires: s.Deadline})
	}
	return true
}

// Revoke is `knockgate revoke [--service S]`: the grant of service ("":
// of every service) goes, and the knock progress of a source following
// that service's sequence (any sequence, for every service).
func (g *Gate) Revoke(a netip.Addr, service string) error {
	k := key(a)
	only := -1
	if service != "" {
		i, err := g.index(service)
		if err != nil {
			return err
		}
		only = i
	}
	for s := range MaxServices {
		if only < 0 || s == only {
			delete(g.Grants, GrantKey{k, uint8(s)})
		}
	}
	base, _ := g.place(k)
	for w := range maps.KnockWays {
		if sl := &g.Knocks[base+w]; sl.Addr == k {
			if only < 0 || int(sl.Service) == only {
				*sl = Slot{}
			}
			return nil
		}
	}
	return nil
}

// GrantFor is `knockgate grant [--service S]`: a grant until expires,
// reported anew; not counted as the program's grants are.
func (g *Gate) GrantFor(a netip.Addr, service string, expires uint64) error {
	i, err := g.index(service)
	if err != nil {
		return err
	}
	g.Grants[GrantKey{key(a), uint8(i)}] = &Grant{Expires: expires}
	return nil
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
// grants its address each service it opens when it passes (each for the
// key's window, else the service's own; one open event each, in index
// order); the packet is dropped either way.
func (g *Gate) spa(p *Packet) {
	outcome, addr, k, services := g.spaCheck(p)
	g.count(outcome)
	if outcome != "spa_accepted" {
		return
	}
	if len(p.Payload) == spa.LenRequest {
		g.path("spa: a version-2 packet accepted")
	}
	if bits.OnesCount32(services) > 1 {
		g.path("spa: one packet opened several services")
	}
	if services&^1 != 0 {
		g.path("spa: opened another service than default")
	}
	for s := range MaxServices {
		if services&(1<<s) == 0 {
			continue
		}
		open := uint64(k.Open)
		if open == 0 {
			open = uint64(g.svc(s).Open)
		}
		g.grant(addr, s, open, Event{Port: p.Dport, Proto: protoUDP, KeyID: k.ID})
	}
}

// spaCheck: the outcome, and for an accepted packet the address it opens,
// its key and the services it opens (bit i: index i).
func (g *Gate) spaCheck(p *Packet) (string, Addr, spa.Key, uint32) {
	b := p.Payload
	if !p.LenValid || len(b) != spa.Len && len(b) != spa.LenRequest {
		return "spa_bad_length", Addr{}, spa.Key{}, 0
	}
	request := len(b) == spa.LenRequest
	version, signed := byte(spa.Version), spa.Signed
	if request {
		version, signed = spa.VersionRequest, spa.SignedRequest
	}
	if b[0] != version || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return "spa_bad_version", Addr{}, spa.Key{}, 0
	}
	id := binary.BigEndian.Uint32(b[4:])
	k, ok := g.Keys[id]
	if !ok {
		return "spa_unknown_key", Addr{}, spa.Key{}, 0
	}
	if spa.Sum64(k.Secret, b[:signed]) != binary.LittleEndian.Uint64(b[signed:]) {
		return "spa_bad_tag", Addr{}, spa.Key{}, 0
	}
	ts := binary.BigEndian.Uint64(b[8:])
	now := uint64(int64(g.Clock.TAI)-int64(g.Cfg.TAIOffset)) / 1e6
	window := uint64(g.Cfg.Policy.SPAWindow / time.Millisecond)
	if ts > now+window || ts+window < now {
		return "spa_clock", Addr{}, spa.Key{}, 0
	}
	addr := key(p.Src)
	if want := Addr(b[32:48]); want != (Addr{}) {
		if want != addr && !k.AnyAddress {
			return "spa_bad_address", Addr{}, spa.Key{}, 0
		}
		addr = want
	}
	// The key's services the gate has, or the ones the packet asks for:
	// every one of those the key's and the gate's, and at least one.
	scope := g.Scopes[id] & g.liveMask()
	if request {
		var want uint32
		for i := range spa.MaxRequest {
			h := binary.BigEndian.Uint32(b[spa.Signed+4*i:])
			if h == 0 {
				continue
			}
			s := g.byHash(h)
			if s < 0 {
				g.path("spa_bad_service: a request for a service the gate lacks")
				return "spa_bad_service", Addr{}, spa.Key{}, 0
			}
			want |= 1 << s
		}
		if want == 0 {
			g.path("spa_bad_service: an empty request")
			return "spa_bad_service", Addr{}, spa.Key{}, 0
		}
		if want&^scope != 0 {
			g.path("spa_bad_service: a request outside the key's scope")
			return "spa_bad_service", Addr{}, spa.Key{}, 0
		}
		scope = want
	}
	if scope == 0 {
		g.path("spa_bad_service: a key left without services")
		return "spa_bad_service", Addr{}, spa.Key{}, 0
	}
	last, ok := g.Last[id]
	if !ok {
		return "spa_unknown_key", Addr{}, spa.Key{}, 0
	}
	if ts <= last {
		return "spa_replay", Addr{}, spa.Key{}, 0
	}
	g.Last[id] = ts
	return "spa_accepted", addr, k, scope
}

// byHash is the index of the service whose name hashes to h, or -1.
func (g *Gate) byHash(h uint32) int {
	for i, s := range g.byIndex {
		if s != nil && spa.ServiceHash(s.Name) == h {
			return i
		}
	}
	return -1
}

// SetKeys is `set --spa-keys`: exactly these keys, each scoped to its
// services under the configuration in force (a service it lacks: an error,
// and nothing changes); a kept key keeps its replay state, a removed one
// loses it.
func (g *Gate) SetKeys(keys []spa.Key) error {
	scopes := map[uint32]uint32{}
	for _, k := range keys {
		var m uint32
		for _, name := range k.Scope() {
			i, err := g.index(name)
			if err != nil {
				return fmt.Errorf("SPA key %s: %w", k.Name, err)
			}
			m |= 1 << i
		}
		scopes[k.ID] = m
	}
	for id := range g.Keys {
		if _, ok := scopes[id]; !ok {
			delete(g.Keys, id)
			delete(g.Scopes, id)
			delete(g.Last, id)
		}
	}
	for _, k := range keys {
		g.Keys[k.ID] = k
		g.Scopes[k.ID] = scopes[k.ID]
		if _, ok := g.Last[k.ID]; !ok {
			g.Last[k.ID] = 0
		}
	}
	return nil
}

// TakeEvents returns the events not yet read.
func (g *Gate) TakeEvents() []Event {
	evs := g.Events
	g.Events = nil
	return evs
}
