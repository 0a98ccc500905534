package loader_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/netns"
)

func config() maps.Config {
	return maps.Config{Policy: policy.Policy{Services: []policy.Service{{
		Name:        policy.DefaultService,
		Sequence:    []policy.Port{{Num: 9000, Proto: policy.TCP}, {Num: 8000, Proto: policy.TCP}},
		StepTimeout: time.Minute,
		Open:        time.Minute,
		Protect:     []policy.Port{{Num: 22, Proto: policy.TCP}},
	}}}}
}

// host is a namespace of the test's own with veth ends in it, each peered
// into a second namespace. The loader resolves interfaces in the calling
// thread's namespace; pins go to the host's bpffs all the same.
type host struct {
	t      *testing.T
	ns     *netns.NS
	peerNS *netns.NS
}

func newHost(t *testing.T, tag string) *host {
	t.Helper()
	h := &host{t: t,
		ns:     netns.NewT(t, fmt.Sprintf("kgl-%s-%d", tag, os.Getpid())),
		peerNS: netns.NewT(t, fmt.Sprintf("kgl-%sp-%d", tag, os.Getpid())),
	}
	return h
}

// veth makes a veth pair with name in the host and name+"p" in the peer.
func (h *host) veth(name string) {
	h.t.Helper()
	if err := netns.Veth(h.ns, name, h.peerNS, name+"p"); err != nil {
		h.t.Fatal(err)
	}
}

// unplug deletes the veth pair name (through its peer end, as a VPN or a
// container going away would).
func (h *host) unplug(name string) {
	h.t.Helper()
	if _, err := h.peerNS.Run("ip", "link", "del", name+"p"); err != nil {
		h.t.Fatal(err)
	}
}

// do runs fn inside the host namespace, and detaches gate when the test
// ends.
func (h *host) do(gate string, fn func() error) {
	h.t.Helper()
	if gate != "" {
		h.t.Cleanup(func() { h.ns.Do(func() error { return loader.Detach(gate) }) })
	}
	if err := h.ns.Do(fn); err != nil {
		h.t.Fatal(err)
	}
}

