package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// Options for Create.
type Options struct {
	// Name of the gate; default: the first interface's name.
	Name string
	// Interfaces to attach to. With AllowMissing, one that does not exist
	// yet is recorded as waiting instead of failing the whole gate.
	Interfaces   []string
	AllowMissing bool
	Mode         Mode
	MaxSources   uint32
	MaxFlows     uint32
	// Config is the gate's configuration, its policy's allow lists
	// included.
	Config maps.Config
	// SPAKeys are the gate's single-packet authorization keys.
	SPAKeys []spa.Key
	// Grants are granted the service default for its open window before
	// the program attaches, so the operator's own session never sees a
	// dropped packet.
	Grants []netip.Addr
}

// GateName is the name opts makes the gate under.
func (o *Options) GateName() string {
	if o.Name == "" && len(o.Interfaces) > 0 {
		return o.Interfaces[0]
	}
	return o.Name
}

// Gate is a pinned gate: its program, its maps and where they are pinned.
// Its maps are read and changed through its methods, which hold the gate's
// lock (shared to read, exclusive to change), so no command sees a change
// half-made or undoes another's.
type Gate struct {
	Name string
	Dir  string
	// Maps are the gate's maps, for this package. Deprecated for others:
	// use the Gate's methods. It is exported only while test/bench
	// (memory.go, spa.go, gates.go) still reaches it, and is to become
	// unexported once it stops.
	Maps *maps.Set
	Prog *ebpf.Program // XDP, on every interface's ingress
	// Egress learns the host's flows, on every interface's egress (tcx).
	Egress *ebpf.Program
	objs   *Objects // set when this process loaded the programs
	// fwknopGrant is run's grant program for fwknop datagrams, loaded
	// onto a reopened gate's maps when first needed (fwknop.go).
	fwknopGrant *ebpf.Program
}

// Close releases this process's handles; the pinned gate keeps running.
func (g *Gate) Close() error {
	if g.fwknopGrant != nil {
		g.fwknopGrant.Close()
		g.fwknopGrant = nil
	}
	if g.objs != nil {
		return g.objs.Close()
	}
	var errs []error
	for _, p := range []*ebpf.Program{g.Prog, g.Egress} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	if g.Maps != nil {
		errs = append(errs, g.Maps.Close())
	}
	return errors.Join(errs...)
}

