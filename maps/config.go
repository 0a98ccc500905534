package maps

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
)

// MaxSteps is the longest knock sequence the program accepts.
const MaxSteps = policy.MaxSteps

// The policy's numbers are the C ABI's and the kernel's (policy cannot
// import either to say so itself).
var (
	_ [0]struct{} = [len(bpf.KnockgateConfig{}.Steps) - policy.MaxSteps]struct{}{}
	_ [0]struct{} = [policy.MaxSteps - len(bpf.KnockgateConfig{}.Steps)]struct{}{}
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

// Config is what a configuration slot holds: a policy as the C ABI has it
// (one service, default, whose settings are flat here beside the gate's;
// its allow list is a map of its own, see Set.SetAllow), and what only the
// encoding needs. FromPolicy and Config.Policy convert.
type Config struct {
	// The service default's settings (policy.Service).
	Sequence    []policy.Port
	StepTimeout time.Duration
	Open        time.Duration
	Protected   []policy.Port
	ProtectAll  bool
	// The gate's settings (policy.Policy).
	Flows       bool
	FlowIdleTCP time.Duration
	FlowIdleUDP time.Duration
	SPAPort     uint16
	SPAWindow   time.Duration

	// TAIOffset is the kernel's TAI offset as of the write (see TAIOffset):
	// set by Set.WriteConfig.
	TAIOffset time.Duration
	// AllowCount is the number of allow-list entries; the program skips the
	// allow lookup when it is zero. Maintained by the writers of the allow
	// list (Set.SetAllow's callers).
	AllowCount uint32
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
}

// FromPolicy is the configuration that installs p, which must be valid
// (its allow list goes to the allow map; only its count is here, which the
// caller sets).
func FromPolicy(p *policy.Policy) (Config, error) {
	var c Config
	return c, c.SetPolicy(p)
}

// SetPolicy makes c hold p, which must be valid, keeping what only the
// encoding needs (AllowCount among it).
func (c *Config) SetPolicy(p *policy.Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	d := p.Default()
	c.Sequence, c.StepTimeout, c.Open = d.Sequence, d.StepTimeout, d.Open
	c.Protected, c.ProtectAll = d.Protect, d.ProtectAll
	c.Flows, c.FlowIdleTCP, c.FlowIdleUDP = p.Flows, p.FlowIdleTCP, p.FlowIdleUDP
	c.SPAPort, c.SPAWindow = p.SPAPort, p.SPAWindow
	return nil
}

// Policy is the policy c holds, with allow as its allow list (read from
// the allow map: Set.AllowList).
func (c *Config) Policy(allow []netip.Prefix) policy.Policy {
	return policy.Policy{
		Services: []policy.Service{{
			Name:        policy.DefaultService,
			Sequence:    c.Sequence,
			StepTimeout: c.StepTimeout,
			Open:        c.Open,
			Protect:     c.Protected,
			ProtectAll:  c.ProtectAll,
		}},
		Allow:       allow,
		Flows:       c.Flows,
		FlowIdleTCP: c.FlowIdleTCP,
		FlowIdleUDP: c.FlowIdleUDP,
		SPAPort:     c.SPAPort,
		SPAWindow:   c.SPAWindow,
	}
}

// Same says whether the program does the same under c and o: the same
// policy (policy.Diff; the allow list aside, a map of its own), the same
// allow count and deadline. The generation, TAI offset and slot key are
// the writer's to keep or set, not a policy's to ask for.
func (c *Config) Same(o *Config) bool {
	a, b := c.Policy(nil), o.Policy(nil)
	return len(policy.Diff(&a, &b)) == 0 && c.AllowCount == o.AllowCount && c.ConfirmBy == o.ConfirmBy
}

// NewSlotKey makes a random slot key.
func NewSlotKey() ([2]uint64, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return [2]uint64{}, fmt.Errorf("make slot key: %w", err)
	}
	return [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}, nil
}

// Validate reports the first thing wrong with the policy c holds (see
// policy.Policy.Validate).
func (c *Config) Validate() error {
	p := c.Policy(nil)
	return p.Validate()
}

// Protects says whether c protects port p.
func (c *Config) Protects(p policy.Port) bool {
	d := c.Policy(nil).Services[0]
	return d.Protects(p)
}

// Encode converts c to the C layout.
func (c *Config) Encode() (*bpf.KnockgateConfig, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	raw := &bpf.KnockgateConfig{
		SlotKey:       c.SlotKey,
		StepTimeoutNs: uint64(c.StepTimeout),
		OpenNs:        uint64(c.Open),
		ConfirmByNs:   c.ConfirmBy,
		FlowIdleTcpNs: uint64(c.FlowIdleTCP),
		FlowIdleUdpNs: uint64(c.FlowIdleUDP),
		Generation:    c.Generation,
		AllowCount:    c.AllowCount,
		Nsteps:        uint8(len(c.Sequence)),
		SpaPort:       c.SPAPort,
		SpaWindowMs:   uint64(c.SPAWindow / time.Millisecond),
		TaiOffsetNs:   int64(c.TAIOffset),
	}
	for i, s := range c.Sequence {
		raw.Steps[i].Port = s.Num
		raw.Steps[i].Proto = uint8(s.Proto)
		raw.StepPorts |= 1 << (s.Num & 63)
	}
	for _, p := range c.Protected {
		bits := &raw.ProtectedTcp
		if p.Proto == policy.UDP {
			bits = &raw.ProtectedUdp
		}
		bits[p.Num>>6] |= 1 << (p.Num & 63)
	}
	if c.ProtectAll {
		raw.Flags |= uint8(bpf.KnockgateConfigFlagCONFIG_PROTECT_ALL)
		for i := range raw.ProtectedTcp {
			raw.ProtectedTcp[i], raw.ProtectedUdp[i] = ^uint64(0), ^uint64(0)
		}
	}
	if c.Flows {
		raw.Flags |= uint8(bpf.KnockgateConfigFlagCONFIG_FLOWS)
	}
	return raw, nil
}

