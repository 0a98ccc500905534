package loader_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/loader/legacy"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// What the gate of the previous release holds in TestUpgradeFromPreviousRelease.
var (
	prevSlotKey = [2]uint64{0x0123456789abcdef, 0xfedcba9876543210}
	granted4    = netip.MustParseAddr("192.0.2.10")
	granted6    = netip.MustParseAddr("2001:db8::b")
	lapsed      = netip.MustParseAddr("198.51.100.3") // expired, not yet reported
	dead        = netip.MustParseAddr("198.51.100.4") // expired and reported
	knocking    = netip.MustParseAddr("203.0.113.5")  // one step into the sequence
	stranger    = netip.MustParseAddr("203.0.113.99")
	allowed     = netip.MustParseAddr("192.0.2.77") // in the allow list, not granted
	prevAllow   = []netip.Prefix{netip.MustParsePrefix("192.0.2.64/26"), netip.MustParsePrefix("2001:db8:a::/48")}
	gateAddr    = netip.MustParseAddr("192.0.2.1")
)

// prevSteps is the previous release's layout of a knock step.
func prevSteps(ports ...uint16) (steps [8]legacy.KnockgateStep, n uint8) {
	for i, p := range ports {
		steps[i] = legacy.KnockgateStep{Port: p, Proto: uint8(policy.TCP)}
	}
	return steps, uint8(len(ports))
}

// protectBits is the previous release's bitmap of ports.
func protectBits(ports ...uint16) (bits [1024]uint64) {
	for _, p := range ports {
		bits[p>>6] |= 1 << (p & 63)
	}
	return bits
}

