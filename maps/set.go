// Package maps is the typed Go access to every map of the knockgate XDP
// program: configuration slots, allow list, knock progress, grants, flows,
// SPA keys, counters and events. It encodes a policy (package policy) into
// the C ABI generated from bpf/knockgate.h and reads the maps back; nothing
// user-facing lives here (parsing and validation are policy's), and outside
// loader the maps are reached through loader.Gate, under the gate's lock.
package maps

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
)

// Set holds the maps of one gate, whether freshly loaded or reopened from
// their pins.
type Set struct {
	Configs     *ebpf.Map
	ConfigSlot  *ebpf.Map
	Knocks      *ebpf.Map
	KnockTags   *ebpf.Map
	FlowTable   *ebpf.Map
	FlowTags    *ebpf.Map
	Grants      *ebpf.Map
	Allow       *ebpf.Map
	Counters    *ebpf.Map
	Verdicts    *ebpf.Map
	Events      *ebpf.Map
	EventBudget *ebpf.Map
	HintBits    *ebpf.Map
	// GrantCache is nil on a gate pinned by a build without it, until the
	// loader's upgrade makes one (cache.go).
	GrantCache *ebpf.Map
	SPAKeys    *ebpf.Map
	SPALast    *ebpf.Map
	// ServiceCounters are each service's counters (ReadServiceCounters).
	ServiceCounters *ebpf.Map
	// fwknop's clients (fwknop.go).
	FwknopKeys    *ebpf.Map
	FwknopCount   *ebpf.Map
	FwknopReplay  *ebpf.Map
	FwknopRing    *ebpf.Map
	FwknopScratch *ebpf.Map

	// NoGraceWait: configuration writes do not wait for RCU grace periods.
	// Only for a program that nothing but BPF_PROG_TEST_RUN runs, one run
	// at a time (the model's differential driver): a write then never
	// races a packet, and the waits would be most of its time.
	NoGraceWait bool
}

// FromObjects wraps the maps of a loaded collection. The Set does not take
// ownership: closing the objects closes the maps.
func FromObjects(m *bpf.KnockgateMaps) *Set {
	return &Set{
		Configs:     m.Configs,
		ConfigSlot:  m.ConfigSlot,
		Knocks:      m.Knocks,
		KnockTags:   m.KnockTags,
		FlowTable:   m.Flows,
		FlowTags:    m.FlowTags,
		Grants:      m.Grants,
		Allow:       m.Allow,
		Counters:    m.Counters,
		Verdicts:    m.Verdicts,
		Events:      m.Events,
		EventBudget: m.EventBudget,
		HintBits:    m.HintBits,
		GrantCache:  m.GrantCache,
		SPAKeys:     m.SpaKeys,
		SPALast:     m.SpaLast,

		ServiceCounters: m.ServiceCounters,
		FwknopKeys:      m.FwknopKeys,
		FwknopCount:     m.FwknopCount,
		FwknopReplay:    m.FwknopReplay,
		FwknopRing:      m.FwknopRing,
		FwknopScratch:   m.FwknopScratch,
	}
}

// named lists every map with its pin name, the name the C program gives it.
func (s *Set) named() []struct {
	name string
	m    **ebpf.Map
} {
	return []struct {
		name string
		m    **ebpf.Map
	}{
		{bpf.KnockgateMapConfigs, &s.Configs},
		{bpf.KnockgateMapConfigSlot, &s.ConfigSlot},
		{bpf.KnockgateMapKnocks, &s.Knocks},
		{bpf.KnockgateMapKnockTags, &s.KnockTags},
		{bpf.KnockgateMapFlows, &s.FlowTable},
		{bpf.KnockgateMapFlowTags, &s.FlowTags},
		{bpf.KnockgateMapGrants, &s.Grants},
		{bpf.KnockgateMapAllow, &s.Allow},
		{bpf.KnockgateMapCounters, &s.Counters},
		{bpf.KnockgateMapVerdicts, &s.Verdicts},
		{bpf.KnockgateMapEvents, &s.Events},
		{bpf.KnockgateMapEventBudget, &s.EventBudget},
		{bpf.KnockgateMapHintBits, &s.HintBits},
		{bpf.KnockgateMapGrantCache, &s.GrantCache},
		{bpf.KnockgateMapSpaKeys, &s.SPAKeys},
		{bpf.KnockgateMapSpaLast, &s.SPALast},
		{bpf.KnockgateMapServiceCounters, &s.ServiceCounters},
		{bpf.KnockgateMapFwknopKeys, &s.FwknopKeys},
		{bpf.KnockgateMapFwknopCount, &s.FwknopCount},
		{bpf.KnockgateMapFwknopReplay, &s.FwknopReplay},
		{bpf.KnockgateMapFwknopRing, &s.FwknopRing},
		{bpf.KnockgateMapFwknopScratch, &s.FwknopScratch},
	}
}

// PinNames are the file names the maps are pinned under.
func PinNames() []string {
	var names []string
	for _, n := range (&Set{}).named() {
		names = append(names, n.name)
	}
	return names
}

// ByName returns every map the set has under its pin name (a gate without
// a grant cache has none).
func (s *Set) ByName() map[string]*ebpf.Map {
	byName := make(map[string]*ebpf.Map)
	for _, n := range s.named() {
		if *n.m != nil {
			byName[n.name] = *n.m
		}
	}
	return byName
}

// Pin pins every map the set has into dir, which must exist.
func (s *Set) Pin(dir string) error {
	for _, n := range s.named() {
		if *n.m == nil {
			continue // a grant cache not made yet
		}
		if err := (*n.m).Pin(filepath.Join(dir, n.name)); err != nil {
			return fmt.Errorf("pin map %s: %w", n.name, err)
		}
	}
	return nil
}

// OpenPinned reopens the maps pinned in dir.
func OpenPinned(dir string) (_ *Set, err error) {
	s := &Set{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, n := range s.named() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, n.name), nil)
		if err != nil && n.m == &s.GrantCache && errors.Is(err, fs.ErrNotExist) {
			continue // pinned by a build without it: the loader's upgrade makes it
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", n.name, err)
		}
		*n.m = m
	}
	return s, nil
}

// Close closes every open map.
func (s *Set) Close() error {
	var errs []error
	for _, n := range s.named() {
		if *n.m != nil {
			errs = append(errs, (*n.m).Close())
			*n.m = nil
		}
	}
	return errors.Join(errs...)
}
