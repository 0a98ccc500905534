package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

// Upgrading a gate whose grant filter is hint counts.
//
// The builds from services (the release after 2f4d40f) to 13eab35 filtered
// a stranger's grant lookup through "hints", an array of 32-bit counts, 32
// bytes a --max-sources; this one through "hint_bits", a Bloom filter of 4
// bytes a --max-sources (maps/hints.go). Every other map is the same, so
// such a gate is upgraded in place, under its lock, by run and attach
// (Adopt), nobody's grant lost at any point:
//
//  1. hint_bits is made with every bit set (a filter that lets every
//     lookup through: the old program, which runs on, sets no bits) and
//     pinned beside the rest.
//  2. This build's programs are loaded onto the pinned maps and swapped
//     into every link in place (Upgrade), a grant cache made and pinned
//     first (cache.go).
//  3. After an RCU grace period no old program runs: the bitmap is rebuilt
//     from the grants (maps.Set.RebuildHints).
//  4. The hints pin is removed; the kernel frees the counts with the old
//     program.
//
// Until step 4 the hints pin says the upgrade is not done: Open refuses
// the gate (ErrHintCounts) and the next run or attach does the steps again,
// each of which finds its work done or does it.

// ErrHintCounts: the gate was pinned by a build whose grant filter is hint
// counts; run or attach upgrades it in place (Adopt).
var ErrHintCounts = errors.New("pinned by an earlier knockgate build (grant filter of hint counts)")

// hintCountsPin is the old filter's pin.
const hintCountsPin = "hints"

// hasHintCounts reports whether the gate at dir still has the old filter.
func hasHintCounts(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, hintCountsPin))
	return err == nil
}

// isHintCounts reports whether the gate at dir is one of hint counts:
// both programs pinned, a hints map of the counts' layout at the size the
// grants map gave it, and every map of this build pinned and matching its
// spec at the gate's sizes, hint_bits and grant_cache aside (which step 1
// and step 2 make). Any other layout is not upgraded this way.
func isHintCounts(dir string) bool {
	if !hasHintCounts(dir) {
		return false
	}
	for _, pin := range []string{progPin, egressProgPin} {
		if _, err := os.Stat(filepath.Join(dir, pin)); err != nil {
			return false
		}
	}
	pinned := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range pinned {
			m.Close()
		}
	}()
	for _, name := range append(maps.PinNames(), hintCountsPin) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			if (name == bpf.KnockgateMapHintBits || name == bpf.KnockgateMapGrantCache) && errors.Is(err, fs.ErrNotExist) {
				continue // made by the upgrade (and grant_cache by its program swap)
			}
			return false
		}
		pinned[name] = m
	}
	knocks, grants, flows := pinned[bpf.KnockgateMapKnocks], pinned[bpf.KnockgateMapGrants], pinned[bpf.KnockgateMapFlows]
	spec, err := bpf.LoadKnockgate()
	if err != nil || sizeSpec(spec, knocks.MaxEntries(), grants.MaxEntries(), flows.MaxEntries(), Tuning{}) != nil {
		return false
	}
	// The counts: 32-bit, four slots a grant, a power of two, at least
	// 65536 (the old maps.HintSlots).
	slots := uint32(max(1<<16, 1<<bits.Len64(uint64(4*max(grants.MaxEntries(), 1))-1)))
	spec.Maps[hintCountsPin] = &ebpf.MapSpec{Name: hintCountsPin, Type: ebpf.Array, KeySize: 4, ValueSize: 4,
		MaxEntries: slots, Flags: unix.BPF_F_MMAPABLE}
	for name, m := range pinned {
		if spec.Maps[name].Compatible(m) != nil {
			return false
		}
	}
	return true
}

// hintCountsError says what to do with such a gate.
func hintCountsError(name, dir string) error {
	return adoptError(name, dir, ErrHintCounts, "its grants, keys, allow list, knock progress and open sessions are kept")
}

// upgradeHintBits upgrades the gate called name from hint counts to hint
// bits (see the steps above). It does nothing when the gate has no hint
// counts (another command upgraded it meanwhile).
func upgradeHintBits(name string) (err error) {
	dir := GateDir(name)
	lock, err := lockGateDir(name)
	if err != nil {
		return err
	}
	defer lock.Close()
	if !isHintCounts(dir) {
		return nil
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("upgrade gate %s to hint bits: %w (the gate enforces as it did; run this again "+
				"once the cause is fixed)", name, err)
		}
	}()

	// 1. The bitmap, every bit set, made once.
	if err := pinFullHintBits(dir); err != nil {
		return err
	}
	maps.KillPoint()

	// 2. This build's programs on every link.
	set, err := maps.OpenPinned(dir)
	if err != nil {
		return err
	}
	g, err := gateOf(name, dir, set)
	if err != nil {
		return err
	}
	defer g.Close()
	if _, err := g.upgrade(); err != nil {
		return err
	}
	maps.KillPoint()

	// 3. The bits only the grants set: the rebuild waits for a grace
	// period before it clears anything, after which no old program runs.
	if _, err := set.RebuildHints(); err != nil {
		return err
	}
	maps.KillPoint()

	// 4. Done.
	if err := os.Remove(filepath.Join(dir, hintCountsPin)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the hint counts' pin: %w", err)
	}
	return nil
}

// pinFullHintBits pins at dir a hint bitmap sized for the gate's grants
// map with every bit set, unless one is pinned there.
func pinFullHintBits(dir string) error {
	pin := filepath.Join(dir, bpf.KnockgateMapHintBits)
	if _, err := os.Stat(pin); err == nil {
		return nil
	}
	grants, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.KnockgateMapGrants), nil)
	if err != nil {
		return fmt.Errorf("open pinned map %s: %w", bpf.KnockgateMapGrants, err)
	}
	words := maps.HintWords(grants.MaxEntries())
	grants.Close()
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	ms := spec.Maps[bpf.KnockgateMapHintBits].Copy()
	ms.ValueSize = maps.HintBitsSize(words)
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return fmt.Errorf("create map %s: %w", bpf.KnockgateMapHintBits, err)
	}
	defer m.Close()
	if err := (&maps.Set{HintBits: m}).FillHints(); err != nil {
		return err
	}
	if err := pinReplacing(m, pin); err != nil {
		return fmt.Errorf("pin map %s: %w", bpf.KnockgateMapHintBits, err)
	}
	return nil
}