// prevGate makes, as the previous release did, a gate called name on
// ifaces (XDP native and tcx egress on each; waiting, one more interface
// directory without links), holding a pending safe-mode change, an allow
// list, grants, SPA keys, knock progress, a flow and counters; it returns
// the counters it wrote, per-CPU, by the previous release's index.
func prevGate(t *testing.T, name string, ifaces []string, waiting string) (counters [][]uint64) {
	t.Helper()
	const maxSources = 128
	knockSlots, flowSlots := loader.KnockSlots(maxSources), loader.FlowSlots(1024)
	spec, err := legacy.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[legacy.KnockgateMapKnocks].MaxEntries = knockSlots
	spec.Maps[legacy.KnockgateMapKnockTags].ValueSize = knockSlots
	spec.Maps[legacy.KnockgateMapGrants].MaxEntries = maxSources
	spec.Maps[legacy.KnockgateMapFlows].MaxEntries = flowSlots
	spec.Maps[legacy.KnockgateMapFlowTags].ValueSize = flowSlots
	for v, n := range map[string]uint32{"knock_sets": knockSlots / maps.KnockWays, "knock_slots": knockSlots,
		"flow_sets": flowSlots / maps.FlowWays, "flow_slots": flowSlots} {
		if err := spec.Variables[v].Set(n); err != nil {
			t.Fatal(err)
		}
	}
	var objs legacy.KnockgateObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	m := &objs.KnockgateMaps
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	now := maps.BootNow()

	// Slot 0: the configuration before; slot 1, live: a safe-mode change
	// awaiting confirmation, which consults the allow list.
	steps, n := prevSteps(9000, 8000)
	before := legacy.KnockgateConfig{SlotKey: prevSlotKey, StepTimeoutNs: uint64(time.Minute), OpenNs: uint64(30 * time.Minute),
		FlowIdleTcpNs: uint64(24 * time.Hour), FlowIdleUdpNs: uint64(3 * time.Minute), TaiOffsetNs: int64(37 * time.Second),
		SpaWindowMs: 30000, ProtectedTcp: protectBits(22), Generation: 1, Steps: steps, Nsteps: n, SpaPort: 62201,
		Flags: uint8(legacy.KnockgateConfigFlagCONFIG_FLOWS)}
	change := before
	change.OpenNs = uint64(10 * time.Minute)
	change.ProtectedTcp = protectBits(22, 2222)
	change.ProtectedUdp = protectBits(53)
	change.Generation = 2
	change.AllowCount = uint32(len(prevAllow))
	change.ConfirmByNs = now + uint64(time.Hour)
	must(m.Configs.Update(uint32(0), &before, ebpf.UpdateAny))
	must(m.Configs.Update(uint32(1), &change, ebpf.UpdateAny))
	must(m.ConfigSlot.Update(uint32(0), uint32(1), ebpf.UpdateAny))
	for _, p := range prevAllow {
		bits, addr := p.Bits(), p.Addr()
		if addr.Is4() {
			bits += 96
		}
		must(m.Allow.Update(legacy.KnockgateAllowKey{Prefixlen: uint32(bits), Addr: addr.As16()}, uint8(1), ebpf.UpdateAny))
	}

	var hints legacy.KnockgateHintCounts
	for addr, g := range map[netip.Addr]legacy.KnockgateGrant{
		granted4: {ExpiresNs: now + uint64(10*time.Minute)},
		granted6: {ExpiresNs: now + uint64(5*time.Minute)},
		lapsed:   {ExpiresNs: now - uint64(time.Second)},
		dead:     {ExpiresNs: now - uint64(time.Minute), ExpiryReported: 1},
	} {
		must(m.Grants.Update(legacy.KnockgateSource{Addr: addr.Unmap().As16()}, &g, ebpf.UpdateAny))
		hints.Slot[previousHintSlot(addr)]++
	}
	must(m.Hints.Update(uint32(0), &hints, ebpf.UpdateAny))

	key7 := legacy.KnockgateSpaKey{K: [2]uint64{7, 77}, OpenNs: uint64(2 * time.Hour), Flags: uint32(legacy.KnockgateSpaKeyFlagSPA_KEY_ANY_ADDRESS)}
	copy(key7.Name[:], "laptop")
	key9 := legacy.KnockgateSpaKey{K: [2]uint64{9, 99}}
	copy(key9.Name[:], "phone")
	must(m.SpaLast.Update(uint32(7), uint64(1_700_000_000_000), ebpf.UpdateAny))
	must(m.SpaLast.Update(uint32(9), uint64(0), ebpf.UpdateAny))
	must(m.SpaKeys.Update(uint32(7), &key7, ebpf.UpdateAny))
	must(m.SpaKeys.Update(uint32(9), &key9, ebpf.UpdateAny))

	// knocking is one step into the sequence, under the live generation.
	set, tag := maps.KnockPlace(prevSlotKey, knockSlots, knocking)
	must(m.Knocks.Update(set*maps.KnockWays, &legacy.KnockgateKnockSlot{Generation: 2, Stage: 1,
		DeadlineNs: now + uint64(time.Minute), Addr: knocking.Unmap().As16()}, ebpf.UpdateAny))
	tags := make([]byte, knockSlots)
	tags[set*maps.KnockWays] = tag
	must(m.KnockTags.Update(uint32(0), tags, ebpf.UpdateAny))

	// A session of granted4's to port 22, answered.
	fk := maps.FlowKey(netip.AddrPortFrom(gateAddr, 22), netip.AddrPortFrom(granted4, 40000), policy.TCP)
	base, ftag := maps.FlowPlace(prevSlotKey, flowSlots, fk)
	must(m.Flows.Update(base, &legacy.KnockgateFlow{Flags: uint64(legacy.KnockgateFlowFlagFLOW_ANSWERED), LastNs: now,
		Key: legacy.KnockgateFlowKey{Local: fk.Local, Remote: fk.Remote, LocalPort: fk.LocalPort, RemotePort: fk.RemotePort, Proto: fk.Proto}},
		ebpf.UpdateAny))
	ftags := make([]byte, flowSlots)
	ftags[base] = ftag
	must(m.FlowTags.Update(uint32(0), ftags, ebpf.UpdateAny))

	ncpu, err := ebpf.PossibleCPU()
	must(err)
	for i := range int(legacy.KnockgateCounterCOUNTER_MAX) {
		v := make([]uint64, ncpu)
		v[0], v[ncpu-1] = uint64(100+i), uint64(1000*(i+1))
		counters = append(counters, v)
		must(m.Counters.Update(uint32(i), v, ebpf.UpdateAny))
	}
	dropped := make([]uint64, ncpu)
	dropped[0] = 4242
	must(m.Verdicts.Update(uint32(5*maps.Verdicts+int(legacy.KnockgateVerdictVERDICT_DROPPED_PROTECTED)), dropped, ebpf.UpdateAny))

	// Pinned as that release pinned: its programs and maps in the gate's
	// directory, each interface's links in its own.
	dir := loader.GateDir(name)
	must(os.MkdirAll(dir, 0o700))
	must(objs.Knockgate.Pin(filepath.Join(dir, "prog")))
	must(objs.Egress.Pin(filepath.Join(dir, "egress")))
	for mname := range spec.Maps {
		if strings.HasPrefix(mname, ".") {
			continue
		}
		var mp *ebpf.Map
		switch mname {
		case legacy.KnockgateMapAllow:
			mp = m.Allow
		case legacy.KnockgateMapConfigSlot:
			mp = m.ConfigSlot
		case legacy.KnockgateMapConfigs:
			mp = m.Configs
		case legacy.KnockgateMapCounters:
			mp = m.Counters
		case legacy.KnockgateMapEventBudget:
			mp = m.EventBudget
		case legacy.KnockgateMapEvents:
			mp = m.Events
		case legacy.KnockgateMapFlowTags:
			mp = m.FlowTags
		case legacy.KnockgateMapFlows:
			mp = m.Flows
		case legacy.KnockgateMapGrants:
			mp = m.Grants
		case legacy.KnockgateMapHints:
			mp = m.Hints
		case legacy.KnockgateMapKnockTags:
			mp = m.KnockTags
		case legacy.KnockgateMapKnocks:
			mp = m.Knocks
		case legacy.KnockgateMapSpaKeys:
			mp = m.SpaKeys
		case legacy.KnockgateMapSpaLast:
			mp = m.SpaLast
		case legacy.KnockgateMapVerdicts:
			mp = m.Verdicts
		default:
			t.Fatalf("the previous release's map %s: unknown to this test", mname)
		}
		must(mp.Pin(filepath.Join(dir, mname)))
	}
	for _, ifname := range ifaces {
		ifc, err := net.InterfaceByName(ifname)
		must(err)
		ifdir := filepath.Join(dir, "ifaces", ifname)
		must(os.MkdirAll(ifdir, 0o700))
		x, err := link.AttachXDP(link.XDPOptions{Program: objs.Knockgate, Interface: ifc.Index, Flags: link.XDPDriverMode})
		must(err)
		must(x.Pin(filepath.Join(ifdir, "xdp-native")))
		x.Close()
		e, err := link.AttachTCX(link.TCXOptions{Program: objs.Egress, Interface: ifc.Index, Attach: ebpf.AttachTCXEgress})
		must(err)
		must(e.Pin(filepath.Join(ifdir, "tcx-egress")))
		e.Close()
	}
	must(os.MkdirAll(filepath.Join(dir, "ifaces", waiting), 0o700))
	return counters
}