// Create loads the program, configures it, attaches it to every interface
// of opts and pins it all as the gate opts.GateName(). The gate appears
// complete or not at all: on any error nothing is left behind, and a killed
// Create leaves only a staging directory that the next command sweeps away.
// A gate already pinned under that name is ErrAttached.
func Create(opts Options) (_ *Gate, err error) {
	name := opts.GateName()
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if len(opts.Interfaces) == 0 {
		return nil, errors.New("no interface given")
	}
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if opts.MaxSources == 0 {
		opts.MaxSources = DefaultMaxSources
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	ifcs := make(map[string]int)
	for _, n := range opts.Interfaces {
		if _, dup := ifcs[n]; dup {
			return nil, fmt.Errorf("interface %s named twice", n)
		}
		ifc, err := Interface(n)
		if err != nil && !opts.AllowMissing {
			return nil, err
		}
		ifcs[n] = 0
		if ifc != nil {
			ifcs[n] = ifc.Index
		}
	}

	unlock, err := lockRoot()
	if err != nil {
		return nil, err
	}
	defer unlock()
	dir := GateDir(name)
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("gate %s: %w", name, ErrAttached)
	}
	for _, n := range opts.Interfaces {
		if o, err := owners(n); err != nil {
			return nil, err
		} else if len(o) > 0 {
			return nil, fmt.Errorf("interface %s is in gate %s: %w", n, o[0], ErrAttached)
		}
	}

	objs, err := LoadTuned(Sizes{MaxSources: opts.MaxSources, MaxFlows: opts.MaxFlows}, Tuning{})
	if err != nil {
		return nil, err
	}
	g := &Gate{Name: name, Dir: dir, Maps: maps.FromObjects(&objs.KnockgateMaps), Prog: objs.Knockgate,
		Egress: objs.Egress, objs: objs}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	cfg := opts.Config
	if cfg.SlotKey, err = maps.NewSlotKey(); err != nil {
		return nil, err
	}
	// The configuration goes in before the program sees its first packet,
	// and so do the keys (which name its services), the operator's grant
	// and the flows open already (the operator's own session among them),
	// so attaching never cuts one off.
	if _, err := g.Maps.WriteConfig(cfg); err != nil {
		return nil, err
	}
	if err := g.Maps.SetSPAKeys(opts.SPAKeys); err != nil {
		return nil, err
	}
	for _, addr := range opts.Grants {
		if err := g.Maps.Grant(addr, policy.DefaultService, maps.BootAfter(cfg.Policy.Default().Open)); err != nil {
			return nil, err
		}
	}
	if _, err := seedOpenFlows(g.Maps); err != nil {
		return nil, err
	}
	maps.KillPoint()

	staging, err := os.MkdirTemp(PinRoot, stagingPrefix+pinName(name)+" ")
	if err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	lock, err := flock(staging, unix.LOCK_EX)
	if err != nil {
		os.Remove(staging)
		return nil, fmt.Errorf("lock %s: %w", staging, err)
	}
	defer func() {
		if err != nil {
			teardown(staging)
		}
		lock.Close()
	}()
	maps.KillPoint()
	if err := g.Prog.Pin(filepath.Join(staging, progPin)); err != nil {
		return nil, fmt.Errorf("pin program: %w", err)
	}
	maps.KillPoint()
	if err := g.Egress.Pin(filepath.Join(staging, egressProgPin)); err != nil {
		return nil, fmt.Errorf("pin egress program: %w", err)
	}
	if err := g.Maps.Pin(staging); err != nil {
		return nil, err
	}
	maps.KillPoint()
	for _, n := range opts.Interfaces {
		ifdir := filepath.Join(staging, ifacesDir, pinName(n))
		if err := os.MkdirAll(ifdir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", ifdir, err)
		}
		if ifcs[n] == 0 {
			continue // waiting for it to appear
		}
		if _, err := attachAndPin(g, n, ifcs[n], opts.Mode, ifdir); err != nil {
			return nil, err
		}
	}
	maps.KillPoint()
	if err := os.Rename(staging, dir); err != nil {
		return nil, fmt.Errorf("install pins at %s: %w", dir, err)
	}
	maps.KillPoint()
	return g, nil
}

// Open reopens the gate pinned as name (a gate name; see Resolve for an
// interface's).
func Open(name string) (_ *Gate, err error) {
	finishUpgrades(name) // an upgrade from the previous release cut short
	dir := GateDir(name)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("knockgate on %s: %w", name, ErrNotAttached)
	}
	if _, err := os.Stat(filepath.Join(dir, progPin)); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, v1LinkPin)); err == nil {
			return nil, fmt.Errorf("gate %s: %w: run \"knockgate detach %s\" and attach again "+
				"(the detach drops its grants and knock progress)", name, ErrOldLayout, name)
		}
	}
	if isHintCounts(dir) {
		return nil, hintCountsError(name, dir)
	}
	set, err := maps.OpenPinned(dir)
	if errors.Is(err, fs.ErrNotExist) {
		// A map this build expects was never pinned: an older layout,
		// which run and attach upgrade if it is the previous release's.
		if prev, perr := isPrevious(dir); perr == nil && prev {
			return nil, previousReleaseError(name, dir)
		}
		return nil, fmt.Errorf("gate %s: %w: %w (detach and attach again)", name, ErrIncompatible, err)
	}
	if err != nil {
		return nil, err
	}
	return gateOf(name, dir, set)
}

