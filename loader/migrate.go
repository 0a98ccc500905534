package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader/legacy"
	"github.com/knockgate/knockgate/maps"
)

// Upgrading a gate the previous release pinned.
//
// The previous release (commit 2f4d40f, its datapath frozen in
// loader/legacy) had no services, and its maps differ from this build's
// one by one. Each is carried over so that nobody logged in is locked out:
//
//	configs        a flat configuration with protected-port bitmaps: each
//	               slot is decoded with the old layout and written again
//	               (maps.Set.RestoreConfigs) as a policy whose one service
//	               is default, keeping its generation (knock progress stays
//	               valid), slot key, TAI offset and safe-mode deadline;
//	config_slot    which slot is live: kept.
//	allow          keyed by prefix alone, one list for both slots: each
//	               entry is an entry for every service, in the slots whose
//	               configuration consulted it (allow_count > 0).
//	grants         keyed by address: the address's grant of default, with
//	               its expiry, through maps.Set.Grant (which sets its
//	               hint bits as the program would); grants expired
//	               and reported already are dead and left behind.
//	hints          gone: hint_bits, this build's filter, is made anew by
//	               those grants (and the previous release's counts freed
//	               with its program).
//	spa_keys       a pad where the services mask now is: each key opens
//	               default (the scope of a key file line without services=).
//	counters       20 then, 21 now (COUNTER_SPA_BAD_SERVICE came before
//	               COUNTER_SPA_REPLAY): copied by name, CPU by CPU.
//	service_counters  new: default's start from the gate's grants made
//	               (sequences and SPA packets) and expired.
//	knocks, knock_tags, flows, flow_tags, spa_last, verdicts, events,
//	event_budget   the same layout (a knock slot's pad byte, always 0, is
//	               the new service byte: default): not copied but shared —
//	               the new programs are loaded onto these very maps, so
//	               nothing the old program records until the switch (knock
//	               progress, flows, SPA replay state, verdicts, events) is
//	               lost.
//
// The order, all under the root lock and the gate's:
//
//  1. The gate is recognised, precisely: every map the previous release
//     pinned is there and matches loader/legacy's spec at the gate's own
//     sizes, and no map only this build has is. Any other layout is refused
//     as before (ErrIncompatible: detach and attach again).
//  2. In a staging directory ("upgrading GATE RAND", locked) the new
//     programs are loaded onto new maps and the shared ones, the state is
//     copied into the new maps, and everything is pinned. Nothing of the
//     old gate is written. Killed here, the old gate runs on untouched; the
//     next command's sweep removes the staging directory (it holds no
//     link) and the next run or attach starts over.
//  3. The mark: the staging directory is renamed "upgraded GATE RAND".
//     From here the upgrade only goes forward (finishUpgrade); killed at
//     any later point, the next command — any command: the sweep, or Open
//     of the gate — does steps 4 to 8 again, each of which finds its work
//     done or does it.
//  4. Every link of the gate (XDP on each interface, tcx egress on each) is
//     updated in place to the new programs: a packet meets the old program
//     or the new, never none.
//  5. After an RCU grace period no old program runs; the grants it made
//     since step 2 are copied again (a later expiry wins, so a copy made
//     twice is the copy made once).
//  6. The gate's interface directory, with its links, moves into the new
//     directory (one rename).
//  7. The new directory and the gate's are exchanged (renameat2
//     RENAME_EXCHANGE, one step): the gate is the new one.
//  8. The old one, now under the "upgraded" name with no link in it, is
//     removed; the kernel frees its programs and maps.

// ErrPreviousRelease: the gate was pinned by the previous release, before
// services; run or attach upgrades it in place (Adopt).
var ErrPreviousRelease = errors.New("pinned by the previous knockgate release (before services)")

const (
	upgradingPrefix = "upgrading "
	upgradedPrefix  = "upgraded "
)

// sharedMaps are the maps whose layout the previous release shares with
// this build: an upgraded gate keeps them.
var sharedMaps = []string{
	bpf.KnockgateMapKnocks, bpf.KnockgateMapKnockTags,
	bpf.KnockgateMapFlows, bpf.KnockgateMapFlowTags,
	bpf.KnockgateMapSpaLast, bpf.KnockgateMapVerdicts,
	bpf.KnockgateMapEvents, bpf.KnockgateMapEventBudget,
}

// newMapPin is a map only this build's layout has: its pin tells an
// upgraded directory from the one it replaced.
const newMapPin = bpf.KnockgateMapServiceCounters