// xdpProg is the id of the XDP program on iface, or 0.
func xdpProg(t *testing.T, iface string) uint32 {
	t.Helper()
	// Asked of this namespace's netlink (the caller's thread is in the
	// host namespace): ifindexes are per namespace, so the system-wide list
	// of links could name another namespace's interface of the same index.
	l, err := netlink.LinkByName(iface)
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

func TestCreatePinsAndDetachRemoves(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "a")
	h.veth("kgla0")
	h.veth("kgla1")
	h.do("kgla0", func() error {
		cfg := config()
		cfg.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		g, err := loader.Create(loader.Options{Interfaces: []string{"kgla0", "kgla1"}, Config: cfg, MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		dir := loader.GateDir("kgla0")
		for _, name := range append(maps.PinNames(), "prog", "ifaces/kgla0/xdp-native", "ifaces/kgla1/xdp-native") {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				t.Errorf("pin %s: %v", name, err)
			}
		}
		if xdpProg(t, "kgla0") == 0 || xdpProg(t, "kgla0") != xdpProg(t, "kgla1") {
			t.Errorf("programs on the two interfaces: %d and %d, want one and the same", xdpProg(t, "kgla0"), xdpProg(t, "kgla1"))
		}
		// Making it twice is refused and leaves the first gate as it was.
		if _, err := loader.Create(loader.Options{Interfaces: []string{"kgla0"}, Config: config()}); !errors.Is(err, loader.ErrAttached) {
			t.Errorf("second create: %v, want ErrAttached", err)
		}
		// So is putting another gate on one of its interfaces.
		if _, err := loader.Create(loader.Options{Name: "kgl-other", Interfaces: []string{"kgla1"}, Config: config()}); !errors.Is(err, loader.ErrAttached) {
			t.Errorf("create on an interface of another gate: %v, want ErrAttached", err)
		}
		for _, arg := range []string{"kgla0", "kgla1"} {
			if name, err := loader.Resolve(arg); err != nil || name != "kgla0" {
				t.Errorf("Resolve(%s) = %q, %v; want kgla0", arg, name, err)
			}
		}
		g, err = loader.Open("kgla0")
		if err != nil {
			return err
		}
		installed, err := g.Config()
		ifaces, ierr := g.Interfaces()
		g.Close()
		if err != nil || ierr != nil {
			return errors.Join(err, ierr)
		}
		if installed.Generation != 1 {
			t.Errorf("reopened config %+v, want generation 1", installed)
		}
		if len(ifaces) != 2 || ifaces[0].State != loader.Attached || ifaces[1].State != loader.Attached || ifaces[0].Mode != loader.ModeNative {
			t.Errorf("interfaces %+v, want both attached natively", ifaces)
		}
		// Reads go through the gate: the policy with its allow list, the
		// sizes it was made with; none once it is detached.
		held, err := loader.Open("kgla0")
		if err != nil {
			return err
		}
		defer held.Close()
		p, err := held.Policy()
		if want := cfg.Policy; err != nil || len(policy.Diff(&want, &p)) != 0 {
			t.Errorf("policy %+v, %v; want %+v", p, err, want)
		}
		if sz := held.Sizes(); sz.MaxSources != 128 || sz.MaxFlows != loader.FlowSlots(loader.DefaultMaxFlows) {
			t.Errorf("sizes %+v, want 128 sources and the default flows", sz)
		}
		if err := loader.Detach("kgla0"); err != nil {
			return err
		}
		if _, err := held.Config(); !errors.Is(err, loader.ErrNotAttached) {
			t.Errorf("read after detach: %v, want ErrNotAttached", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pins left after detach: %v", err)
		}
		if id := xdpProg(t, "kgla1"); id != 0 {
			t.Errorf("XDP program %d still on kgla1 after detach", id)
		}
		if _, err := loader.Open("kgla0"); !errors.Is(err, loader.ErrNotAttached) {
			t.Errorf("open after detach: %v, want ErrNotAttached", err)
		}
		return nil
	})
}

func TestFailedCreateLeavesNothing(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "b")
	h.veth("kglb0")
	h.do("", func() error {
		bad := config()
		bad.Policy.Services[0].Sequence = nil
		cases := map[string]loader.Options{
			"unknown interface":       {Interfaces: []string{"kglb0", "kgl-none"}, Config: config()},
			"bad config":              {Interfaces: []string{"kglb0"}, Config: bad},
			"too many sources":        {Interfaces: []string{"kglb0"}, Config: config(), MaxSources: loader.MaxSourcesLimit + 1},
			"interface named twice":   {Interfaces: []string{"kglb0", "kglb0"}, Config: config()},
			"bad gate name":           {Name: "a/b", Interfaces: []string{"kglb0"}, Config: config()},
			"generic mode, then busy": {Interfaces: []string{"kglb0"}, Config: config(), Mode: loader.ModeGeneric},
		}
		// The last case finds the interface taken by a foreign program.
		foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
		if err != nil {
			return err
		}
		defer foreign.Close()
		for what, opts := range cases {
			if what == "generic mode, then busy" {
				ifc, _ := net.InterfaceByName("kglb0")
				l, err := link.AttachXDP(link.XDPOptions{Program: foreign, Interface: ifc.Index, Flags: link.XDPGenericMode})
				if err != nil {
					return err
				}
				defer l.Close()
			}
			if _, err := loader.Create(opts); err == nil {
				t.Errorf("%s: create succeeded", what)
			}
			entries, _ := os.ReadDir(loader.PinRoot)
			for _, e := range entries {
				if strings.Contains(e.Name(), "kglb0") {
					t.Errorf("%s: %s left behind", what, e.Name())
				}
			}
		}
		return nil
	})
}

// A gate pinned by a build with another map layout must be refused, not
// misread.
func TestOpenRefusesIncompatiblePins(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "c")
	h.veth("kglc0")
	h.do("kglc0", func() error {
		g, err := loader.Create(loader.Options{Interfaces: []string{"kglc0"}, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		// Replace the grants pin with a map of another value size.
		pin := filepath.Join(loader.GateDir("kglc0"), "grants")
		if err := os.Remove(pin); err != nil {
			return err
		}
		other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 24, MaxEntries: 4})
		if err != nil {
			return err
		}
		defer other.Close()
		if err := other.Pin(pin); err != nil {
			return err
		}
		if _, err := loader.Open("kglc0"); !errors.Is(err, loader.ErrIncompatible) {
			t.Errorf("open with a foreign grants map: %v, want ErrIncompatible", err)
		}
		// A missing pin is an older layout too.
		if err := os.Remove(pin); err != nil {
			return err
		}
		if _, err := loader.Open("kglc0"); !errors.Is(err, loader.ErrIncompatible) {
			t.Errorf("open with the grants pin missing: %v, want ErrIncompatible", err)
		}
		return nil
	})
}