// gateOf is the gate called name pinned at dir, whose maps set holds (and
// closes on an error): the maps checked against this build's layout, and
// both programs opened.
func gateOf(name, dir string, set *maps.Set) (_ *Gate, err error) {
	g := &Gate{Name: name, Dir: dir, Maps: set}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	if err := checkCompatible(set); err != nil {
		return nil, fmt.Errorf("gate %s: %w", name, err)
	}
	if g.Prog, err = ebpf.LoadPinnedProgram(filepath.Join(dir, progPin), nil); err != nil {
		return nil, fmt.Errorf("open pinned program of gate %s: %w", name, err)
	}
	if g.Egress, err = ebpf.LoadPinnedProgram(filepath.Join(dir, egressProgPin), nil); err != nil {
		return nil, fmt.Errorf("gate %s: %w: no egress program (detach and attach again): %w", name, ErrIncompatible, err)
	}
	return g, nil
}

// lock takes the gate's own lock, which orders every change inside it. It
// fails with ErrNotAttached when the gate was removed while it waited.
func (g *Gate) lock() (unlock func(), err error) { return g.flock(unix.LOCK_EX) }

// rlock takes the gate's lock shared, to read: readers do not wait for each
// other, only for a change in progress.
func (g *Gate) rlock() (unlock func(), err error) { return g.flock(unix.LOCK_SH) }

func (g *Gate) flock(how int) (unlock func(), err error) {
	f, err := flock(g.Dir, how)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("gate %s: %w", g.Name, ErrNotAttached)
		}
		return nil, fmt.Errorf("lock %s: %w", g.Dir, err)
	}
	held, err1 := f.Stat()
	now, err2 := os.Stat(g.Dir)
	if err1 != nil || err2 != nil || !os.SameFile(held, now) {
		f.Close()
		return nil, fmt.Errorf("gate %s: %w", g.Name, ErrNotAttached)
	}
	return func() { f.Close() }, nil
}

// UpdateConfig changes the gate's configuration: it reads it, lets change
// edit it, and writes it (maps.Set.WriteConfig), all under the gate's lock,
// so two commands changing one gate at once neither write the same idle
// slot nor undo each other's change. While a safe-mode change awaits
// confirmation it refuses (maps.ErrAwaitingConfirm) without calling change.
// An error from change writes nothing and is returned as is.
func (g *Gate) UpdateConfig(change func(*maps.Config) error) (maps.Config, error) {
	unlock, err := g.lock()
	if err != nil {
		return maps.Config{}, err
	}
	defer unlock()
	cfg, err := g.Maps.WritableConfig()
	if err != nil {
		return maps.Config{}, err
	}
	if err := change(&cfg); err != nil {
		return maps.Config{}, err
	}
	// Sessions already open on a port the change protects (or with flows
	// just turned on) are flows before the change takes effect, so
	// protecting a port never cuts them off.
	if _, err := seedFlows(g.Maps, &cfg); err != nil {
		return maps.Config{}, err
	}
	return g.Maps.WriteConfig(cfg)
}

// SetSPAKeys makes the gate's SPA keys exactly keys (maps.Set.SetSPAKeys),
// under the gate's lock: a live change, which neither writes the
// configuration nor voids knock progress.
func (g *Gate) SetSPAKeys(keys []spa.Key) error {
	return g.locked(func() error { return g.Maps.SetSPAKeys(keys) })
}

// RefreshClock makes the gate's SPA clock follow a change of the kernel's
// TAI offset (maps.Set.RefreshClock), under the gate's lock.
func (g *Gate) RefreshClock() (changed bool, err error) {
	err = g.locked(func() error {
		changed, err = g.Maps.RefreshClock()
		return err
	})
	return changed, err
}

// Grant grants addr service until expires (CLOCK_BOOTTIME; maps.Set.Grant),
// under the gate's lock.
func (g *Gate) Grant(addr netip.Addr, service string, expires uint64) error {
	return g.locked(func() error { return g.Maps.Grant(addr, service, expires) })
}