// DecodeConfig converts the C layout back to a Config.
func DecodeConfig(raw *bpf.KnockgateConfig) Config {
	c := Config{
		SlotKey:     raw.SlotKey,
		StepTimeout: time.Duration(raw.StepTimeoutNs),
		Open:        time.Duration(raw.OpenNs),
		ConfirmBy:   raw.ConfirmByNs,
		Generation:  raw.Generation,
		AllowCount:  raw.AllowCount,
		ProtectAll:  raw.Flags&uint8(bpf.KnockgateConfigFlagCONFIG_PROTECT_ALL) != 0,
		Flows:       raw.Flags&uint8(bpf.KnockgateConfigFlagCONFIG_FLOWS) != 0,
		FlowIdleTCP: time.Duration(raw.FlowIdleTcpNs),
		FlowIdleUDP: time.Duration(raw.FlowIdleUdpNs),
		SPAPort:     raw.SpaPort,
		SPAWindow:   time.Duration(raw.SpaWindowMs) * time.Millisecond,
		TAIOffset:   time.Duration(raw.TaiOffsetNs),
	}
	for i := 0; i < int(raw.Nsteps) && i < MaxSteps; i++ {
		c.Sequence = append(c.Sequence, policy.Port{Num: raw.Steps[i].Port, Proto: policy.Proto(raw.Steps[i].Proto)})
	}
	if c.ProtectAll {
		return c
	}
	for _, set := range []struct {
		bits  *[1024]uint64
		proto policy.Proto
	}{{&raw.ProtectedTcp, policy.TCP}, {&raw.ProtectedUdp, policy.UDP}} {
		for w, word := range set.bits {
			for b := 0; word != 0 && b < 64; b++ {
				if word&(1<<b) != 0 {
					c.Protected = append(c.Protected, policy.Port{Num: uint16(w*64 + b), Proto: set.proto})
				}
			}
		}
	}
	return c
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

// ReadConfig returns the configuration in force: the live slot's, or, once
// a safe-mode change there has lapsed, the one before it.
func (s *Set) ReadConfig() (Config, error) {
	live, cfgs, err := s.slots()
	if err != nil {
		return Config{}, err
	}
	c := &cfgs[live]
	if c.ConfirmByNs != 0 && BootNow() >= c.ConfirmByNs {
		c = &cfgs[live^1]
	}
	return DecodeConfig(c), nil
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
	}
	return DecodeConfig(&cfgs[live]), nil
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
	return SafeMode{
		Pending: !lapsed, Lapsed: lapsed, Deadline: deadline,
		Change: DecodeConfig(&cfgs[live]), Previous: DecodeConfig(&cfgs[live^1]),
	}, nil
}

// WriteConfig installs c and returns it as installed, with a generation
// newer than both slots'. A change awaiting confirmation refuses it
// (ErrAwaitingConfirm); one that has lapsed is rolled back for good first.
func (s *Set) WriteConfig(c Config) (Config, error) {
	// The grace period at the end of the last write may not have been
	// waited for (that writer was killed after its flip): wait now, before
	// the slot it left is overwritten.
	syncRCU()
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
	c.Generation = max(cfgs[0].Generation, cfgs[1].Generation) + 1
	if c.TAIOffset, err = TAIOffset(); err != nil {
		return Config{}, err
	}
	if c.SlotKey == [2]uint64{} {
		// Another key would move every source to another slot.
		c.SlotKey = cfgs[live].SlotKey
	}
	raw, err := c.Encode()
	if err != nil {
		return Config{}, err
	}
	if err := s.install(live, raw); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ConfirmConfig makes the safe-mode change in force permanent: the same
// configuration, same generation (knock progress made under it stays
// valid), without a deadline. Too late, it rolls the change back for good
// and returns ErrRolledBack.
func (s *Set) ConfirmConfig() (Config, error) {
	syncRCU()
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
		return Config{}, ErrRolledBack
	}
	raw.ConfirmByNs = 0
	if err := s.install(live, &raw); err != nil {
		return Config{}, err
	}
	return DecodeConfig(&raw), nil
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
	syncRCU() // as WriteConfig: the last writer's grace period
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
		return SettleRolledBack, nil
	}
	for _, c := range cfgs {
		if c.Generation == gen && c.ConfirmByNs == 0 {
			return SettleConfirmed, nil
		}
	}
	return SettleRolledBack, nil
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
	syncRCU()
	return idle, nil
}

// syncRCU waits until every CPU has passed through a quiescent state: XDP
// programs run inside an RCU read-side section, so afterwards none still holds
// a pointer to the slot we left. MEMBARRIER_CMD_GLOBAL is implemented with
// synchronize_rcu(); where it is unavailable, a pause far longer than any
// program run serves.
func syncRCU() {
	const membarrierCmdGlobal = 1 // MEMBARRIER_CMD_GLOBAL, linux/membarrier.h
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		time.Sleep(50 * time.Millisecond)
	}
}