// Concurrent changes to one gate must not undo each other: each of these
// adds one protected port, so every port must be there at the end. (Each
// write waits for RCU grace periods, so unlocked read-modify-writes would
// overlap and lose ports.)
func TestConcurrentUpdatesAllLand(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "d")
	h.veth("kgld0")
	h.do("kgld0", func() error {
		g, err := loader.Create(loader.Options{Interfaces: []string{"kgld0"}, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		const writers = 12
		errs := make(chan error, writers)
		for i := range writers {
			go func() {
				g, err := loader.Open("kgld0")
				if err != nil {
					errs <- err
					return
				}
				defer g.Close()
				_, err = g.UpdateConfig(func(c *maps.Config) error {
					d := c.Policy.Default()
					d.Protect = append(d.Protect, policy.Port{Num: uint16(1000 + i), Proto: policy.TCP})
					return nil
				})
				errs <- err
			}()
		}
		for range writers {
			if err := <-errs; err != nil {
				return err
			}
		}
		g, err = loader.Open("kgld0")
		if err != nil {
			return err
		}
		defer g.Close()
		cfg, err := g.Config()
		if err != nil {
			return err
		}
		if prot := cfg.Policy.Default().Protect; len(prot) != 1+writers || cfg.Generation != 1+writers {
			t.Errorf("after %d concurrent updates: protected %v, generation %d; want all %d ports, generation %d",
				writers, prot, cfg.Generation, 1+writers, 1+writers)
		}
		return nil
	})
}

// An interface that goes away leaves the gate missing there; when one of
// that name comes back, the gate goes back on it with its state.
func TestInterfaceComesBack(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "e")
	h.veth("kgle0")
	h.veth("kgle1")
	granted := netip.MustParseAddr("192.0.2.9")
	h.do("kgle", func() error {
		g, err := loader.Create(loader.Options{Name: "kgle", Interfaces: []string{"kgle0", "kgle1", "kgle2"},
			AllowMissing: true, Config: config(), MaxSources: 128, Grants: []netip.Addr{granted}})
		if err != nil {
			return err
		}
		defer g.Close()
		state := func() map[string]loader.Iface {
			ifaces, err := g.Interfaces()
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]loader.Iface{}
			for _, i := range ifaces {
				out[i.Name] = i
			}
			return out
		}
		st := state()
		if st["kgle0"].State != loader.Attached || st["kgle1"].State != loader.Attached || st["kgle2"].State != loader.Waiting {
			t.Fatalf("after create: %+v, want kgle0 and kgle1 attached, kgle2 waiting", st)
		}
		old := st["kgle1"].Ifindex

		h.unplug("kgle1")
		if s := state()["kgle1"]; s.State != loader.Missing {
			t.Errorf("after the interface went: %+v, want missing", s)
		}
		if s := state()["kgle0"]; s.State != loader.Attached {
			t.Errorf("the other interface: %+v, want attached", s)
		}
		h.veth("kgle1")
		if s := state()["kgle1"]; s.State != loader.Missing {
			t.Errorf("after a new interface of the name came: %+v, want missing (nothing attached to it)", s)
		}
		if _, err := g.AttachInterface("kgle1", loader.ModeAuto); err != nil {
			return err
		}
		if s := state()["kgle1"]; s.State != loader.Attached || s.Ifindex == old {
			t.Errorf("after attaching again: %+v, want attached to a new ifindex (was %d)", s, old)
		}
		if _, err := g.AttachInterface("kgle1", loader.ModeAuto); !errors.Is(err, loader.ErrAttached) {
			t.Errorf("attach twice: %v, want ErrAttached", err)
		}
		// The one it waited for appears.
		h.veth("kgle2")
		if _, err := g.AttachInterface("kgle2", loader.ModeAuto); err != nil {
			return err
		}
		if s := state()["kgle2"]; s.State != loader.Attached {
			t.Errorf("kgle2 after it appeared: %+v, want attached", s)
		}
		if _, ok, err := g.LookupGrant(granted, policy.DefaultService); err != nil || !ok {
			t.Errorf("grant of %s after the interface came back: %v, %v; want kept", granted, ok, err)
		}
		if ok, err := g.DetachInterface("kgle0"); !ok || err != nil {
			t.Errorf("detach one interface: %v, %v", ok, err)
		}
		if _, there := state()["kgle0"]; there || xdpProg(t, "kgle0") != 0 {
			t.Errorf("kgle0 still in the gate (or attached) after DetachInterface")
		}
		return nil
	})
}

