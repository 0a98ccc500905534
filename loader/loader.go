// Package loader owns a gate's lifecycle: it loads the knockgate XDP
// program, attaches it to one or more interfaces through bpf_links, pins the
// program, its maps and each link so the gate outlives the command, reopens
// (adopts) pinned gates, upgrades their program in place, and detaches them.
// Every change is all-or-nothing: a failed or killed command leaves the gate
// as it was, and the next command sweeps up what a killed one left half-made.
package loader

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

var (
	// ErrAttached: the gate (or the interface) is already there.
	ErrAttached = errors.New("already attached")
	// ErrNotAttached: no gate is pinned under that name.
	ErrNotAttached = errors.New("not attached")
	// ErrIncompatible: the pinned gate was made by an incompatible build.
	ErrIncompatible = errors.New("pinned by an incompatible knockgate build")
	// ErrOldLayout: the gate was pinned by the first knockgate release, one
	// gate per interface with its link beside the maps.
	ErrOldLayout = errors.New("pinned by an older knockgate (layout 1)")
)

// DefaultMaxSources sizes the knock-progress and grant maps.
const DefaultMaxSources = 65536

// DefaultMaxFlows sizes the flow table; MaxFlowsLimit bounds it.
const (
	DefaultMaxFlows = 65536
	MaxFlowsLimit   = 1 << 24
)

// Sizes are the operator-sized parts of a gate.
type Sizes struct {
	MaxSources uint32 // knocking and granted sources tracked at once
	MaxFlows   uint32 // flows of the host's remembered at once
}

// withDefaults fills what s leaves zero.
func (s Sizes) withDefaults() Sizes {
	if s.MaxSources == 0 {
		s.MaxSources = DefaultMaxSources
	}
	if s.MaxFlows == 0 {
		s.MaxFlows = DefaultMaxFlows
	}
	return s
}

// FlowSlots is the size of the flow table for maxFlows: rounded up to a
// whole set.
func FlowSlots(maxFlows uint32) uint32 {
	return uint32((uint64(maxFlows) + maps.FlowWays - 1) / maps.FlowWays * maps.FlowWays)
}

// MaxSourcesLimit keeps a typo from asking the kernel for gigabytes.
const MaxSourcesLimit = 1 << 24

// Mode is how to attach: native (driver) XDP, generic (SKB) XDP, or auto,
// which tries native and falls back to generic.
type Mode string

const (
	ModeAuto    Mode = "auto"
	ModeNative  Mode = "native"
	ModeGeneric Mode = "generic"
)

// ParseMode validates an attach mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeNative, ModeGeneric:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q (want auto, native or generic)", s)
}

// Load loads the program and its maps, sized for maxSources, without
// attaching or pinning anything. The configuration is empty: every packet
// passes.
func Load(maxSources uint32) (*Objects, error) {
	return LoadTuned(Sizes{MaxSources: maxSources}, Tuning{})
}

// Objects are a gate's programs and maps as loaded: the XDP object's, and
// the egress program, loaded from an object of its own onto the same maps.
type Objects struct {
	bpf.KnockgateObjects
	Egress *ebpf.Program
}

// Close releases both programs and the maps.
func (o *Objects) Close() error {
	return errors.Join(o.Egress.Close(), o.KnockgateObjects.Close())
}

// Tuning sets load-time constants of the program (volatile const, which
// the verifier folds in: they cost nothing per packet). Zero values keep
// the built-in ones; only tests and benchmarks set others.
type Tuning struct {
	// EventBurst is how many knock and reset events a CPU may send at
	// once (KG_EVENT_BURST).
	EventBurst uint32
	// TestClock: the program reads its clocks from the test_*_ns globals
	// the caller writes (bpf/clock.h), never from the kernel. Tests only.
	TestClock bool
}

// KnockSlots is the size of the knock-progress table for maxSources: three
// slots a source, in sets of maps.KnockWays. A slot is 33 bytes (32 and its
// tag), so the table takes about the memory an LRU hash of maxSources
// entries (96 bytes each) did, with three times the room.
func KnockSlots(maxSources uint32) uint32 {
	sets := (3*uint64(maxSources) + maps.KnockWays - 1) / maps.KnockWays
	return uint32(sets * maps.KnockWays)
}

