package maps

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// MaxSteps is the longest knock sequence the program accepts.
const MaxSteps = policy.MaxSteps

// The policy's numbers are the C ABI's and the kernel's (policy cannot
// import either to say so itself).
var (
	_ [0]struct{} = [len(bpf.KnockgateService{}.Steps) - policy.MaxSteps]struct{}{}
	_ [0]struct{} = [policy.MaxSteps - len(bpf.KnockgateService{}.Steps)]struct{}{}
	_ [0]struct{} = [int(policy.TCP) - unix.IPPROTO_TCP]struct{}{}
	_ [0]struct{} = [int(policy.UDP) - unix.IPPROTO_UDP]struct{}{}
)

// Port, Proto, TCP and UDP are policy's, named here too for the tests of
// bpf/ and test/ and for test/bench, which others are editing: new code
// names policy's, and these go once those do.
type (
	Port  = policy.Port
	Proto = policy.Proto
)

const (
	TCP = policy.TCP
	UDP = policy.UDP
)

// MaxServices is how many services a gate holds (KG_MAX_SERVICES): an SPA
// key's scope is a 32-bit mask of them.
const MaxServices = len(bpf.KnockgateConfig{}.Services)

var _ [0]struct{} = [MaxServices - policy.MaxServices]struct{}{}

// Config is what a configuration slot holds: a policy, and what only the
// encoding needs. The policy's allow lists are entries of the allow trie
// (WriteConfig writes them; a slot holds only their counts).
type Config struct {
	Policy policy.Policy
	// TAIOffset is the kernel's TAI offset as of the write (see TAIOffset):
	// set by Set.WriteConfig.
	TAIOffset time.Duration
	// ConfirmBy (a CLOCK_BOOTTIME stamp, see BootAfter) makes this a
	// safe-mode change: unless confirmed by then, the program goes back to
	// the configuration before it. 0: an ordinary change.
	ConfirmBy uint64
	// Generation changes on every write; knock progress made under another
	// generation is void. Maintained by Set.WriteConfig.
	Generation uint32
	// SlotKey keys the hash that places sources in the knock table (see
	// KnockSlot): random, made with the gate (NewSlotKey), kept by every
	// write that leaves it zero.
	SlotKey [2]uint64
	// Index is each service's index in the program's tables, by name:
	// assigned by WriteConfig (a service keeps its index as long as it
	// exists), read back by ReadConfig.
	Index map[string]int
	// AllowEpoch is the epoch of the allow trie's entries this
	// configuration has (see allow.go): set by WriteConfig.
	AllowEpoch uint8
}

// FromPolicy is the configuration that installs p.
func FromPolicy(p *policy.Policy) Config {
	return Config{Policy: p.Clone()}
}

// Validate reports the first thing wrong with the policy c holds (see
// policy.Policy.Validate).
func (c *Config) Validate() error {
	return c.Policy.Validate()
}

// Same says whether the program does the same under c and o: the same
// policy (policy.Diff) and deadline. The generation, TAI offset, slot key
// and indices are the writer's to keep or set, not a policy's to ask for.
func (c *Config) Same(o *Config) bool {
	return len(policy.Diff(&c.Policy, &o.Policy)) == 0 && c.ConfirmBy == o.ConfirmBy
}

// NewSlotKey makes a random slot key.
func NewSlotKey() ([2]uint64, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return [2]uint64{}, fmt.Errorf("make slot key: %w", err)
	}
	return [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}, nil
}

// assignIndices gives each service of p its index: the one its name has in
// the configuration in force (cur), else the lowest free one, never one
// that cur holds for another name (a service just removed keeps its index
// out of use for one write, so nothing of it can reach a newcomer while the
// slot before still names it). The service default is always 0. fresh are
// the indices given to services cur does not have.
func assignIndices(p *policy.Policy, cur *bpf.KnockgateConfig) (index map[string]int, fresh []int, err error) {
	index = make(map[string]int, len(p.Services))
	held := map[string]int{}
	for i := range cur.Services {
		if cur.LiveServices&(1<<i) != 0 {
			held[cString(cur.Services[i].Name[:])] = i
		}
	}
	used := cur.LiveServices | 1 // default's, whatever cur holds
	for _, s := range p.Services {
		if s.Name == policy.DefaultService {
			index[s.Name] = 0
			if _, ok := held[s.Name]; !ok {
				fresh = append(fresh, 0)
			}
			continue
		}
		if i, ok := held[s.Name]; ok && i != 0 {
			index[s.Name] = i
			continue
		}
		i := bits.TrailingZeros32(^used)
		if i >= MaxServices {
			return nil, nil, fmt.Errorf("service %s: no free index (a gate holds %d services, and one just removed keeps its index for one change)", s.Name, MaxServices)
		}
		used |= 1 << i
		index[s.Name] = i
		fresh = append(fresh, i)
	}
	return index, fresh, nil
}

