package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/maps"
)

// IfaceState is what the gate does on one of its interfaces.
type IfaceState string

const (
	// Attached: the program judges every packet the interface receives.
	Attached IfaceState = "attached"
	// Missing: the gate was attached, but the interface is gone (deleted,
	// or deleted and made again: a new interface under the same name has no
	// gate until it is attached again). Nothing is enforced there.
	Missing IfaceState = "missing"
	// Waiting: the gate is to be on the interface, which has not been
	// attached yet (it did not exist).
	Waiting IfaceState = "waiting"
)

// Iface is one interface of a gate.
type Iface struct {
	Name  string
	State IfaceState
	// Mode is how the link is attached (Attached, Missing).
	Mode Mode
	// Ifindex is the device the link is attached to (Attached), in the
	// network namespace it was attached in.
	Ifindex int
}

// Interfaces lists the gate's interfaces, by name.
func (g *Gate) Interfaces() ([]Iface, error) {
	entries, err := os.ReadDir(filepath.Join(g.Dir, ifacesDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list interfaces of gate %s: %w", g.Name, err)
	}
	var out []Iface
	for _, e := range entries {
		ifc := Iface{Name: unpinName(e.Name()), State: Waiting}
		if pin, mode, ok := g.linkPin(ifc.Name); ok {
			ifc.Mode = mode
			ifc.State = Missing
			if ifindex, err := pinnedIfindex(pin); err != nil {
				return nil, err
			} else if ifindex != 0 {
				ifc.State, ifc.Ifindex = Attached, ifindex
			}
		}
		out = append(out, ifc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// linkPin finds the link pinned for iface.
func (g *Gate) linkPin(iface string) (pin string, mode Mode, ok bool) {
	dir := filepath.Join(g.Dir, ifacesDir, pinName(iface))
	files, _ := os.ReadDir(dir)
	for _, f := range files {
		if m, ok := linkPinMode(f.Name()); ok {
			return filepath.Join(dir, f.Name()), m, true
		}
	}
	return "", "", false
}

// pinnedIfindex is the ifindex the link pinned at pin is attached to; 0
// once its interface is gone (the kernel then lets go of the device and
// keeps the link, defunct).
func pinnedIfindex(pin string) (int, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return 0, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("read link %s: %w", pin, err)
	}
	if xdp := info.XDP(); xdp != nil {
		return int(xdp.Ifindex), nil
	}
	if tcx := info.TCX(); tcx != nil {
		return int(tcx.Ifindex), nil
	}
	return 0, fmt.Errorf("link %s is neither an XDP nor a tcx link", pin)
}

// Want records iface as one of the gate's interfaces without attaching it
// (it is waiting until AttachInterface).
func (g *Gate) Want(iface string) error {
	unlock, err := g.lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(g.Dir, ifacesDir, pinName(iface))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

// AttachInterface puts the gate on iface, which must exist: a new
// interface of the gate, one it waits for, or one whose link went with the
// interface it was on (the interface was deleted and made again). It
// returns how the link is attached, or ErrAttached when the gate already
// judges iface's packets. Pinning the link is what makes it last, so a
// command killed before that leaves the interface as it was.
func (g *Gate) AttachInterface(iface string, mode Mode) (Mode, error) {
	ifc, err := Interface(iface)
	if err != nil {
		return "", err
	}
	unlock, err := g.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if o, err := owners(iface); err != nil {
		return "", err
	} else if len(o) > 0 && o[0] != g.Name || len(o) > 1 {
		return "", fmt.Errorf("interface %s is in gate %s: %w", iface, o[0], ErrAttached)
	}
	dir := filepath.Join(g.Dir, ifacesDir, pinName(iface))
	if pin, old, ok := g.linkPin(iface); ok {
		ifindex, err := pinnedIfindex(pin)
		if err != nil {
			return "", err
		}
		switch {
		case ifindex == ifc.Index:
			// Attached; an egress link missing (a kill between the two
			// attachments) is made now.
			if _, err := os.Stat(filepath.Join(dir, egressPin)); err == nil {
				return old, fmt.Errorf("gate %s on %s: %w", g.Name, iface, ErrAttached)
			}
			return old, attachEgress(g, iface, ifc.Index, dir)
		case ifindex != 0:
			return "", fmt.Errorf("gate %s: its link for %s is on another interface (ifindex %d): detach it first", g.Name, iface, ifindex)
		}
	}
	// The interface the links were on is gone: drop the defunct links.
	for _, name := range []string{egressPin, linkPinName(ModeNative), linkPinName(ModeGeneric)} {
		if err := detachPinned(filepath.Join(dir, name)); err != nil {
			return "", err
		}
	}
	if mode == "" {
		mode = ModeAuto
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	return attachAndPin(g, iface, ifc.Index, mode, dir)
}

// DetachInterface takes the gate off iface and forgets it; the gate stays
// on its other interfaces. It reports whether iface was one of them.
func (g *Gate) DetachInterface(iface string) (bool, error) {
	unlock, err := g.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	dir := filepath.Join(g.Dir, ifacesDir, pinName(iface))
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	for _, name := range []string{egressPin, linkPinName(ModeNative), linkPinName(ModeGeneric)} {
		if err := detachPinned(filepath.Join(dir, name)); err != nil {
			return true, err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return true, fmt.Errorf("remove %s: %w", dir, err)
	}
	return true, nil
}

// attachAndPin puts g on the interface: its XDP program (native, else
// generic in auto mode), pinned in dir under a name that records the mode,
// then its egress program. A link that fails to pin is closed, which takes
// it off the interface; an egress link that fails takes the XDP one off
// too, so the interface ends with both or neither.
func attachAndPin(g *Gate, iface string, ifindex int, mode Mode, dir string) (_ Mode, err error) {
	try := []Mode{ModeNative, ModeGeneric}
	switch mode {
	case ModeNative:
		try = try[:1]
	case ModeGeneric:
		try = try[1:]
	}
	var l link.Link
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: g.Prog, Interface: ifindex, Flags: flags})
		if err == nil {
			mode = m
			break
		}
		err = fmt.Errorf("attach xdp (%s) to %s: %w", m, iface, err)
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			// Another XDP program holds the interface: generic would fail too.
			return "", fmt.Errorf("%w: the interface already has an XDP program", err)
		}
	}
	if l == nil {
		return "", err
	}
	defer l.Close()
	maps.KillPoint() // killed here, the link goes with the process
	pin := filepath.Join(dir, linkPinName(mode))
	if err := l.Pin(pin); err != nil {
		return "", fmt.Errorf("pin link of %s: %w", iface, err)
	}
	maps.KillPoint()
	if err := attachEgress(g, iface, ifindex, dir); err != nil {
		l.Unpin()
		return "", err
	}
	return mode, nil
}

// attachEgress attaches g's egress program to the interface (tcx, after
// whatever is there) and pins the link in dir.
func attachEgress(g *Gate, iface string, ifindex int, dir string) error {
	l, err := link.AttachTCX(link.TCXOptions{Program: g.Egress, Interface: ifindex, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return fmt.Errorf("attach tcx egress to %s: %w", iface, err)
	}
	defer l.Close()
	if err := l.Pin(filepath.Join(dir, egressPin)); err != nil {
		return fmt.Errorf("pin egress link of %s: %w", iface, err)
	}
	return nil
}

// randomSuffix makes a name unique.
func randomSuffix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
