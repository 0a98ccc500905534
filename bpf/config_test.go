package bpf_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

// backdateConfirm moves the deadline of the safe-mode change in the live
// slot into the past, the way waiting it out would: behind the real clock
// and, on a gate with a clock of its own (TestClock, set: not 0), behind
// that one too.
func (g *gate) backdateConfirm() {
	g.t.Helper()
	var live uint32
	if err := g.objs.ConfigSlot.Lookup(uint32(0), &live); err != nil {
		g.t.Fatal(err)
	}
	var raw bpf.KnockgateConfig
	if err := g.objs.Configs.Lookup(live, &raw); err != nil {
		g.t.Fatal(err)
	}
	if raw.ConfirmByNs == 0 {
		g.t.Fatal("no safe-mode change to back-date")
	}
	raw.ConfirmByNs = maps.BootNow() - uint64(time.Second)
	if boot := g.boot(); boot != 0 {
		raw.ConfirmByNs = min(raw.ConfirmByNs, boot-1)
	}
	if err := g.objs.Configs.Update(live, &raw, ebpf.UpdateExist); err != nil {
		g.t.Fatal(err)
	}
}

func safeChange() conf {
	c := defaultConfig()
	c.Sequence = []maps.Port{tcp(7100), tcp(7200)}
	c.ConfirmBy = maps.BootAfter(time.Minute)
	return c
}

// A safe-mode change rules until its deadline; unconfirmed, the program
// goes back to the configuration before it by itself.
func TestSafeModeRollsBack(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		before := g.cfg
		g.configure(safeChange())
		sm, err := g.maps.ReadSafeMode()
		if err != nil || !sm.Pending || sm.Lapsed || sm.Previous.Generation != before.Generation {
			t.Fatalf("safe mode after the change: %+v, %v; want pending over generation %d", sm, err, before.Generation)
		}
		g.expect("new step 1 while pending", f.knock(f.src, tcp(7100)), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("old step 1 while pending", f.knock(f.other, seq[0]), xdpPass, "passed")
		if _, err := g.maps.WriteConfig(defaultConfig().config()); !errors.Is(err, maps.ErrAwaitingConfirm) {
			t.Errorf("write while a change awaits confirmation: %v, want ErrAwaitingConfirm", err)
		}

		g.backdateConfirm()
		// Nothing ran: the program itself uses the old configuration now,
		// and progress made under the change is void.
		g.expect("new step 2 after the deadline", f.knock(f.src, tcp(7200)), xdpPass, "passed")
		g.noGrant("after the deadline", f.src)
		g.expect("old step 1 after the deadline", f.knock(f.other, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		if cfg, err := g.maps.ReadConfig(); err != nil || cfg.Generation != before.Generation {
			t.Errorf("config in force after the deadline: generation %d (%v), want %d", cfg.Generation, err, before.Generation)
		}
		if sm, _ := g.maps.ReadSafeMode(); !sm.Lapsed {
			t.Errorf("safe mode after the deadline: %+v, want lapsed", sm)
		}
		if _, err := g.maps.ConfirmConfig(); !errors.Is(err, maps.ErrRolledBack) {
			t.Errorf("confirm after the deadline: %v, want ErrRolledBack", err)
		}
		// The rollback is final: the old configuration is the live slot's.
		if sm, _ := g.maps.ReadSafeMode(); sm.Pending || sm.Lapsed {
			t.Errorf("safe mode after the rollback: %+v, want none", sm)
		}
		g.expect("old step 2 after the rollback", f.knock(f.other, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		// A later change gets a generation no progress has seen.
		next, err := g.maps.WriteConfig(defaultConfig().config())
		if err != nil || next.Generation <= sm.Change.Generation {
			t.Errorf("change after the rollback: generation %d (%v), want above %d", next.Generation, err, sm.Change.Generation)
		}
	})
}

// Confirmed in time, a safe-mode change stays, and so does the knock
// progress made under it.
func TestSafeModeConfirmed(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		g.configure(safeChange())
		g.expect("new step 1 while pending", f.knock(f.src, tcp(7100)), xdpDrop, "dropped_knock", "knock_advanced")
		cfg, err := g.maps.ConfirmConfig()
		if err != nil || cfg.ConfirmBy != 0 || cfg.Generation != g.cfg.Generation {
			t.Fatalf("confirm: %+v, %v; want generation %d without a deadline", cfg, err, g.cfg.Generation)
		}
		if _, err := g.maps.ConfirmConfig(); !errors.Is(err, maps.ErrNothingToConfirm) {
			t.Errorf("second confirm: %v, want ErrNothingToConfirm", err)
		}
		g.expect("new step 2 after confirming", f.knock(f.src, tcp(7200)), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.expect("SYN to 22 after the sequence", f.knock(f.src, ssh), xdpPass, "passed_granted")
	})
}

// xdpMD is struct xdp_md, the context BPF_PROG_TEST_RUN takes for XDP.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Verdicts are counted in the slot of the interface the packet came in on.
func TestVerdictsPerInterface(t *testing.T) {
	netns.Require(t, "ip")
	a := netns.NewT(t, fmt.Sprintf("kgbpf-a-%d", os.Getpid()))
	b := netns.NewT(t, fmt.Sprintf("kgbpf-b-%d", os.Getpid()))
	if err := netns.Veth(a, "kgbpf0", b, "kgbpf1"); err != nil {
		t.Fatal(err)
	}
	f := families[0]
	g := newGate(t, defaultConfig())
	frame := f.knock(f.src, ssh)
	var ifindex int
	err := a.Do(func() error {
		ifc, err := net.InterfaceByName("kgbpf0")
		if err != nil {
			return err
		}
		ifindex = ifc.Index
		for range 3 {
			ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifc.Index)}
			v, err := g.objs.Knockgate.Run(&ebpf.RunOptions{Data: frame, Context: &ctx})
			if err != nil {
				return err
			}
			if v != xdpDrop {
				t.Errorf("SYN to 22 on %s: %s, want XDP_DROP", "kgbpf0", verdictName(v))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	g.run(frame) // no context: the loopback device of this namespace
	slots, err := g.maps.ReadVerdicts()
	if err != nil {
		t.Fatal(err)
	}
	drop := int(bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED)
	if got := slots[maps.IfaceSlot(ifindex)][drop]; got != 3 {
		t.Errorf("dropped_protected in the slot of kgbpf0 (ifindex %d): %d, want 3", ifindex, got)
	}
	if maps.IfaceSlot(ifindex) != maps.IfaceSlot(1) {
		if got := slots[maps.IfaceSlot(1)][drop]; got != 1 {
			t.Errorf("dropped_protected in the slot of lo: %d, want 1", got)
		}
	}
	if c := g.counters(); c.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED) != 4 {
		t.Errorf("dropped_protected over all interfaces: %d, want 4", c.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED))
	}
}