// cString is a NUL-padded name.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// encode converts c to the C layout, services at c.Index.
func (c *Config) encode() (*bpf.KnockgateConfig, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &c.Policy
	raw := &bpf.KnockgateConfig{
		SlotKey:       c.SlotKey,
		ConfirmByNs:   c.ConfirmBy,
		FlowIdleTcpNs: uint64(p.FlowIdleTCP),
		FlowIdleUdpNs: uint64(p.FlowIdleUDP),
		Generation:    c.Generation,
		AllowCount:    uint32(len(uniqueCIDRs(p.Allow))),
		SpaPort:       p.SPAPort,
		SpaWindowMs:   uint64(p.SPAWindow / time.Millisecond),
		TaiOffsetNs:   int64(c.TAIOffset),
		AllowEpoch:    c.AllowEpoch,
	}
	if p.Flows {
		raw.Flags |= uint8(bpf.KnockgateConfigFlagCONFIG_FLOWS)
	}
	all := -1
	for _, s := range p.Services {
		i, ok := c.Index[s.Name]
		if !ok || i < 0 || i >= MaxServices {
			return nil, fmt.Errorf("service %s has no index", s.Name)
		}
		svc := &raw.Services[i]
		svc.StepTimeoutNs = uint64(s.StepTimeout)
		svc.OpenNs = uint64(s.Open)
		svc.NameHash = spa.ServiceHash(s.Name)
		svc.AllowCount = uint32(len(uniqueCIDRs(s.Allow)))
		svc.Nsteps = uint8(len(s.Sequence))
		svc.Live = 1
		copy(svc.Name[:len(svc.Name)-1], s.Name)
		raw.LiveServices |= 1 << i
		for k, st := range s.Sequence {
			svc.Steps[k] = bpf.KnockgateStep{Port: st.Num, Proto: uint8(st.Proto)}
			raw.Ports[portTable(st.Proto)][st.Num] = portStep | uint8(i)
			raw.Flags |= uint8(bpf.KnockgateConfigFlagCONFIG_KNOCKS)
		}
		if s.ProtectAll {
			all = i
			continue
		}
		for _, pt := range s.Protect {
			raw.Ports[portTable(pt.Proto)][pt.Num] = uint8(i) + 1
		}
	}
	if all >= 0 {
		raw.AllService = uint8(all) + 1
		raw.Flags |= uint8(bpf.KnockgateConfigFlagCONFIG_PROTECT_ALL)
		for t := range raw.Ports {
			for port, e := range raw.Ports[t] {
				if e == 0 {
					raw.Ports[t][port] = raw.AllService
				}
			}
		}
	}
	return raw, nil
}

// The port table's encoding (KG_PORT_STEP).
const (
	portStep    = 0x80
	portService = 0x7f
)

// portTable is the index of proto's half of the port table.
func portTable(proto policy.Proto) int {
	if proto == policy.UDP {
		return 1
	}
	return 0
}