// Revoke ends addr's grant of service ("": of every service) and its knock
// progress (maps.Set.Revoke), under the gate's lock; found says whether it
// had either.
func (g *Gate) Revoke(addr netip.Addr, service string) (found bool, err error) {
	err = g.locked(func() error {
		found, err = g.Maps.Revoke(addr, service)
		return err
	})
	return found, err
}

// Settle reports what became of the safe-mode change written as generation
// gen and finishes its rollback if it lapsed (maps.Set.Settle), under the
// gate's lock: a `set` that comes in between can neither be undone by the
// rollback nor be mistaken for it.
func (g *Gate) Settle(gen uint32) (st maps.Settlement, err error) {
	err = g.locked(func() error {
		st, err = g.Maps.Settle(gen)
		return err
	})
	return st, err
}

// SeedFlows records in the gate's flow table the flows open now (in the
// calling thread's network namespace) from the ports it protects, under the
// gate's lock: an interface that was without the gate for a while loses none
// of the sessions opened meanwhile (see seedOpenFlows).
func (g *Gate) SeedFlows() (n int, err error) {
	err = g.locked(func() error {
		n, err = seedOpenFlows(g.Maps)
		return err
	})
	return n, err
}

// RebuildHints clears the hint bits no grant holds any more (revoked,
// recycled by the LRU: maps.Set.RebuildHints), under the gate's lock; run
// does it now and then, so that the filter in front of the grants map stays
// as tight as the grants it holds.
func (g *Gate) RebuildHints() (st maps.HintStats, err error) {
	err = g.locked(func() error {
		st, err = g.Maps.RebuildHints()
		return err
	})
	return st, err
}

// locked runs change under the gate's lock.
func (g *Gate) locked(change func() error) error {
	unlock, err := g.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return change()
}

// Confirm makes a safe-mode change permanent (maps.Set.ConfirmConfig).
func (g *Gate) Confirm() (maps.Config, error) {
	unlock, err := g.lock()
	if err != nil {
		return maps.Config{}, err
	}
	defer unlock()
	return g.Maps.ConfirmConfig()
}

// ExtendGrant makes addr's grant of service last until expires at least, never
// shortening it (maps.Set.ExtendGrant: in place, so a renewal the program
// makes meanwhile stands), under the gate's lock; the fleet applies other
// hosts' grants with it.
func (g *Gate) ExtendGrant(addr netip.Addr, service string, expires uint64) (changed bool, err error) {
	err = g.locked(func() error {
		changed, err = g.Maps.ExtendGrant(addr, service, expires)
		return err
	})
	return changed, err
}

// AdvanceReplay moves SPA key id's replay state forward to ms, never back
// (maps.Set.AdvanceReplay: a compare-and-swap, as the program's), under
// the gate's lock; the fleet writes other hosts' acceptances with it.
func (g *Gate) AdvanceReplay(id uint32, ms uint64) (moved bool, err error) {
	err = g.locked(func() error {
		moved, err = g.Maps.AdvanceReplay(id, ms)
		return err
	})
	return moved, err
}

// Detach removes the gate called name: every link comes off its interface
// and every pin goes. The gate disappears at once (it is renamed out of the
// way first); a Detach killed half-way is finished by the next command.
func Detach(name string) error {
	unlock, err := lockRoot()
	if err != nil {
		return err
	}
	defer unlock()
	dir := GateDir(name)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("knockgate on %s: %w", name, ErrNotAttached)
	}
	// Wait for changes in flight inside the gate; the lock stays on the
	// directory through the rename, so no sweep takes it from us.
	lock, err := flock(dir, unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("lock %s: %w", dir, err)
	}
	defer lock.Close()
	dying := filepath.Join(PinRoot, detachingPrefix+pinName(name)+" "+randomSuffix())
	maps.KillPoint()
	if err := os.Rename(dir, dying); err != nil {
		return fmt.Errorf("remove gate %s: %w", name, err)
	}
	maps.KillPoint()
	err = teardown(dying)
	// An upgrade of it that could not be finished (see migrate.go) goes too.
	sweep()
	return err
}