// progID is p's id.
func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// linkProg is the id of the program the link pinned at pin runs.
func linkProg(t *testing.T, pin string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Program
}

// A gate the previous release pinned is refused by Open with what to do,
// and Adopt upgrades it in place: every piece of its state arrives, its
// grants as the service default's, and every link runs this build's
// programs.
func TestUpgradeFromPreviousRelease(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "u")
	h.veth("kglu0")
	h.veth("kglu1")
	h.do("kglu", func() error {
		counters := prevGate(t, "kglu", []string{"kglu0", "kglu1"}, "kglu2")
		oldProg := xdpProg(t, "kglu0")
		dir := loader.GateDir("kglu")

		_, err := loader.Open("kglu")
		if !errors.Is(err, loader.ErrPreviousRelease) || !strings.Contains(err.Error(), `"knockgate attach --gate kglu kglu0 kglu1 kglu2"`) {
			t.Fatalf("open: %v; want ErrPreviousRelease saying to run attach", err)
		}
		g, upgraded, err := loader.Adopt("kglu")
		if err != nil {
			return err
		}
		defer g.Close()
		if upgraded != loader.UpgradedRelease {
			t.Error("Adopt did not report the upgrade")
		}

		// The programs: every link runs the new ones, which are pinned.
		for _, ifc := range []string{"kglu0", "kglu1"} {
			if got := xdpProg(t, ifc); got != uint32(progID(t, g.Prog)) || got == oldProg {
				t.Errorf("XDP program on %s: %d, want the new %d (the old was %d)", ifc, got, progID(t, g.Prog), oldProg)
			}
			if got := linkProg(t, filepath.Join(dir, "ifaces", ifc, "tcx-egress")); got != progID(t, g.Egress) {
				t.Errorf("egress link of %s runs %d, want the new %d", ifc, got, progID(t, g.Egress))
			}
		}
		ifaces, err := g.Interfaces()
		if err != nil {
			return err
		}
		if len(ifaces) != 3 || ifaces[0].State != loader.Attached || ifaces[1].State != loader.Attached || ifaces[2].State != loader.Waiting {
			t.Errorf("interfaces %+v, want kglu0 and kglu1 attached, kglu2 waiting", ifaces)
		}
		entries, _ := os.ReadDir(loader.PinRoot)
		for _, e := range entries {
			if strings.Contains(e.Name(), "kglu") && e.Name() != "kglu" {
				t.Errorf("%s left in %s", e.Name(), loader.PinRoot)
			}
		}

		// The configuration, of both slots, and the safe mode.
		cfg, err := g.Config()
		if err != nil {
			return err
		}
		d := cfg.Policy.Default()
		wantProtect := []policy.Port{{Num: 22, Proto: policy.TCP}, {Num: 2222, Proto: policy.TCP}, {Num: 53, Proto: policy.UDP}}
		if cfg.Generation != 2 || cfg.SlotKey != prevSlotKey || cfg.TAIOffset != 37*time.Second || len(cfg.Policy.Services) != 1 ||
			d.Open != 10*time.Minute || d.StepTimeout != time.Minute || !slices.Equal(d.Protect, wantProtect) ||
			!slices.Equal(d.Sequence, []policy.Port{{Num: 9000, Proto: policy.TCP}, {Num: 8000, Proto: policy.TCP}}) ||
			!slices.Equal(cfg.Policy.Allow, prevAllow) || !cfg.Policy.Flows || cfg.Policy.FlowIdleTCP != 24*time.Hour ||
			cfg.Policy.SPAPort != 62201 || cfg.Policy.SPAWindow != 30*time.Second {
			t.Errorf("configuration after the upgrade: %+v, default %+v", cfg, d)
		}
		sm, err := g.SafeMode()
		if err != nil {
			return err
		}
		prev := sm.Previous.Policy.Default()
		if !sm.Pending || sm.Deadline != cfg.ConfirmBy || sm.Previous.Generation != 1 || len(sm.Previous.Policy.Allow) != 0 ||
			prev.Open != 30*time.Minute || !slices.Equal(prev.Protect, wantProtect[:1]) {
			t.Errorf("safe mode after the upgrade: %+v; want the change pending, falling back to generation 1", sm)
		}

		// Grants: default's, with their expiry; the dead one left behind.
		for _, addr := range []netip.Addr{granted4, granted6, lapsed} {
			gr, ok, err := g.LookupGrant(addr, policy.DefaultService)
			if err != nil || !ok || gr.ExpiryReported != 0 {
				t.Errorf("grant of %s: %+v, %v, %v; want default's, unreported", addr, gr, ok, err)
			}
			if hinted, err := g.Maps.Hinted(maps.GrantKey(addr, 0)); err != nil || !hinted {
				t.Errorf("hint bits of %s: %v, %v; want set", addr, hinted, err)
			}
		}
		if _, ok, _ := g.LookupGrant(dead, policy.DefaultService); ok {
			t.Errorf("the grant of %s, expired and reported, was carried over", dead)
		}
		srcs, err := g.Sources()
		if err != nil {
			return err
		}
		var open, knock []string
		for _, s := range srcs {
			if s.Service != policy.DefaultService {
				t.Errorf("source %+v: not default's", s)
			}
			if s.State == "open" {
				open = append(open, s.Addr.String())
			} else {
				knock = append(knock, fmt.Sprintf("%s stage %d", s.Addr, s.Stage))
			}
		}
		slices.Sort(open)
		if !slices.Equal(open, []string{"192.0.2.10", "2001:db8::b"}) || !slices.Equal(knock, []string{"203.0.113.5 stage 1"}) {
			t.Errorf("sources: open %v, knocking %v", open, knock)
		}

		// The keys open default, with their replay state.
		keys, err := g.SPAKeys()
		if err != nil {
			return err
		}
		if len(keys) != 2 || keys[0].ID != 7 || keys[0].Name != "laptop" || !keys[0].AnyAddress || keys[0].Open != 2*time.Hour ||
			keys[0].Services != nil || !keys[0].LastAccepted.Equal(time.UnixMilli(1_700_000_000_000)) ||
			keys[1].ID != 9 || keys[1].Name != "phone" || keys[1].Services != nil || !keys[1].LastAccepted.IsZero() {
			t.Errorf("SPA keys after the upgrade: %+v", keys)
		}

		// The flow, the counters by name, the verdicts.
		flows, err := g.Flows()
		if err != nil {
			return err
		}
		if len(flows) != 1 || flows[0].Remote != netip.AddrPortFrom(granted4, 40000) || !flows[0].Live || !flows[0].Answered {
			t.Errorf("flows after the upgrade: %+v", flows)
		}
		c, err := g.Counters()
		if err != nil {
			return err
		}
		sum := func(v []uint64) (n uint64) {
			for _, x := range v {
				n += x
			}
			return n
		}
		if got, want := c.Counter(bpf.KnockgateCounterCOUNTER_SPA_REPLAY), sum(counters[legacy.KnockgateCounterCOUNTER_SPA_REPLAY]); got != want {
			t.Errorf("spa_replay %d, want %d", got, want)
		}
		if got, want := c.Counter(bpf.KnockgateCounterCOUNTER_SPA_BAD_ADDRESS), sum(counters[legacy.KnockgateCounterCOUNTER_SPA_BAD_ADDRESS]); got != want {
			t.Errorf("spa_bad_address %d, want %d", got, want)
		}
		if got, want := c.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED), sum(counters[legacy.KnockgateCounterCOUNTER_KNOCK_ADVANCED]); got != want {
			t.Errorf("knock_advanced %d, want %d", got, want)
		}
		if got := c.Counter(bpf.KnockgateCounterCOUNTER_SPA_BAD_SERVICE); got != 0 {
			t.Errorf("spa_bad_service %d, want 0", got)
		}
		sc, err := g.ServiceCounters()
		if err != nil {
			return err
		}
		if got := sc[policy.DefaultService]; got.Granted != sum(counters[legacy.KnockgateCounterCOUNTER_GRANTED]) ||
			got.Expired != sum(counters[legacy.KnockgateCounterCOUNTER_GRANT_EXPIRED]) {
			t.Errorf("service counters of default %+v", got)
		}
		v, err := g.Verdicts()
		if err != nil {
			return err
		}
		if got := v[5][bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED]; got != 4242 {
			t.Errorf("verdict dropped_protected of slot 5: %d, want 4242", got)
		}

		// The program judges by all of it.
		// (A SYN to 22 from the knocking source would void its progress:
		// an ACK is no knock.)
		for _, c := range []struct {
			what  string
			src   netip.Addr
			port  uint16
			flags uint8 // 0: UDP
			want  uint32
		}{
			{"granted", granted4, 22, packet.SYN, 2},
			{"granted (IPv6)", granted6, 2222, packet.SYN, 2},
			{"allowed", allowed, 22, packet.SYN, 2},
			{"stranger", stranger, 22, packet.SYN, 1},
			{"stranger, UDP", stranger, 53, 0, 1},
			{"stranger, unprotected", stranger, 80, packet.SYN, 2},
			{"knocking, not yet open", knocking, 22, packet.ACK, 1},
			{"knocking, its second step", knocking, 8000, packet.SYN, 1},
			{"knocking, open now", knocking, 22, packet.SYN, 2},
		} {
			dst := gateAddr
			if c.src.Is6() {
				dst = netip.MustParseAddr("2001:db8::1")
			}
			f := packet.TCP(c.src, dst, 40001, c.port, c.flags)
			if c.flags == 0 {
				f = packet.UDP(c.src, dst, 40001, c.port)
			}
			got, err := g.Prog.Run(&ebpf.RunOptions{Data: f.Bytes()})
			if err != nil {
				return err
			}
			if got != c.want {
				t.Errorf("%s: XDP verdict %d, want %d", c.what, got, c.want)
			}
		}

		// Done once: Adopt again has nothing to do.
		g2, upgraded, err := loader.Adopt("kglu")
		if err != nil {
			return err
		}
		g2.Close()
		if upgraded != "" {
			t.Error("a second Adopt upgraded again")
		}
		return nil
	})
}

