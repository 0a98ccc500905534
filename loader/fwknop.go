package loader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

// fwknop's clients through the gate: run's access to the HMAC keys, the
// replay map, the ring of verified datagrams and the grant program, each
// under the gate's lock as every other change.

// SetFwknopKeys makes the program's fwknop HMAC keys exactly keys
// (maps.Set.SetFwknopKeys), under the gate's lock: a live change, as the
// SPA keys'.
func (g *Gate) SetFwknopKeys(keys []maps.FwknopKey) error {
	return g.locked(func() error { return g.Maps.SetFwknopKeys(keys) })
}

// FwknopKeyNames are the names of the HMAC keys the program tries.
func (g *Gate) FwknopKeyNames() ([]string, error) { return readValue(g, g.Maps.FwknopKeyNames) }

// FwknopSeen is the replay map (maps.Set.FwknopSeenAll).
func (g *Gate) FwknopSeen() (map[maps.FwknopDigest]maps.FwknopSeen, error) {
	return readValue(g, g.Maps.FwknopSeenAll)
}

// FwknopKeepUntil records until when a datagram run decided is
// remembered.
func (g *Gate) FwknopKeepUntil(d maps.FwknopDigest, until time.Time) error {
	return g.locked(func() error { return g.Maps.FwknopKeepUntil(d, until) })
}

// FwknopRemember takes d as seen until until (the fleet's).
func (g *Gate) FwknopRemember(d maps.FwknopDigest, until time.Time) (added bool, err error) {
	err = g.locked(func() error {
		added, err = g.Maps.FwknopRemember(d, until)
		return err
	})
	return added, err
}

// FwknopForget forgets the replay entries no window can take any more.
func (g *Gate) FwknopForget(now time.Time) (n int, err error) {
	err = g.locked(func() error {
		n, err = g.Maps.FwknopForget(now)
		return err
	})
	return n, err
}

// OpenFwknop starts reading the datagrams the program verified. One
// reader per gate (run's).
func (g *Gate) OpenFwknop() (*maps.FwknopReader, error) { return g.Maps.OpenFwknop() }

// CountFwknop counts one of run's outcomes for an fwknop datagram in the
// program's counters, where status and the metrics read them with the
// program's own. Only run writes these (the program never does), so a
// read, an add and a write lose nothing.
func (g *Gate) CountFwknop(c bpf.KnockgateCounter) error {
	return g.locked(func() error { return g.Maps.AddCounter(c, 1) })
}

// FwknopGrant grants what an fwknop datagram run accepted opens
// (maps.RunFwknopGrant), under the gate's lock: ErrStaleGeneration when
// the configuration is no longer the one the services were picked by.
func (g *Gate) FwknopGrant(fg *maps.FwknopGrant) (n int, err error) {
	prog, err := g.fwknopGrantProgram()
	if err != nil {
		return 0, err
	}
	err = g.locked(func() error {
		n, err = maps.RunFwknopGrant(prog, fg)
		return err
	})
	return n, err
}

// fwknopGrantProgram is the fwknop_grant program on this gate's maps: the
// one loaded with them, or (a pinned gate reopened) this build's, loaded
// once onto the pinned maps. It is never attached or pinned.
func (g *Gate) fwknopGrantProgram() (*ebpf.Program, error) {
	if g.objs != nil {
		return g.objs.FwknopGrant, nil
	}
	if g.fwknopGrant != nil {
		return g.fwknopGrant, nil
	}
	spec, err := pinnedSpec(g.Maps)
	if err != nil {
		return nil, err
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{bpf.KnockgateProgFwknopGrant: spec.Programs[bpf.KnockgateProgFwknopGrant]}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: g.Maps.ByName()})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("gate %s: %w: %w (detach and attach again)", g.Name, ErrIncompatible, err)
		}
		return nil, loadError(err)
	}
	defer coll.Close()
	g.fwknopGrant = coll.DetachProgram(bpf.KnockgateProgFwknopGrant)
	return g.fwknopGrant, nil
}