// Upgraded says what Adopt upgraded, in words for the operator: nothing
// (""), or one of these.
type Upgraded string

const (
	UpgradedRelease Upgraded = "upgraded from the previous release: its grants are the service default's now; " +
		"its keys, allow list and open sessions are kept"
	UpgradedHintBits Upgraded = "upgraded in place from hint counts to the hint bitmap: its grants, keys, allow list, " +
		"knock progress and open sessions are kept"
	UpgradedGrantCache Upgraded = "upgraded in place: a grant cache added in front of its grants; its grants, keys, " +
		"allow list, knock progress and open sessions are kept"
)

// Adopt is Open for the commands that take a gate over, run and attach: a
// gate the previous release pinned is first upgraded in place to this
// build's layout, its grants moved into the service default, its keys,
// allow list, knock progress and flows kept; a gate of hint counts gets the
// hint bitmap (upgradeHintBits); a gate without a grant cache gets one
// (cache.go). upgraded says whether it was, and how (by
// this call or by another command at the same time).
func Adopt(name string) (g *Gate, upgraded Upgraded, err error) {
	g, err = Open(name)
	if err == nil && g.Maps.GrantCache == nil {
		// A gate of a build without the grant cache (cache.go): the
		// upgrade makes it and swaps this build's programs in.
		if _, err := g.Upgrade(); err != nil {
			g.Close()
			return nil, "", fmt.Errorf("upgrade gate %s: %w (the gate enforces as it did; run this again once the cause is fixed)", name, err)
		}
		return g, UpgradedGrantCache, nil
	}
	if errors.Is(err, ErrHintCounts) {
		if err := upgradeHintBits(name); err != nil {
			return nil, "", err
		}
		g, err = Open(name)
		if err != nil {
			return nil, "", err
		}
		return g, UpgradedHintBits, nil
	}
	if !errors.Is(err, ErrPreviousRelease) {
		return g, "", err
	}
	if err := migrate(name); err != nil {
		return nil, "", err
	}
	if g, err = Open(name); err != nil {
		return nil, "", err
	}
	return g, UpgradedRelease, nil
}

// previousReleaseError says what to do with a gate of the previous release.
func previousReleaseError(name, dir string) error {
	return adoptError(name, dir, ErrPreviousRelease,
		"its grants move into the service default, and its keys, allow list and open sessions are kept")
}

// adoptError says that the gate called name, pinned at dir, is of a layout
// (why) that run or attach upgrades in place, keeping what keeps says.
func adoptError(name, dir string, why error, keeps string) error {
	return fmt.Errorf("gate %s: %w: run %q (or \"knockgate run\" on its config file) to upgrade it in place; %s",
		name, why, attachCommand(name, dir), keeps)
}

// attachCommand is the attach that adopts the gate called name, pinned at
// dir, on its interfaces.
func attachCommand(name, dir string) string {
	entries, _ := os.ReadDir(filepath.Join(dir, ifacesDir))
	var ifaces []string
	for _, e := range entries {
		ifaces = append(ifaces, unpinName(e.Name()))
	}
	switch {
	case len(ifaces) == 0:
		return "knockgate attach --gate " + name + " IFACE"
	case ifaces[0] != name:
		return "knockgate attach --gate " + name + " " + strings.Join(ifaces, " ")
	}
	return "knockgate attach " + strings.Join(ifaces, " ")
}

// previousGate is a gate the previous release pinned: its maps by pin name.
type previousGate map[string]*ebpf.Map

func (p previousGate) Close() {
	for _, m := range p {
		m.Close()
	}
}

// openPrevious opens the gate pinned at dir if the previous release pinned
// it: its two programs pinned, every one of its maps there and matching
// loader/legacy's spec at the sizes the gate was made with, and no map
// only this build has. ok is false (and nothing is left open) for any
// other layout.
func openPrevious(dir string) (_ previousGate, ok bool, err error) {
	for _, pin := range []string{progPin, egressProgPin} {
		if _, err := os.Stat(filepath.Join(dir, pin)); err != nil {
			return nil, false, nil
		}
	}
	if _, err := os.Stat(filepath.Join(dir, newMapPin)); err == nil {
		return nil, false, nil
	}
	spec, err := legacy.LoadKnockgate()
	if err != nil {
		return nil, false, fmt.Errorf("load the previous release's spec: %w", err)
	}
	p := previousGate{}
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata, .data, .bss: the program's own, never pinned
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		p[name] = m
	}
	// The operator sized these (--max-sources, --max-flows), as the
	// previous release's sizeSpec did.
	knocks, grants, flows := p[legacy.KnockgateMapKnocks].MaxEntries(), p[legacy.KnockgateMapGrants].MaxEntries(), p[legacy.KnockgateMapFlows].MaxEntries()
	spec.Maps[legacy.KnockgateMapKnocks].MaxEntries = knocks
	spec.Maps[legacy.KnockgateMapKnockTags].ValueSize = knocks
	spec.Maps[legacy.KnockgateMapGrants].MaxEntries = grants
	spec.Maps[legacy.KnockgateMapFlows].MaxEntries = flows
	spec.Maps[legacy.KnockgateMapFlowTags].ValueSize = flows
	for name, m := range p {
		if err := spec.Maps[name].Compatible(m); err != nil {
			return nil, false, nil
		}
	}
	return p, true, nil
}

