package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

// Upgrading a gate without a grant cache.
//
// Builds up to a1423c6 had no grant cache (maps/cache.go); every other map
// is the same. Such a gate opens as it is (its Set's GrantCache nil: the
// program it runs never reads one), and the upgrade that swaps this build's
// program in (upgrade) first makes the cache and pins it beside the other
// maps: a rename, so the pin is there whole or not at
// all, and always before a program that reads it runs. Killed anywhere,
// the next run or attach finds the cache pinned, or makes it, and swaps
// the programs in.

// ensureGrantCache gives g a grant cache if it has none: the pinned one
// (another command made it), else a new one, pinned. The caller holds the
// gate's lock. Only the programs read the cache: what voids it (the epoch)
// is in the hint bitmap, which every gate has, so a Gate opened before the
// cache was made voids it all the same.
func (g *Gate) ensureGrantCache() error {
	if g.Maps.GrantCache != nil {
		return nil
	}
	if err := g.loadPinnedCache(); err != nil || g.Maps.GrantCache != nil {
		return err
	}
	spec, err := pinnedSpec(g.Maps)
	if err != nil {
		return err
	}
	m, err := ebpf.NewMap(spec.Maps[bpf.KnockgateMapGrantCache])
	if err != nil {
		return fmt.Errorf("create map %s: %w", bpf.KnockgateMapGrantCache, err)
	}
	maps.KillPoint()
	if err := pinReplacing(m, filepath.Join(g.Dir, bpf.KnockgateMapGrantCache)); err != nil {
		m.Close()
		return fmt.Errorf("pin map %s: %w", bpf.KnockgateMapGrantCache, err)
	}
	g.Maps.GrantCache = m
	return nil
}

// loadPinnedCache opens the gate's pinned grant cache into g.Maps if it
// has none open and one is pinned (another command's upgrade made it since
// g was opened), so that the programs this upgrade loads use that one.
// Called with the gate's lock held.
func (g *Gate) loadPinnedCache() error {
	if g.Maps.GrantCache != nil {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(g.Dir, bpf.KnockgateMapGrantCache), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned map %s: %w", bpf.KnockgateMapGrantCache, err)
	}
	spec, err := pinnedSpec(g.Maps)
	if err != nil {
		m.Close()
		return err
	}
	if err := spec.Maps[bpf.KnockgateMapGrantCache].Compatible(m); err != nil {
		m.Close()
		return fmt.Errorf("gate %s: map %s: %w: %w (detach and attach again)", g.Name, bpf.KnockgateMapGrantCache, ErrIncompatible, err)
	}
	g.Maps.GrantCache = m
	return nil
}