// oldProgram stands for an older build's program: another program (another
// tag) that the gate's links and pin hold.
func oldProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// A gate running another build's program gets this build's through its
// links, keeping its maps; no moment without a program on the interface.
func TestUpgradeReplacesProgramInPlace(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "f")
	h.veth("kglf0")
	granted := netip.MustParseAddr("2001:db8::9")
	h.do("kglf0", func() error {
		g, err := loader.Create(loader.Options{Interfaces: []string{"kglf0"}, Config: config(), MaxSources: 128, Grants: []netip.Addr{granted}})
		if err != nil {
			return err
		}
		g.Close()
		if g, err = loader.Open("kglf0"); err != nil {
			return err
		}
		defer g.Close()
		if replaced, err := g.Upgrade(); err != nil || replaced {
			t.Errorf("upgrade to the same build: replaced %v, %v; want nothing to do", replaced, err)
		}

		// Make it an older build's gate: its program in the link and the pin.
		old := oldProgram(t)
		dir := loader.GateDir("kglf0")
		l, err := link.LoadPinnedLink(filepath.Join(dir, "ifaces/kglf0/xdp-native"), nil)
		if err != nil {
			return err
		}
		if err := l.Update(old); err != nil {
			return err
		}
		l.Close()
		os.Remove(filepath.Join(dir, "prog"))
		if err := old.Pin(filepath.Join(dir, "prog")); err != nil {
			return err
		}
		oldInfo, _ := old.Info()
		oldID, _ := oldInfo.ID()
		if got := xdpProg(t, "kglf0"); got != uint32(oldID) {
			t.Fatalf("program on kglf0 %d, want the old one %d", got, oldID)
		}

		g.Close()
		if g, err = loader.Open("kglf0"); err != nil {
			return err
		}
		replaced, err := g.Upgrade()
		if err != nil || !replaced {
			t.Fatalf("upgrade from the old build: replaced %v, %v; want replaced", replaced, err)
		}
		newInfo, _ := g.Prog.Info()
		newID, _ := newInfo.ID()
		if got := xdpProg(t, "kglf0"); got != uint32(newID) || newID == oldID {
			t.Errorf("program on kglf0 %d, want the new one %d (old %d)", got, newID, oldID)
		}
		pinned, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "prog"), nil)
		if err != nil {
			return err
		}
		pinnedInfo, _ := pinned.Info()
		pinned.Close()
		if pinnedInfo.Tag != newInfo.Tag || pinnedInfo.Tag == oldInfo.Tag {
			t.Errorf("pinned program tag %s, want the new %s", pinnedInfo.Tag, newInfo.Tag)
		}
		if _, ok, err := g.LookupGrant(granted, policy.DefaultService); err != nil || !ok {
			t.Errorf("grant after the upgrade: %v, %v; want kept", ok, err)
		}
		if replaced, err := g.Upgrade(); err != nil || replaced {
			t.Errorf("second upgrade: replaced %v, %v; want nothing to do", replaced, err)
		}
		return nil
	})
}