// isPrevious reports whether the previous release pinned the gate at dir.
func isPrevious(dir string) (bool, error) {
	p, ok, err := openPrevious(dir)
	if ok {
		p.Close()
	}
	return ok, err
}

// migrate upgrades the gate called name, pinned by the previous release, to
// this build's layout (see the order above). It does nothing when the gate
// is no longer of that layout (another command upgraded it meanwhile).
func migrate(name string) (err error) {
	unlock, err := lockRoot() // which finishes an upgrade cut short
	if err != nil {
		return err
	}
	defer unlock()
	dir := GateDir(name)
	gateLock, err := lockGateDir(name)
	if err != nil {
		return err
	}
	defer gateLock.Close()
	old, ok, err := openPrevious(dir)
	if err != nil || !ok {
		return err
	}
	defer old.Close()

	staging, err := os.MkdirTemp(PinRoot, upgradingPrefix+pinName(name)+" ")
	if err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	lock, err := flock(staging, unix.LOCK_EX)
	if err != nil {
		os.Remove(staging)
		return fmt.Errorf("lock %s: %w", staging, err)
	}
	defer lock.Close()
	marked := false
	defer func() {
		if err != nil && !marked {
			teardown(staging) // no link is pinned there
		}
	}()
	if err := stageUpgrade(old, staging); err != nil {
		return fmt.Errorf("upgrade gate %s from the previous release: %w (the gate runs on as it was; "+
			"run this again once the cause is fixed, or detach the gate and attach it again)", name, err)
	}
	maps.KillPoint()
	up := filepath.Join(PinRoot, upgradedPrefix+strings.TrimPrefix(filepath.Base(staging), upgradingPrefix))
	if err := os.Rename(staging, up); err != nil {
		return fmt.Errorf("upgrade gate %s from the previous release: mark %s: %w (the gate runs on as it was)", name, staging, err)
	}
	marked = true
	maps.KillPoint()
	if err := finishUpgrade(up, name, false); err != nil {
		return fmt.Errorf("upgrade gate %s from the previous release: %w (the gate enforces, half-way "+
			"between the two; the next knockgate command finishes the upgrade)", name, err)
	}
	return nil
}

// stageUpgrade loads this build's programs onto new maps and the maps the
// layouts share (at the sizes the gate was made with), copies the old gate's
// state into the new maps and pins it all in staging. It writes nothing of
// the old gate's.
func stageUpgrade(old previousGate, staging string) error {
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	if err := sizeSpec(spec, old[legacy.KnockgateMapKnocks].MaxEntries(), old[legacy.KnockgateMapGrants].MaxEntries(),
		old[legacy.KnockgateMapFlows].MaxEntries(), Tuning{}); err != nil {
		return err
	}
	egSpec, err := egressSpec(spec)
	if err != nil {
		return err
	}
	repl := make(map[string]*ebpf.Map, len(sharedMaps))
	for _, name := range sharedMaps {
		repl[name] = old[name]
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return loadError(err)
	}
	defer coll.Close()
	objs := &Objects{}
	if objs.Egress, err = loadEgress(egSpec, coll.Maps); err != nil {
		return err
	}
	if err := coll.Assign(&objs.KnockgateObjects); err != nil {
		objs.Egress.Close()
		return fmt.Errorf("load program: %w", err)
	}
	defer objs.Close()
	set := maps.FromObjects(&objs.KnockgateMaps)

	if err := copyConfigs(old, set); err != nil {
		return err
	}
	maps.KillPoint()
	if err := copyKeys(old, set); err != nil {
		return err
	}
	maps.KillPoint()
	if err := copyGrants(old, set); err != nil {
		return err
	}
	maps.KillPoint()
	if err := copyCounters(old, set); err != nil {
		return err
	}
	maps.KillPoint()
	if err := set.Pin(staging); err != nil {
		return err
	}
	maps.KillPoint()
	if err := objs.Knockgate.Pin(filepath.Join(staging, progPin)); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	maps.KillPoint()
	if err := objs.Egress.Pin(filepath.Join(staging, egressProgPin)); err != nil {
		return fmt.Errorf("pin egress program: %w", err)
	}
	return nil
}