// DecodeConfig converts the C layout back to a Config, without the allow
// lists (entries of the allow trie: Set.ReadConfig adds them).
func DecodeConfig(raw *bpf.KnockgateConfig) Config {
	c := Config{
		SlotKey:    raw.SlotKey,
		ConfirmBy:  raw.ConfirmByNs,
		Generation: raw.Generation,
		TAIOffset:  time.Duration(raw.TaiOffsetNs),
		Index:      map[string]int{},
		AllowEpoch: raw.AllowEpoch,
		Policy: policy.Policy{
			Flows:       raw.Flags&uint8(bpf.KnockgateConfigFlagCONFIG_FLOWS) != 0,
			FlowIdleTCP: time.Duration(raw.FlowIdleTcpNs),
			FlowIdleUDP: time.Duration(raw.FlowIdleUdpNs),
			SPAPort:     raw.SpaPort,
			SPAWindow:   time.Duration(raw.SpaWindowMs) * time.Millisecond,
		},
	}
	var services [MaxServices]*policy.Service
	for i := range raw.Services {
		if raw.LiveServices&(1<<i) == 0 {
			continue
		}
		r := &raw.Services[i]
		s := &policy.Service{
			Name:        cString(r.Name[:]),
			StepTimeout: time.Duration(r.StepTimeoutNs),
			Open:        time.Duration(r.OpenNs),
			ProtectAll:  int(raw.AllService) == i+1,
		}
		for k := 0; k < int(r.Nsteps) && k < MaxSteps; k++ {
			s.Sequence = append(s.Sequence, policy.Port{Num: r.Steps[k].Port, Proto: policy.Proto(r.Steps[k].Proto)})
		}
		services[i] = s
		c.Index[s.Name] = i
	}
	for t, proto := range []policy.Proto{policy.TCP, policy.UDP} {
		for port, e := range raw.Ports[t] {
			if e == 0 || e&portStep != 0 || int(e) == int(raw.AllService) {
				continue
			}
			if i := int(e) - 1; i < MaxServices && services[i] != nil {
				services[i].Protect = append(services[i].Protect, policy.Port{Num: uint16(port), Proto: proto})
			}
		}
	}
	// default first (a gate not yet configured has it too, empty, as
	// every policy does), the rest in index order.
	if services[0] == nil {
		services[0] = &policy.Service{Name: policy.DefaultService}
		c.Index[policy.DefaultService] = 0
	}
	for _, s := range services {
		if s != nil {
			c.Policy.Services = append(c.Policy.Services, *s)
		}
	}
	return c
}