// A command killed while making a gate leaves a staging directory holding
// live links; the next command takes them off and removes it.
func TestSweepFinishesKilledCreate(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "g")
	h.veth("kglg0")
	h.veth("kglg1")
	h.do("kglg1", func() error {
		objs, err := loader.Load(128)
		if err != nil {
			return err
		}
		defer objs.Close()
		ifc, _ := net.InterfaceByName("kglg0")
		l, err := link.AttachXDP(link.XDPOptions{Program: objs.Knockgate, Interface: ifc.Index})
		if err != nil {
			return err
		}
		// What a killed Create leaves: pins in a staging directory, nobody
		// holding its lock.
		stale := filepath.Join(loader.PinRoot, "pinning kglg0 123")
		if err := os.MkdirAll(filepath.Join(stale, "ifaces/kglg0"), 0o700); err != nil {
			return err
		}
		if err := l.Pin(filepath.Join(stale, "ifaces/kglg0/xdp-native")); err != nil {
			return err
		}
		l.Close()
		objs.Close()
		if xdpProg(t, "kglg0") == 0 {
			t.Fatal("the stale link is not attached")
		}
		// Any change to the gates sweeps it.
		g, err := loader.Create(loader.Options{Interfaces: []string{"kglg1"}, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("staging directory left: %v", err)
		}
		if id := xdpProg(t, "kglg0"); id != 0 {
			t.Errorf("XDP program %d left on kglg0", id)
		}
		// Now kglg0 can have a gate of its own.
		g, err = loader.Create(loader.Options{Interfaces: []string{"kglg0"}, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		return loader.Detach("kglg0")
	})
}

// A gate of the first layout (link beside the maps) is shown as such and
// can be detached.
func TestOldLayout(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "h")
	h.veth("kglh0")
	h.do("", func() error {
		objs, err := loader.Load(128)
		if err != nil {
			return err
		}
		defer objs.Close()
		ifc, _ := net.InterfaceByName("kglh0")
		l, err := link.AttachXDP(link.XDPOptions{Program: objs.Knockgate, Interface: ifc.Index})
		if err != nil {
			return err
		}
		dir := loader.GateDir("kglh0")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := l.Pin(filepath.Join(dir, "link")); err != nil {
			return err
		}
		l.Close()
		if err := maps.FromObjects(&objs.KnockgateMaps).Pin(dir); err != nil {
			return err
		}
		objs.Close()
		if _, err := loader.Open("kglh0"); !errors.Is(err, loader.ErrOldLayout) || !strings.Contains(err.Error(), "detach") {
			t.Errorf("open: %v, want ErrOldLayout saying how to move on", err)
		}
		if name, err := loader.Resolve("kglh0"); err != nil || name != "kglh0" {
			t.Errorf("resolve: %q, %v", name, err)
		}
		if err := loader.Detach("kglh0"); err != nil {
			return err
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pins left: %v", err)
		}
		if id := xdpProg(t, "kglh0"); id != 0 {
			t.Errorf("XDP program %d left on kglh0", id)
		}
		return nil
	})
}