// finishUpgrade takes the upgrade marked at up (a directory named
// upgradedPrefix+GATE+RAND) from wherever it stopped to its end: steps 4 to 8
// of the order above. The caller holds the root lock and up's; with
// lockGate it does not hold the gate's, which is then taken without waiting
// (whoever holds it, a later command finishes the upgrade).
func finishUpgrade(up, name string, lockGate bool) error {
	dir := GateDir(name)
	if _, err := os.Stat(filepath.Join(up, newMapPin)); err != nil {
		// Exchanged already (step 7): up holds the old gate's programs and
		// maps, and no link.
		maps.KillPoint()
		if err := os.RemoveAll(up); err != nil {
			return fmt.Errorf("remove the previous release's pins: %w", err)
		}
		return nil
	}
	prev, err := isPrevious(dir)
	if err != nil {
		return err
	}
	if !prev {
		// The gate it was made for was detached meanwhile: it goes too,
		// with whatever link of it was moved here.
		return teardown(up)
	}
	if lockGate {
		l, err := flock(dir, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			return fmt.Errorf("lock %s: %w", dir, err)
		}
		defer l.Close()
	}

	// 4. Every link runs the new programs.
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(up, progPin), nil)
	if err != nil {
		return fmt.Errorf("open the new program: %w", err)
	}
	defer prog.Close()
	egress, err := ebpf.LoadPinnedProgram(filepath.Join(up, egressProgPin), nil)
	if err != nil {
		return fmt.Errorf("open the new egress program: %w", err)
	}
	defer egress.Close()
	if err := switchLinks(append(linkPins(dir), linkPins(up)...), prog, egress); err != nil {
		return err
	}

	// 5. The grants the old program made meanwhile.
	set, err := maps.OpenPinned(up)
	if err != nil {
		return err
	}
	defer set.Close()
	set.SyncRCU()
	old, ok, err := openPrevious(dir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("gate %s: the previous release's maps changed under the upgrade", name)
	}
	err = copyGrants(old, set)
	old.Close()
	if err != nil {
		return err
	}
	maps.KillPoint()

	// 6. The interfaces, with their links, into the new directory.
	if _, err := os.Stat(filepath.Join(dir, ifacesDir)); err == nil {
		if err := os.Rename(filepath.Join(dir, ifacesDir), filepath.Join(up, ifacesDir)); err != nil {
			return fmt.Errorf("move the interfaces' links: %w", err)
		}
	}
	maps.KillPoint()

	// 7. The new directory becomes the gate, in one step.
	if err := unix.Renameat2(unix.AT_FDCWD, up, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE); err != nil {
		return fmt.Errorf("install pins at %s: %w", dir, err)
	}
	maps.KillPoint()

	// 8. The old one, under the upgraded name now.
	if err := os.RemoveAll(up); err != nil {
		return fmt.Errorf("remove the previous release's pins: %w", err)
	}
	return nil
}

// finishUpgrades finishes every upgrade of the gate called name that a
// killed command left (see finishUpgrade): Open calls it, so that the gate
// it opens is whole. The root lock's sweep does the work.
func finishUpgrades(name string) {
	matches, _ := filepath.Glob(filepath.Join(PinRoot, upgradedPrefix+pinName(name)+" *"))
	if len(matches) == 0 {
		return
	}
	if unlock, err := lockRoot(); err == nil {
		unlock()
	}
}

// sweepUpgrade is the sweep's part for an upgrade directory whose maker is
// gone (its lock is held by the caller): one not yet marked is removed (it
// holds no link), a marked one is finished.
func sweepUpgrade(dir string) error {
	base := filepath.Base(dir)
	if strings.HasPrefix(base, upgradingPrefix) {
		return teardown(dir)
	}
	rest, ok := strings.CutPrefix(base, upgradedPrefix)
	if !ok {
		return nil
	}
	i := strings.LastIndexByte(rest, ' ')
	if i < 0 {
		return teardown(dir)
	}
	return finishUpgrade(dir, unpinName(rest[:i]), true)
}