// sizeSpec sizes the maps of spec (knockSlots a multiple of
// maps.KnockWays, flowSlots of maps.FlowWays) and sets the load-time
// constants that go with them.
func sizeSpec(spec *ebpf.CollectionSpec, knockSlots, grants, flowSlots uint32, t Tuning) error {
	if knockSlots == 0 || knockSlots%maps.KnockWays != 0 {
		return fmt.Errorf("knock table of %d slots: not a multiple of %d", knockSlots, maps.KnockWays)
	}
	if flowSlots == 0 || flowSlots%maps.FlowWays != 0 {
		return fmt.Errorf("flow table of %d slots: not a multiple of %d", flowSlots, maps.FlowWays)
	}
	spec.Maps[bpf.KnockgateMapFlows].MaxEntries = flowSlots
	spec.Maps[bpf.KnockgateMapFlowTags].ValueSize = flowSlots
	if err := spec.Variables["flow_sets"].Set(flowSlots / maps.FlowWays); err != nil {
		return fmt.Errorf("set flow sets: %w", err)
	}
	if err := spec.Variables["flow_slots"].Set(flowSlots); err != nil {
		return fmt.Errorf("set flow slots: %w", err)
	}
	spec.Maps[bpf.KnockgateMapGrants].MaxEntries = grants
	words := maps.HintWords(grants)
	spec.Maps[bpf.KnockgateMapHintBits].ValueSize = maps.HintBitsSize(words)
	if err := spec.Variables["hint_words"].Set(words); err != nil {
		return fmt.Errorf("set hint words: %w", err)
	}
	if err := spec.Variables["hint_shift"].Set(maps.HintShift(words)); err != nil {
		return fmt.Errorf("set hint shift: %w", err)
	}
	sets := maps.CacheSets(grants)
	spec.Maps[bpf.KnockgateMapGrantCache].MaxEntries = sets
	if err := spec.Variables["grant_cache_sets"].Set(sets); err != nil {
		return fmt.Errorf("set grant cache sets: %w", err)
	}
	// The fingerprints' key, fresh for each program loaded: entries another
	// load made match nothing (an upgrade starts from an empty cache, in
	// effect), and nobody outside can pick an address whose fingerprint is
	// another's.
	var key [16]byte
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("make the grant cache's key: %w", err)
	}
	for i, name := range []string{"cache_key0", "cache_key1"} {
		if err := spec.Variables[name].Set(binary.NativeEndian.Uint64(key[8*i:])); err != nil {
			return fmt.Errorf("set the grant cache's key: %w", err)
		}
	}
	spec.Maps[bpf.KnockgateMapKnocks].MaxEntries = knockSlots
	spec.Maps[bpf.KnockgateMapKnockTags].ValueSize = knockSlots // a byte a slot
	if err := spec.Variables["knock_sets"].Set(knockSlots / maps.KnockWays); err != nil {
		return fmt.Errorf("set knock sets: %w", err)
	}
	if err := spec.Variables["knock_slots"].Set(knockSlots); err != nil {
		return fmt.Errorf("set knock slots: %w", err)
	}
	if t.TestClock {
		if err := spec.Variables["test_clock"].Set(uint8(1)); err != nil {
			return fmt.Errorf("set test clock: %w", err)
		}
	}
	if t.EventBurst != 0 {
		if err := spec.Variables["event_burst"].Set(t.EventBurst); err != nil {
			return fmt.Errorf("set event burst: %w", err)
		}
	}
	return nil
}

// egressSpec is the egress object's spec with the sizes and load-time
// constants it shares with the XDP object's spec xdp (sized by sizeSpec).
func egressSpec(xdp *ebpf.CollectionSpec) (*ebpf.CollectionSpec, error) {
	spec, err := bpf.LoadEgress()
	if err != nil {
		return nil, fmt.Errorf("load egress program spec: %w", err)
	}
	for name, m := range spec.Maps {
		if x, ok := xdp.Maps[name]; ok && name != ".rodata" {
			m.MaxEntries, m.ValueSize = x.MaxEntries, x.ValueSize
		}
	}
	for name, v := range spec.Variables {
		if !v.Constant() {
			continue
		}
		from, ok := xdp.Variables[name]
		if !ok {
			return nil, fmt.Errorf("egress constant %s: not in the XDP object", name)
		}
		val := make([]byte, from.Size())
		if err := from.Get(val); err != nil {
			return nil, fmt.Errorf("read constant %s: %w", name, err)
		}
		if err := v.Set(val); err != nil {
			return nil, fmt.Errorf("set egress constant %s: %w", name, err)
		}
	}
	return spec, nil
}

// loadEgress loads the egress program of spec onto the maps the XDP object
// made (by name), each but its own constants.
func loadEgress(spec *ebpf.CollectionSpec, byName map[string]*ebpf.Map) (*ebpf.Program, error) {
	repl := make(map[string]*ebpf.Map)
	for name := range spec.Maps {
		if name == ".rodata" {
			continue
		}
		m, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("egress map %s: the XDP object has none", name)
		}
		repl[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, loadError(err)
	}
	defer coll.Close()
	return coll.DetachProgram(bpf.EgressProgEgress), nil
}

// LoadTuned is Load with every size and load-time constants set.
func LoadTuned(sz Sizes, t Tuning) (*Objects, error) {
	sz = sz.withDefaults()
	maxSources := sz.MaxSources
	if maxSources < 1 || maxSources > MaxSourcesLimit {
		return nil, fmt.Errorf("max sources %d out of range (1-%d)", maxSources, MaxSourcesLimit)
	}
	if sz.MaxFlows > MaxFlowsLimit {
		return nil, fmt.Errorf("max flows %d out of range (1-%d)", sz.MaxFlows, MaxFlowsLimit)
	}
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	if err := sizeSpec(spec, KnockSlots(maxSources), maxSources, FlowSlots(sz.MaxFlows), t); err != nil {
		return nil, err
	}
	egress, err := egressSpec(spec)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, loadError(err)
	}
	defer coll.Close()
	objs := &Objects{}
	if objs.Egress, err = loadEgress(egress, coll.Maps); err != nil {
		return nil, err
	}
	if err := coll.Assign(&objs.KnockgateObjects); err != nil {
		objs.Egress.Close()
		return nil, fmt.Errorf("load program: %w", err)
	}
	return objs, nil
}

// loadError explains a failed load: the verifier's log spelled out (the
// default form cuts it short), and a refusal as the missing privilege it is
// (the kernel counts BPF memory against the cgroup, not RLIMIT_MEMLOCK,
// whatever the library suggests).
func loadError(err error) error {
	var verr *ebpf.VerifierError
	switch {
	case errors.As(err, &verr):
		return fmt.Errorf("load program: %+v", verr)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("load program: %w (an XDP gate needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)", unix.EPERM)
	}
	return fmt.Errorf("load program: %w", err)
}

// Interface resolves an interface name with an error that names it.
func Interface(name string) (*net.Interface, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("unknown interface %q", name)
	}
	return ifc, nil
}