// uniqueCIDRs is prefixes masked, each once.
func uniqueCIDRs(prefixes []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		if p = p.Masked(); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// The program reads configs[config_slot]: a write fills the idle slot,
// flips config_slot with one 32-bit store, and then waits for an RCU grace
// period, after which no running program can still be reading the old slot;
// so a configuration is in force for every packet once its write returns.
// The slot left behind keeps the configuration before it, which is what a
// safe-mode change (Config.ConfirmBy) falls back to. Writers must not run
// concurrently (loader.Gate holds a lock).

var (
	// ErrAwaitingConfirm: a safe-mode change is in force and awaits
	// confirmation; nothing else may change the configuration meanwhile.
	ErrAwaitingConfirm = errors.New("a change awaits confirmation")
	// ErrNothingToConfirm: no safe-mode change is in force.
	ErrNothingToConfirm = errors.New("no change awaits confirmation")
	// ErrRolledBack: the safe-mode change was not confirmed in time and the
	// configuration before it is in force again.
	ErrRolledBack = errors.New("the change was not confirmed in time and has been rolled back")
)

// SafeMode describes a safe-mode change: Pending while it is in force and
// awaits confirmation, Lapsed once its deadline has passed (the program then
// runs Previous again).
type SafeMode struct {
	Pending, Lapsed bool
	Deadline        uint64 // CLOCK_BOOTTIME
	Change          Config // the change
	Previous        Config // what it falls back to
}

// slots reads both configuration slots and the index of the live one.
func (s *Set) slots() (live uint32, cfgs [2]bpf.KnockgateConfig, err error) {
	if err := s.ConfigSlot.Lookup(uint32(0), &live); err != nil {
		return 0, cfgs, fmt.Errorf("read config slot: %w", err)
	}
	live &= 1
	for i := range cfgs {
		if err := s.Configs.Lookup(uint32(i), &cfgs[i]); err != nil {
			return 0, cfgs, fmt.Errorf("read config slot %d: %w", i, err)
		}
	}
	return live, cfgs, nil
}

// readSlot decodes a slot's configuration, with its allow lists.
func (s *Set) readSlot(raw *bpf.KnockgateConfig) (Config, error) {
	c := DecodeConfig(raw)
	if err := s.allowOf(raw.AllowEpoch, &c); err != nil {
		return Config{}, err
	}
	return c, nil
}

// lapsed: raw is a safe-mode change whose deadline has passed.
func lapsed(raw *bpf.KnockgateConfig) bool {
	d := raw.ConfirmByNs
	return d != 0 && BootNow() >= d
}

// rawPool recycles the buffers of readInForce: a configuration is 131 KiB,
// and every grant of a named service reads one.
var rawPool = sync.Pool{New: func() any { return new(bpf.KnockgateConfig) }}

// readInForce reads the raw configuration in force, the one the program
// runs (the live slot's, or, once a safe-mode change there has lapsed, the
// one before it), into a buffer of rawPool, which the caller puts back: one
// slot read, a second only when the live slot's change has lapsed.
func (s *Set) readInForce() (*bpf.KnockgateConfig, error) {
	var live uint32
	if err := s.ConfigSlot.Lookup(uint32(0), &live); err != nil {
		return nil, fmt.Errorf("read config slot: %w", err)
	}
	live &= 1
	raw := rawPool.Get().(*bpf.KnockgateConfig)
	if err := s.Configs.Lookup(live, raw); err != nil {
		rawPool.Put(raw)
		return nil, fmt.Errorf("read config slot %d: %w", live, err)
	}
	if lapsed(raw) {
		if err := s.Configs.Lookup(live^1, raw); err != nil {
			rawPool.Put(raw)
			return nil, fmt.Errorf("read config slot %d: %w", live^1, err)
		}
	}
	return raw, nil
}

// ReadConfig returns the configuration in force.
func (s *Set) ReadConfig() (Config, error) {
	raw, err := s.readInForce()
	if err != nil {
		return Config{}, err
	}
	defer rawPool.Put(raw)
	return s.readSlot(raw)
}

// WritableConfig returns the configuration a write starts from, for a
// writer holding the gate's lock: while a safe-mode change awaits
// confirmation it refuses (ErrAwaitingConfirm); once the change has lapsed it
// finishes its rollback first. Read otherwise, a configuration read just
// before the deadline would be the change itself, and a write made from it
// just after would bring the change back as the rollback's successor.
func (s *Set) WritableConfig() (Config, error) {
	live, cfgs, err := s.slots()
	if err != nil {
		return Config{}, err
	}
	if d := cfgs[live].ConfirmByNs; d != 0 {
		if BootNow() < d {
			return Config{}, ErrAwaitingConfirm
		}
		if live, err = s.flip(live); err != nil {
			return Config{}, err
		}
		if err := s.Tidy(); err != nil {
			return Config{}, err
		}
	}
	return s.readSlot(&cfgs[live])
}

// ReadSafeMode reports the safe-mode change in the live slot, if any.
func (s *Set) ReadSafeMode() (SafeMode, error) {
	live, cfgs, err := s.slots()
	if err != nil {
		return SafeMode{}, err
	}
	deadline := cfgs[live].ConfirmByNs
	if deadline == 0 {
		return SafeMode{}, nil
	}
	lapsed := BootNow() >= deadline
	change, err := s.readSlot(&cfgs[live])
	if err != nil {
		return SafeMode{}, err
	}
	prev, err := s.readSlot(&cfgs[live^1])
	if err != nil {
		return SafeMode{}, err
	}
	return SafeMode{Pending: !lapsed, Lapsed: lapsed, Deadline: deadline, Change: change, Previous: prev}, nil
}

// WriteConfig installs c and returns it as installed, with a generation
// newer than both slots' and its services' indices. A change awaiting
// confirmation refuses it (ErrAwaitingConfirm); one that has lapsed is
// rolled back for good first.
//
// In order, so that a packet never meets half of it and a killed write is
// finished by the next: a service new to the gate gets an index nothing of
// an older service's is left under (grants, allow entries, key scopes: a
// killed Tidy may have left some); the allow entries go in; the slot is
// written and made live; and, unless the change awaits confirmation, what
// only the configuration before it had goes (Tidy).
func (s *Set) WriteConfig(c Config) (Config, error) {
	// The grace period at the end of the last write may not have been
	// waited for (that writer was killed after its flip): wait now, before
	// the slot it left is overwritten.
	s.syncRCU()
	live, cfgs, err := s.slots()
	if err != nil {
		return Config{}, err
	}
	if deadline := cfgs[live].ConfirmByNs; deadline != 0 {
		if BootNow() < deadline {
			return Config{}, ErrAwaitingConfirm
		}
		if live, err = s.flip(live); err != nil {
			return Config{}, err
		}
	}
	c.Policy = c.Policy.Clone()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	var fresh []int
	if c.Index, fresh, err = assignIndices(&c.Policy, &cfgs[live]); err != nil {
		return Config{}, err
	}
	c.Generation = max(cfgs[0].Generation, cfgs[1].Generation) + 1
	if c.TAIOffset, err = TAIOffset(); err != nil {
		return Config{}, err
	}
	if c.SlotKey == [2]uint64{} {
		// Another key would move every source to another slot.
		c.SlotKey = cfgs[live].SlotKey
	}
	// A new allow epoch: the list of the configuration in force stays its
	// own (the slot about to be overwritten holds the only other).
	c.AllowEpoch = cfgs[live].AllowEpoch + 1
	raw, err := c.encode()
	if err != nil {
		return Config{}, err
	}
	var gone uint32
	for _, i := range fresh {
		if i != 0 { // default's grants are default's, whenever made
			gone |= 1 << i
		}
	}
	if err := s.purgeServices(gone); err != nil {
		return Config{}, err
	}
	if err := s.writeAllow(c.AllowEpoch, &c); err != nil {
		return Config{}, err
	}
	KillPoint()
	if err := s.install(live, raw); err != nil {
		return Config{}, err
	}
	if c.ConfirmBy == 0 {
		if err := s.Tidy(); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

// Tidy drops what no configuration that may still be in force uses: when
// no safe-mode change is pending, the slot behind the live one cannot come
// back, so the allow entries of its epoch go, and so do the grants, allow
// entries and key scopes of services the live configuration does not have.
// Every write and settlement runs it, under the gate's lock; one that is
// killed is finished by the next.
func (s *Set) Tidy() error {
	live, cfgs, err := s.slots()
	if err != nil {
		return err
	}
	if cfgs[live].ConfirmByNs != 0 {
		return nil // pending, or lapsed and not yet rolled back for good
	}
	epoch := cfgs[live].AllowEpoch
	if err := s.dropAllow(func(e allowEntry) bool { return e.epoch == epoch }); err != nil {
		return err
	}
	return s.purgeServices(cfgs[live^1].LiveServices &^ cfgs[live].LiveServices)
}

// purgeServices deletes every grant, allow entry and key scope of the
// services in mask (bit i: the service at index i).
func (s *Set) purgeServices(mask uint32) error {
	if mask == 0 {
		return nil
	}
	var key bpf.KnockgateGrantKey
	var g bpf.KnockgateGrant
	var doomed []bpf.KnockgateGrantKey
	it := s.Grants.Iterate()
	for it.Next(&key, &g) {
		if int(key.Service) < MaxServices && mask&(1<<key.Service) != 0 {
			doomed = append(doomed, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate grants: %w", err)
	}
	for _, k := range doomed {
		if _, err := s.deleteGrant(k); err != nil {
			// What was deleted must not pass from the cache either.
			return errors.Join(fmt.Errorf("remove a grant of a removed service: %w", err), s.VoidCache())
		}
	}
	if err := s.VoidCache(); err != nil {
		return fmt.Errorf("remove the grants of a removed service: %w", err)
	}
	if err := s.dropAllow(func(e allowEntry) bool {
		return e.service == allowAny || e.service >= MaxServices || mask&(1<<e.service) == 0
	}); err != nil {
		return err
	}
	if err := s.zeroServiceCounters(mask); err != nil {
		return err
	}
	return s.narrowKeys(^mask)
}

// zeroServiceCounters starts the counters of the services in mask afresh:
// a service that takes a freed index must not inherit its predecessor's.
func (s *Set) zeroServiceCounters(mask uint32) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	zero := make([]uint64, ncpu)
	per := uint32(bpf.KnockgateServiceCounterSERVICE_COUNTER_MAX)
	for i := range uint32(MaxServices) {
		if mask&(1<<i) == 0 {
			continue
		}
		for c := range per {
			if err := s.ServiceCounters.Update(i*per+c, zero, ebpf.UpdateExist); err != nil {
				return fmt.Errorf("reset the counters of service %d: %w", i, err)
			}
		}
	}
	return nil
}

// ConfirmConfig makes the safe-mode change in force permanent: the same
// configuration, same generation (knock progress made under it stays
// valid), without a deadline. Too late, it rolls the change back for good
// and returns ErrRolledBack.
func (s *Set) ConfirmConfig() (Config, error) {
	s.syncRCU()
	live, cfgs, err := s.slots()
	if err != nil {
		return Config{}, err
	}
	raw := cfgs[live]
	switch {
	case raw.ConfirmByNs == 0:
		return Config{}, ErrNothingToConfirm
	case BootNow() >= raw.ConfirmByNs:
		if _, err := s.flip(live); err != nil {
			return Config{}, err
		}
		if err := s.Tidy(); err != nil {
			return Config{}, err
		}
		return Config{}, ErrRolledBack
	}
	// The change, without its deadline (and with its allow epoch), goes
	// into the other slot, over the configuration before it; the services
	// only that one had go after (Tidy cannot see them once it is
	// overwritten).
	c, err := s.readSlot(&cfgs[live])
	if err != nil {
		return Config{}, err
	}
	c.ConfirmBy = 0
	gone := cfgs[live^1].LiveServices &^ raw.LiveServices
	raw.ConfirmByNs = 0
	if err := s.install(live, &raw); err != nil {
		return Config{}, err
	}
	if err := s.Tidy(); err != nil {
		return Config{}, err
	}
	return c, s.purgeServices(gone)
}

// RefreshClock records the kernel's TAI offset now in the configuration in
// force (see TAIOffset), keeping everything else, its generation included:
// knock progress stays valid. It reports whether the offset had changed.
// While a safe-mode change awaits confirmation it refuses
// (ErrAwaitingConfirm): the slot it would write is the fallback.
func (s *Set) RefreshClock() (bool, error) {
	off, err := TAIOffset()
	if err != nil {
		return false, err
	}
	// Cheap when nothing changed, as nearly always (run asks every second).
	if live, cfgs, err := s.slots(); err != nil || cfgs[live].TaiOffsetNs == int64(off) {
		return false, err
	}
	s.syncRCU() // as WriteConfig: the last writer's grace period
	live, cfgs, err := s.slots()
	if err != nil {
		return false, err
	}
	raw := cfgs[live]
	if raw.ConfirmByNs != 0 {
		return false, ErrAwaitingConfirm
	}
	raw.TaiOffsetNs = int64(off)
	return true, s.install(live, &raw)
}

// Settlement is what became of a safe-mode change.
type Settlement int

const (
	// SettlePending: it is in force and awaits confirmation.
	SettlePending Settlement = iota
	// SettleConfirmed: it was confirmed, and is in force for good (or was,
	// until a later write).
	SettleConfirmed
	// SettleRolledBack: it lapsed, and the configuration before it is in
	// force again (perhaps changed since by a later write).
	SettleRolledBack
)

// Settle reports what became of the safe-mode change written as generation
// gen, and finishes its rollback if it lapsed unconfirmed (the program has
// gone back already; this makes the slot before it live for good). The
// caller holds the gate's lock, so no other write comes between the reading
// and the flip.
//
// Without a deadline in force the slots tell the story: a confirmed change
// stays in its slot (live, or idle behind one later write), while a rolled
// back one was flipped away from and its slot overwritten by the next write.
// Two writes after a confirmation before Settle is asked leave no trace of
// it; that reads as rolled back.
func (s *Set) Settle(gen uint32) (Settlement, error) {
	live, cfgs, err := s.slots()
	if err != nil {
		return SettlePending, err
	}
	if d := cfgs[live].ConfirmByNs; d != 0 {
		if BootNow() < d {
			return SettlePending, nil
		}
		if _, err := s.flip(live); err != nil {
			return SettlePending, err
		}
		return SettleRolledBack, s.Tidy()
	}
	for _, c := range cfgs {
		if c.Generation == gen && c.ConfirmByNs == 0 {
			return SettleConfirmed, s.Tidy()
		}
	}
	return SettleRolledBack, s.Tidy()
}

// install writes raw into the slot that is not live and makes it live.
func (s *Set) install(live uint32, raw *bpf.KnockgateConfig) error {
	idle := live ^ 1
	if err := s.Configs.Update(idle, raw, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write config slot %d: %w", idle, err)
	}
	KillPoint()
	_, err := s.flip(live)
	return err
}

// flip makes the slot that is not live the live one, and waits until no
// program still reads the other.
func (s *Set) flip(live uint32) (uint32, error) {
	idle := live ^ 1
	if err := s.ConfigSlot.Update(uint32(0), idle, ebpf.UpdateAny); err != nil {
		return live, fmt.Errorf("switch to config slot %d: %w", idle, err)
	}
	KillPoint()
	s.syncRCU()
	return idle, nil
}

// syncRCU waits until every CPU has passed through a quiescent state: XDP
// programs run inside an RCU read-side section, so afterwards none still holds
// a pointer to the slot we left. MEMBARRIER_CMD_GLOBAL is implemented with
// synchronize_rcu(); where it is unavailable, a pause far longer than any
// program run serves. A set whose program only tests run (NoGraceWait) has
// nothing to wait for.
func (s *Set) syncRCU() {
	if s.NoGraceWait {
		return
	}
	const membarrierCmdGlobal = 1 // MEMBARRIER_CMD_GLOBAL, linux/membarrier.h
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		time.Sleep(50 * time.Millisecond)
	}
}
