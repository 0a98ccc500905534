// Package loader loads the knockgate XDP program, attaches it to an
// interface through a bpf_link, pins the link and maps so the gate outlives
// the command, reopens pinned gates, and detaches them. A failed attach
// leaves nothing behind.
package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

var (
	// ErrAttached: the interface already has a knockgate gate.
	ErrAttached = errors.New("already attached")
	// ErrNotAttached: no gate is pinned for the interface.
	ErrNotAttached = errors.New("not attached")
	// ErrIncompatible: the pinned gate was made by an incompatible build.
	ErrIncompatible = errors.New("pinned by an incompatible knockgate build")
)

// BPFFS is where the bpf filesystem is expected; PinRoot is knockgate's
// directory in it. Each gate pins under PinRoot/IFACE.
const (
	BPFFS   = "/sys/fs/bpf"
	PinRoot = BPFFS + "/knockgate"
	linkPin = "link"
)

// DefaultMaxSources sizes the knock-progress and grant maps.
const DefaultMaxSources = 65536

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

// PinDir is where the gate on iface is pinned. bpffs refuses names with a
// '.', which VLAN interfaces (eth0.100) have; interface names never contain
// ':', so mapping one to the other is unambiguous.
func PinDir(iface string) string {
	return filepath.Join(PinRoot, strings.ReplaceAll(iface, ".", ":"))
}

// Load loads the program and its maps, sized for maxSources, without
// attaching anything. The configuration is empty: every packet passes.
func Load(maxSources uint32) (*bpf.KnockgateObjects, error) {
	if maxSources < 1 || maxSources > MaxSourcesLimit {
		return nil, fmt.Errorf("max sources %d out of range (1-%d)", maxSources, MaxSourcesLimit)
	}
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	spec.Maps[bpf.KnockgateMapKnocks].MaxEntries = maxSources
	spec.Maps[bpf.KnockgateMapGrants].MaxEntries = maxSources
	var objs bpf.KnockgateObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load program: %+v", verr)
		}
		return nil, fmt.Errorf("load program: %w", err)
	}
	return &objs, nil
}

// Options for Attach.
type Options struct {
	Iface      string
	Mode       Mode
	MaxSources uint32
	Config     maps.Config
	Allow      []netip.Prefix
	// Grants are granted for the open window before the program attaches,
	// so the operator's own session never sees a dropped packet.
	Grants []netip.Addr
}

// Gate is an attached gate: its maps and, when available, its link.
type Gate struct {
	Iface string
	Dir   string
	Maps  *maps.Set
	Link  link.Link
	objs  *bpf.KnockgateObjects // set when this process loaded the program
}

// Close releases this process's handles; the pinned gate keeps running.
func (g *Gate) Close() error {
	var errs []error
	if g.Link != nil {
		errs = append(errs, g.Link.Close())
	}
	if g.objs != nil {
		errs = append(errs, g.objs.Close())
	} else if g.Maps != nil {
		errs = append(errs, g.Maps.Close())
	}
	return errors.Join(errs...)
}

// Interface resolves an interface name with an error that names it.
func Interface(name string) (*net.Interface, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("unknown interface %q", name)
	}
	return ifc, nil
}

// Attach loads the program, configures it, attaches it to opts.Iface and
// pins it under PinDir(opts.Iface). On any error nothing is left behind.
func Attach(opts Options) (_ *Gate, err error) {
	ifc, err := Interface(opts.Iface)
	if err != nil {
		return nil, err
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
	dir := PinDir(opts.Iface)
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("knockgate on %s: %w (run detach first)", opts.Iface, ErrAttached)
	}
	if err := mountBPFFS(); err != nil {
		return nil, err
	}

	objs, err := Load(opts.MaxSources)
	if err != nil {
		return nil, err
	}
	g := &Gate{Iface: opts.Iface, Dir: dir, Maps: maps.FromObjects(&objs.KnockgateMaps), objs: objs}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()

	if err := g.Maps.SetAllow(opts.Allow); err != nil {
		return nil, err
	}
	cfg := opts.Config
	cfg.AllowCount = uint32(len(opts.Allow))
	for _, addr := range opts.Grants {
		if err := g.Maps.Grant(addr, maps.BootAfter(cfg.Open)); err != nil {
			return nil, err
		}
	}

	// The configuration goes in before the program sees its first packet.
	try := []maps.Mode{maps.ModeNative, maps.ModeGeneric}
	switch opts.Mode {
	case ModeNative:
		try = try[:1]
	case ModeGeneric:
		try = try[1:]
	}
	var attachErr error
	for _, mode := range try {
		cfg.Mode = mode
		if _, err := g.Maps.WriteConfig(cfg); err != nil {
			return nil, err
		}
		flags := link.XDPDriverMode
		if mode == maps.ModeGeneric {
			flags = link.XDPGenericMode
		}
		g.Link, attachErr = link.AttachXDP(link.XDPOptions{
			Program:   objs.Knockgate,
			Interface: ifc.Index,
			Flags:     flags,
		})
		if attachErr == nil {
			break
		}
		attachErr = fmt.Errorf("attach xdp (%s) to %s: %w", mode, opts.Iface, attachErr)
		if errors.Is(attachErr, unix.EBUSY) || errors.Is(attachErr, unix.EEXIST) {
			// Another XDP program holds the interface: generic would fail too.
			return nil, fmt.Errorf("%w: the interface already has an XDP program", attachErr)
		}
	}
	if g.Link == nil {
		return nil, attachErr
	}

	if err := g.pin(); err != nil {
		return nil, err
	}
	return g, nil
}

