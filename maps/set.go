package maps

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
)

// Set holds the maps of one gate, whether freshly loaded or reopened from
// their pins.
type Set struct {
	Configs    *ebpf.Map
	ConfigSlot *ebpf.Map
	Knocks     *ebpf.Map
	Grants     *ebpf.Map
	Allow      *ebpf.Map
	Counters   *ebpf.Map
	Events     *ebpf.Map
	Hints      *ebpf.Map
}

// FromObjects wraps the maps of a loaded collection. The Set does not take
// ownership: closing the objects closes the maps.
func FromObjects(m *bpf.KnockgateMaps) *Set {
	return &Set{
		Configs:    m.Configs,
		ConfigSlot: m.ConfigSlot,
		Knocks:     m.Knocks,
		Grants:     m.Grants,
		Allow:      m.Allow,
		Counters:   m.Counters,
		Events:     m.Events,
		Hints:      m.Hints,
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
		{bpf.KnockgateMapGrants, &s.Grants},
		{bpf.KnockgateMapAllow, &s.Allow},
		{bpf.KnockgateMapCounters, &s.Counters},
		{bpf.KnockgateMapEvents, &s.Events},
		{bpf.KnockgateMapHints, &s.Hints},
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

// ByName returns every map under its pin name.
func (s *Set) ByName() map[string]*ebpf.Map {
	byName := make(map[string]*ebpf.Map)
	for _, n := range s.named() {
		byName[n.name] = *n.m
	}
	return byName
}

// Pin pins every map into dir, which must exist.
func (s *Set) Pin(dir string) error {
	for _, n := range s.named() {
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

// ReadConfig returns the live configuration.
func (s *Set) ReadConfig() (Config, error) {
	slot, err := s.liveSlot()
	if err != nil {
		return Config{}, err
	}
	var raw bpf.KnockgateConfig
	if err := s.Configs.Lookup(slot, &raw); err != nil {
		return Config{}, fmt.Errorf("read config slot %d: %w", slot, err)
	}
	return DecodeConfig(&raw), nil
}

func (s *Set) liveSlot() (uint32, error) {
	var slot uint32
	if err := s.ConfigSlot.Lookup(uint32(0), &slot); err != nil {
		return 0, fmt.Errorf("read config slot: %w", err)
	}
	return slot & 1, nil
}

// WriteConfig installs c atomically and returns it as installed (with its
// new generation). The program reads configs[config_slot]: we fill the idle
// slot, flip config_slot with one 32-bit store, and then wait for an RCU
// grace period, after which no running program can still be reading the old
// slot; so c is in force for every packet once WriteConfig returns. Writers
// must not run concurrently (loader.Gate.WriteConfig holds a lock).
func (s *Set) WriteConfig(c Config) (Config, error) {
	// The grace period at the end of the last write may not have been
	// waited for (that writer was killed after its flip): wait now, before
	// the slot it left is overwritten.
	syncRCU()
	slot, err := s.liveSlot()
	if err != nil {
		return Config{}, err
	}
	var old bpf.KnockgateConfig
	if err := s.Configs.Lookup(slot, &old); err != nil {
		return Config{}, fmt.Errorf("read config slot %d: %w", slot, err)
	}
	c.Generation = old.Generation + 1
	raw, err := c.Encode()
	if err != nil {
		return Config{}, err
	}
	idle := slot ^ 1
	if err := s.Configs.Update(idle, raw, ebpf.UpdateAny); err != nil {
		return Config{}, fmt.Errorf("write config slot %d: %w", idle, err)
	}
	if err := s.ConfigSlot.Update(uint32(0), idle, ebpf.UpdateAny); err != nil {
		return Config{}, fmt.Errorf("switch to config slot %d: %w", idle, err)
	}
	syncRCU()
	return c, nil
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
