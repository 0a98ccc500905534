package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/maps"
)

// The pin layout (layout 2). One directory per gate under PinRoot, holding
// the program and every map once, and one directory per interface the gate
// is on, holding that interface's XDP link:
//
//	/sys/fs/bpf/knockgate/GATE/prog, egress          the XDP and tc egress programs
//	/sys/fs/bpf/knockgate/GATE/configs, knocks, …   its maps
//	/sys/fs/bpf/knockgate/GATE/ifaces/IFACE/xdp-native   the XDP link (or xdp-generic)
//	/sys/fs/bpf/knockgate/GATE/ifaces/IFACE/tcx-egress   the egress link
//
// An interface directory without a link is an interface the gate waits
// for. bpffs holds only pinned objects and directories, so what status needs
// to know is written in names: the attach mode in the link's.
//
// A gate is made in a staging directory ("pinning GATE RAND") and renamed
// into place, and removed by renaming it to "detaching GATE RAND" first, so
// it appears and disappears whole. A gate of the previous release is
// upgraded through "upgrading GATE RAND", then "upgraded GATE RAND" (see
// migrate.go). Whoever works in such a directory holds an flock on it; one
// whose maker died (the lock is free) is finished off by the next command
// (sweep). Spaces mark them: no gate or interface name has one.
//
// Layout 1, of the first release, was one gate per interface with the link
// pinned beside the maps as PinRoot/IFACE/link; such a gate can be shown
// and detached (see ErrOldLayout).
const (
	BPFFS   = "/sys/fs/bpf"
	PinRoot = BPFFS + "/knockgate"

	progPin       = "prog"
	egressProgPin = "egress"
	ifacesDir     = "ifaces"
	v1LinkPin     = "link"
	// egressPin is an interface's tc (tcx) egress link, which learns flows.
	egressPin = "tcx-egress"

	stagingPrefix   = "pinning "
	detachingPrefix = "detaching "
)

// pinReplacing pins obj (a map or program) at pin in one rename, so that a
// reader finds the old object or the new, never none: pinned beside as
// pin-new (a leftover of an attempt cut short is removed first), then moved
// over pin.
func pinReplacing(obj interface{ Pin(string) error }, pin string) error {
	next := pin + "-new"
	os.Remove(next)
	if err := obj.Pin(next); err != nil {
		return err
	}
	if err := os.Rename(next, pin); err != nil {
		os.Remove(next)
		return err
	}
	return nil
}

// pinName maps a gate or interface name to a bpffs file name. bpffs refuses
// names with a '.', which VLAN interfaces (eth0.100) have; interface names
// never contain ':', so mapping one to the other is unambiguous.
func pinName(name string) string { return strings.ReplaceAll(name, ".", ":") }

// unpinName is the inverse of pinName.
func unpinName(file string) string { return strings.ReplaceAll(file, ":", ".") }

// GateDir is where the gate called name is pinned.
func GateDir(name string) string { return filepath.Join(PinRoot, pinName(name)) }

// ValidateName checks a gate name: what an interface name may be (the
// default gate name is the first interface's), up to 64 characters.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("gate name is empty")
	case len(name) > 64:
		return fmt.Errorf("gate name %q is longer than 64 characters", name)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("gate name %q: use letters, digits, '-', '_' or '.'", name)
	}
	return nil
}

// linkPinName is the file an interface's XDP link is pinned as; the mode is
// in the name so status can report it from any namespace.
func linkPinName(mode Mode) string { return "xdp-" + string(mode) }

// linkPinMode is the inverse of linkPinName; ok is false for other files.
func linkPinMode(file string) (Mode, bool) {
	m, ok := strings.CutPrefix(file, "xdp-")
	if !ok || (Mode(m) != ModeNative && Mode(m) != ModeGeneric) {
		return "", false
	}
	return Mode(m), true
}

