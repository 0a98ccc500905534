package loader

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

// pinnedSpec is this build's collection spec, with the maps whose size the
// operator chose (--max-sources) sized as set's are, so that it describes
// set exactly when the layouts agree: a pinned gate keeps its size.
func pinnedSpec(set *maps.Set) (*ebpf.CollectionSpec, error) {
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	if err := sizeSpec(spec, set.Knocks.MaxEntries(), set.Grants.MaxEntries(), set.FlowTable.MaxEntries(), Tuning{}); err != nil {
		return nil, fmt.Errorf("%w: %w (detach and attach again)", ErrIncompatible, err)
	}
	return spec, nil
}

// checkCompatible compares the pinned maps with the ones this build would
// create: a gate pinned by another layout must not be read with this one.
func checkCompatible(set *maps.Set) error {
	spec, err := pinnedSpec(set)
	if err != nil {
		return err
	}
	for name, m := range set.ByName() {
		if err := spec.Maps[name].Compatible(m); err != nil {
			return fmt.Errorf("map %s: %w: %w (detach and attach again)", name, ErrIncompatible, err)
		}
	}
	return nil
}

// Upgrade makes the gate run this build's program. When the pinned program
// is another (an older build's), this build's is loaded against the pinned
// maps and swapped into every link in place (bpf_link update: no packet goes
// unjudged, no state is lost), and pinned in the old one's stead. It
// reports whether the program was replaced.
func (g *Gate) Upgrade() (replaced bool, err error) {
	unlock, err := g.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	return g.upgrade()
}

// upgrade is Upgrade for a caller that holds the gate's lock.
func (g *Gate) upgrade() (replaced bool, err error) {
	if err := g.ensureGrantCache(); err != nil {
		return false, err
	}
	spec, err := pinnedSpec(g.Maps)
	if err != nil {
		return false, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: g.Maps.ByName()})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return false, fmt.Errorf("gate %s: %w: %w (detach and attach again)", g.Name, ErrIncompatible, err)
		}
		return false, loadError(err)
	}
	defer coll.Close()
	egSpec, err := egressSpec(spec)
	if err != nil {
		return false, err
	}
	egress, err := loadEgress(egSpec, coll.Maps)
	if err != nil {
		return false, err
	}
	prog := coll.DetachProgram(bpf.KnockgateProgKnockgate)
	defer func() {
		if !replaced {
			prog.Close()
			egress.Close()
		}
	}()
	same, err := sameProgram(g.Prog, prog)
	if err != nil {
		return false, err
	}
	sameEgress, err := sameProgram(g.Egress, egress)
	if err != nil || same && sameEgress {
		return false, err
	}

	if err := switchLinks(linkPins(g.Dir), prog, egress); err != nil {
		return false, err
	}
	// Links already run the programs; the pins are what later attachments
	// use.
	for _, p := range []struct {
		prog *ebpf.Program
		pin  string
	}{{prog, progPin}, {egress, egressProgPin}} {
		if err := pinReplacing(p.prog, filepath.Join(g.Dir, p.pin)); err != nil {
			return false, fmt.Errorf("pin program: %w", err)
		}
	}
	g.Prog.Close()
	g.Egress.Close()
	g.Prog, g.Egress = prog, egress
	return true, nil
}

// switchLinks updates each link pinned at pins in place (bpf_link update: no
// packet goes unjudged) to prog, or egress for an egress link. A defunct
// link (its interface gone) is left as it is: it is made again with the
// pinned program when the interface comes back.
func switchLinks(pins []string, prog, egress *ebpf.Program) error {
	for _, pin := range pins {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return fmt.Errorf("open pinned link %s: %w", pin, err)
		}
		next := prog
		if filepath.Base(pin) == egressPin {
			next = egress
		}
		err = l.Update(next)
		l.Close()
		if err != nil {
			if ifindex, ierr := pinnedIfindex(pin); ierr == nil && ifindex == 0 {
				continue
			}
			return fmt.Errorf("update link %s: %w", pin, err)
		}
		maps.KillPoint()
	}
	return nil
}

// sameProgram compares two programs by the kernel's tag (a hash of the
// instructions as loaded, map references left out).
func sameProgram(a, b *ebpf.Program) (bool, error) {
	ai, err := a.Info()
	if err != nil {
		return false, fmt.Errorf("read program info: %w", err)
	}
	bi, err := b.Info()
	if err != nil {
		return false, fmt.Errorf("read program info: %w", err)
	}
	return ai.Tag == bi.Tag, nil
}