// A gate of another old layout (here: the previous release's with its
// configuration map of another size) is not taken for the previous
// release's: it is refused as before.
func TestUpgradeRefusesUnknownLayout(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "v")
	h.veth("kglv0")
	h.do("kglv", func() error {
		prevGate(t, "kglv", []string{"kglv0"}, "kglv1")
		pin := filepath.Join(loader.GateDir("kglv"), "configs")
		if err := os.Remove(pin); err != nil {
			return err
		}
		other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 64, MaxEntries: 2})
		if err != nil {
			return err
		}
		defer other.Close()
		if err := other.Pin(pin); err != nil {
			return err
		}
		for what, open := range map[string]func() error{
			"open":  func() error { _, err := loader.Open("kglv"); return err },
			"adopt": func() error { _, _, err := loader.Adopt("kglv"); return err },
		} {
			err := open()
			if !errors.Is(err, loader.ErrIncompatible) || errors.Is(err, loader.ErrPreviousRelease) || !strings.Contains(err.Error(), "detach and attach again") {
				t.Errorf("%s: %v; want ErrIncompatible saying to detach and attach again", what, err)
			}
		}
		if _, err := os.Stat(filepath.Join(loader.GateDir("kglv"), "service_counters")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the gate was changed: %v", err)
		}
		return nil
	})
}

// previousHintSlot is the previous release's hint_slot: a multiplicative
// hash of the address's two halves, its top 16 bits.
func previousHintSlot(addr netip.Addr) uint32 {
	k := maps.Key(addr).Addr
	a := binary.NativeEndian.Uint64(k[:8])
	b := binary.NativeEndian.Uint64(k[8:])
	return uint32(((a ^ b) * 0x9e3779b97f4a7c15) >> (64 - 16))
}
