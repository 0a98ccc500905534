package bench

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// MapMemory is one map's memory as the kernel accounts it: the memlock line
// of the map's fdinfo, which is the map type's own mem_usage callback.
type MapMemory struct {
	Name       string
	MaxEntries uint32
	Entries    int    // entries present when Bytes was read (hash maps)
	Bytes      uint64 // memlock
}

// Memory is knockgate's map memory for tracking sources.
type Memory struct {
	// Before and After are the live gate's knocks, grants, knock tags, hint
	// bits and grant cache, before and after Fill more entries went into
	// knocks and grants.
	Before, After []MapMemory
	Fill          int
	// PerEntry is what one more entry of knocks and of grants costs:
	// the memlock difference between the map made at two sizes, divided
	// by the difference in entries. Fixed is what remains of the map's
	// memory at the gate's size: the per-map overhead.
	PerEntry map[string]float64
	Fixed    map[string]float64
}

// PerSource is the memory one more tracked source costs: a source is either
// knocking (one slot of the knock table) or granted (one grants entry), so
// the larger per-entry figure.
func (m Memory) PerSource() float64 {
	return max(m.PerEntry[bpf.KnockgateMapKnocks], m.PerEntry[bpf.KnockgateMapGrants])
}

// Reserved is the memory of all these maps divided by --max-sources (the
// grants map's size): they are preallocated (the knock table at three times
// that many slots) and the hint bitmap and grant cache are fixed arrays.
func (m Memory) Reserved() (float64, uint32) {
	var sum uint64
	var n uint32
	for _, mm := range m.After {
		sum += mm.Bytes
		if mm.Name == bpf.KnockgateMapGrants {
			n = mm.MaxEntries
		}
	}
	return float64(sum) / float64(n), n
}

// KnockgateMemory reads the memory of the source maps of the gate attached
// on RxIface, fills knocks and grants with fill fresh entries each, reads
// again, and removes them. It also measures the cost of one more entry from
// the kernel's accounting of the same maps made at two sizes.
func KnockgateMemory(fill int) (Memory, error) {
	gate, err := loader.Open(RxIface)
	if err != nil {
		return Memory{}, err
	}
	defer gate.Close()
	res := Memory{Fill: fill, PerEntry: map[string]float64{}, Fixed: map[string]float64{}}
	if res.Before, err = mapMemory(gate.Maps); err != nil {
		return res, err
	}
	var added []netip.Addr
	defer func() {
		// Leave the gate as it was: these sources never knocked.
		for _, a := range added {
			gate.Revoke(a, "")
		}
	}()
	addr := netip.MustParseAddr("198.18.64.0")
	for i := 0; i < fill; i++ {
		addr = addr.Next()
		added = append(added, addr)
		p := bpf.KnockgateKnockSlot{DeadlineNs: maps.BootAfter(StepTimeout), Stage: 1}
		if err := gate.Maps.PutKnock(addr, p); err != nil {
			return res, err
		}
		if err := gate.Grant(addr, policy.DefaultService, maps.BootAfter(Open)); err != nil {
			return res, err
		}
	}
	if res.After, err = mapMemory(gate.Maps); err != nil {
		return res, err
	}

	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return res, fmt.Errorf("load program spec: %w", err)
	}
	for _, mm := range res.After {
		if mm.Name == bpf.KnockgateMapHintBits || mm.Name == bpf.KnockgateMapKnockTags || mm.Name == bpf.KnockgateMapGrantCache {
			continue
		}
		small, err := memlockAt(spec.Maps[mm.Name], mm.MaxEntries)
		if err != nil {
			return res, err
		}
		large, err := memlockAt(spec.Maps[mm.Name], 2*mm.MaxEntries)
		if err != nil {
			return res, err
		}
		per := float64(large-small) / float64(mm.MaxEntries)
		res.PerEntry[mm.Name] = per
		res.Fixed[mm.Name] = float64(mm.Bytes) - per*float64(mm.MaxEntries)
	}
	return res, nil
}

// memlockAt makes a throwaway copy of a map at n entries and reads its
// memory.
func memlockAt(ms *ebpf.MapSpec, n uint32) (uint64, error) {
	ms = ms.Copy()
	ms.MaxEntries = n
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return 0, fmt.Errorf("make map %s at %d entries: %w", ms.Name, n, err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return 0, fmt.Errorf("map %s info: %w", ms.Name, err)
	}
	b, ok := info.Memlock()
	if !ok {
		return 0, fmt.Errorf("map %s: the kernel reports no memlock", ms.Name)
	}
	return b, nil
}

func mapMemory(set *maps.Set) ([]MapMemory, error) {
	var out []MapMemory
	for _, m := range []struct {
		name  string
		m     *ebpf.Map
		count func() (int, error)
	}{
		{bpf.KnockgateMapKnocks, set.Knocks, func() (int, error) { return occupied(set) }},
		{bpf.KnockgateMapGrants, set.Grants, set.CountGrants},
		{bpf.KnockgateMapKnockTags, set.KnockTags, nil},
		{bpf.KnockgateMapHintBits, set.HintBits, nil},
		{bpf.KnockgateMapGrantCache, set.GrantCache, nil},
	} {
		info, err := m.m.Info()
		if err != nil {
			return nil, fmt.Errorf("map %s info: %w", m.name, err)
		}
		b, ok := info.Memlock()
		if !ok {
			return nil, fmt.Errorf("map %s: the kernel reports no memlock", m.name)
		}
		mm := MapMemory{Name: m.name, MaxEntries: m.m.MaxEntries(), Bytes: b}
		if m.count != nil {
			if mm.Entries, err = m.count(); err != nil {
				return nil, err
			}
		}
		out = append(out, mm)
	}
	return out, nil
}

// occupied counts the knock table's slots that hold a source's progress.
func occupied(set *maps.Set) (int, error) {
	slots, err := set.KnockSlots()
	n := 0
	for _, k := range slots {
		if k.Addr != [16]byte{} {
			n++
		}
	}
	return n, err
}