// pin pins the link and maps into a temporary directory and renames it into
// place, so a gate is either completely pinned or not at all.
func (g *Gate) pin() (err error) {
	// A space can never be part of an interface name, so List skips it.
	// Retried: a concurrent Detach of the last other gate removes PinRoot,
	// and may do so between the two calls.
	var tmp string
	for try := 0; ; try++ {
		if err = os.MkdirAll(PinRoot, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", PinRoot, err)
		}
		tmp, err = os.MkdirTemp(PinRoot, "pinning "+filepath.Base(g.Dir)+" ")
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) || try == 2 {
			os.Remove(PinRoot)
			return fmt.Errorf("create pin directory: %w", err)
		}
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
			os.Remove(PinRoot) // only if no other gate is pinned
		}
	}()
	if err := g.Link.Pin(filepath.Join(tmp, linkPin)); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	if err := g.Maps.Pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, g.Dir); err != nil {
		return fmt.Errorf("install pins at %s: %w", g.Dir, err)
	}
	return nil
}

// UpdateConfig changes the pinned gate's configuration: it reads it, lets
// change edit it, and writes it (maps.Set.WriteConfig), all under an
// exclusive lock on the gate's pin directory, so two commands changing one
// gate at once neither write the same idle slot nor undo each other's
// change. An error from change writes nothing and is returned as is.
func (g *Gate) UpdateConfig(change func(*maps.Config) error) (maps.Config, error) {
	dir, err := os.Open(g.Dir)
	if err != nil {
		return maps.Config{}, fmt.Errorf("lock %s: %w", g.Dir, err)
	}
	defer dir.Close()
	if err := unix.Flock(int(dir.Fd()), unix.LOCK_EX); err != nil {
		return maps.Config{}, fmt.Errorf("lock %s: %w", g.Dir, err)
	}
	defer unix.Flock(int(dir.Fd()), unix.LOCK_UN)
	cfg, err := g.Maps.ReadConfig()
	if err != nil {
		return maps.Config{}, err
	}
	if err := change(&cfg); err != nil {
		return maps.Config{}, err
	}
	return g.Maps.WriteConfig(cfg)
}

// Open reopens the gate pinned for iface.
func Open(iface string) (_ *Gate, err error) {
	dir := PinDir(iface)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("knockgate on %s: %w", iface, ErrNotAttached)
	}
	set, err := maps.OpenPinned(dir)
	if errors.Is(err, os.ErrNotExist) {
		// A map this build expects was never pinned: an older layout.
		return nil, fmt.Errorf("knockgate on %s: %w: %w (detach and attach again)", iface, ErrIncompatible, err)
	}
	if err != nil {
		return nil, err
	}
	g := &Gate{Iface: iface, Dir: dir, Maps: set}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	if err := checkCompatible(set); err != nil {
		return nil, fmt.Errorf("knockgate on %s: %w", iface, err)
	}
	if g.Link, err = link.LoadPinnedLink(filepath.Join(dir, linkPin), nil); err != nil {
		return nil, fmt.Errorf("open pinned link of %s: %w", iface, err)
	}
	return g, nil
}

// checkCompatible compares the pinned maps with the ones this build would
// create: a gate pinned by another layout must not be read with this one.
func checkCompatible(set *maps.Set) error {
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return err
	}
	for name, m := range set.ByName() {
		want := spec.Maps[name]
		if m.Type() != want.Type || m.KeySize() != want.KeySize || m.ValueSize() != want.ValueSize {
			return fmt.Errorf("map %s: %w (detach and attach again)", name, ErrIncompatible)
		}
	}
	return nil
}

// List names the interfaces that have a pinned gate.
func List() ([]string, error) {
	entries, err := os.ReadDir(PinRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list gates: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.ContainsRune(e.Name(), ' ') {
			names = append(names, strings.ReplaceAll(e.Name(), ":", "."))
		}
	}
	return names, nil
}

// Detach removes the gate on iface: the program leaves the interface and
// every pin is removed.
func Detach(iface string) error {
	dir := PinDir(iface)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("knockgate on %s: %w", iface, ErrNotAttached)
	}
	var errs []error
	if l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil); err == nil {
		// Detach explicitly: another process (an events reader) may still
		// hold the program, which must not keep it on the interface.
		if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
			errs = append(errs, fmt.Errorf("detach link: %w", err))
		}
		l.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	// Leave no empty knockgate directory behind once the last gate is gone.
	os.Remove(PinRoot)
	return errors.Join(errs...)
}

// mountBPFFS mounts the bpf filesystem at BPFFS unless it is there already.
func mountBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", BPFFS, err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFS, err)
	}
	return nil
}