// flock opens path and takes an flock on it (how: unix.LOCK_EX, with
// unix.LOCK_NB to fail rather than wait). Closing the file releases it; so
// does the process's death.
// lockGateDir takes the lock of the gate called name, exclusive, from
// outside a Gate (which has lock): ErrNotAttached when there is none.
func lockGateDir(name string) (*os.File, error) {
	dir := GateDir(name)
	f, err := flock(dir, unix.LOCK_EX)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("knockgate on %s: %w", name, ErrNotAttached)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

func flock(path string, how int) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// lockRoot takes the lock that orders making, removing and sweeping gates.
// Always taken before a gate's own lock, never after.
func lockRoot() (unlock func(), err error) {
	if err := mountBPFFS(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(PinRoot, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", PinRoot, err)
	}
	f, err := flock(PinRoot, unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", PinRoot, err)
	}
	sweep()
	return func() { f.Close() }, nil
}

// sweep finishes what killed commands left: staging directories of gates
// never made, and gates whose removal was cut short. Called with the root
// lock held.
func sweep() {
	entries, _ := os.ReadDir(PinRoot)
	for _, e := range entries {
		name := e.Name()
		upgrade := strings.HasPrefix(name, upgradingPrefix) || strings.HasPrefix(name, upgradedPrefix)
		if !upgrade && !strings.HasPrefix(name, stagingPrefix) && !strings.HasPrefix(name, detachingPrefix) {
			continue
		}
		dir := filepath.Join(PinRoot, name)
		f, err := flock(dir, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			continue // its maker is still at work
		}
		if upgrade {
			sweepUpgrade(dir) // see migrate.go
		} else {
			teardown(dir)
		}
		f.Close()
	}
}

// trySweep sweeps unless another command holds the root lock (which sweeps
// itself): so that even a command that only reads (status) finishes a
// killed detach, whose program would otherwise go on judging packets with
// its gate out of sight.
func trySweep() {
	f, err := flock(PinRoot, unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return
	}
	defer f.Close()
	sweep()
}

// teardown takes every link pinned under dir off its interface and removes
// dir. The links are detached explicitly: another process (an events reader)
// may still hold the program, which must not keep it on an interface.
func teardown(dir string) error {
	var errs []error
	for _, pin := range linkPins(dir) {
		if err := detachPinned(pin); err != nil {
			errs = append(errs, err)
		}
		maps.KillPoint()
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	return errors.Join(errs...)
}

// linkPins lists the link pins of the gate (or staging directory) at dir,
// of either layout.
func linkPins(dir string) []string {
	var pins []string
	if _, err := os.Stat(filepath.Join(dir, v1LinkPin)); err == nil {
		pins = append(pins, filepath.Join(dir, v1LinkPin))
	}
	ifaces, _ := os.ReadDir(filepath.Join(dir, ifacesDir))
	for _, ifc := range ifaces {
		files, _ := os.ReadDir(filepath.Join(dir, ifacesDir, ifc.Name()))
		for _, f := range files {
			if _, ok := linkPinMode(f.Name()); ok || f.Name() == egressPin {
				pins = append(pins, filepath.Join(dir, ifacesDir, ifc.Name(), f.Name()))
			}
		}
	}
	return pins
}

// detachPinned takes the link pinned at pin off its interface and unpins
// it. A link whose interface is gone is already off.
func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach link %s: %w", pin, err)
	}
	if err := l.Unpin(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpin link %s: %w", pin, err)
	}
	return nil
}

// List names the pinned gates.
func List() ([]string, error) {
	trySweep()
	entries, err := os.ReadDir(PinRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list gates: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.ContainsRune(e.Name(), ' ') {
			names = append(names, unpinName(e.Name()))
		}
	}
	return names, nil
}

// Resolve names the gate that arg designates: the gate called arg, or else
// the one gate that has an interface called arg.
func Resolve(arg string) (string, error) {
	if st, err := os.Stat(GateDir(arg)); err == nil && st.IsDir() && !strings.ContainsRune(arg, ' ') {
		return arg, nil
	}
	owners, err := owners(arg)
	if err != nil {
		return "", err
	}
	switch len(owners) {
	case 0:
		return "", fmt.Errorf("knockgate on %s: %w", arg, ErrNotAttached)
	case 1:
		return owners[0], nil
	}
	return "", fmt.Errorf("interface %s belongs to several gates (%s): name the gate", arg, strings.Join(owners, ", "))
}

// owners lists the gates that have an interface called iface.
func owners(iface string) ([]string, error) {
	gates, err := List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range gates {
		if _, err := os.Stat(filepath.Join(GateDir(g), ifacesDir, pinName(iface))); err == nil {
			out = append(out, g)
		}
	}
	return out, nil
}

// mountBPFFS mounts the bpf filesystem at BPFFS unless it is there already.
func mountBPFFS() error {
	var st unix.Statfs_t
	// Statfs_t.Type is int32 on 32-bit ARM and 386: compare the magic's
	// 32 bits (uint32 of it is the same value on every architecture).
	if err := unix.Statfs(BPFFS, &st); err == nil && uint32(st.Type) == unix.BPF_FS_MAGIC {
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
