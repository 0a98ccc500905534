package bpf_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

// Each configuration has its own allow list (its allow epoch), and the
// program reads only the one of the configuration it runs: across a
// safe-mode change — pending, rolled back by the program itself with no
// process, confirmed — and a clock refresh, a prefix passes exactly when
// the configuration in force lists it, and reads back as such.
func TestAllowListFollowsTheConfiguration(t *testing.T) {
	netns.Require(t)
	f := families[0]
	kept, added, dropped := netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("192.0.2.128/25")
	from := func(p netip.Prefix) netip.Addr { return p.Addr().Next() }
	before := defaultConfig()
	before.Allow = []netip.Prefix{kept, dropped}
	change := defaultConfig()
	change.Allow = []netip.Prefix{kept, added}
	change.ConfirmBy = maps.BootAfter(time.Minute)

	g := newGate(t, before)
	// passes says how the gate treats a SYN to ssh from each prefix.
	passes := func(what string, want map[netip.Prefix]bool) {
		t.Helper()
		for p, ok := range want {
			if ok {
				g.expect(what+": "+p.String(), f.tcp(from(p), ssh.Num, 0x02), xdpPass, "passed_allowed")
			} else {
				g.expect(what+": "+p.String(), f.tcp(from(p), ssh.Num, 0x02), xdpDrop, "dropped_protected")
			}
		}
	}
	reads := func(what string, want ...netip.Prefix) {
		t.Helper()
		cfg, err := g.maps.ReadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.Policy.Allow, want) {
			t.Errorf("%s: the allow list reads %v, want %v", what, cfg.Policy.Allow, want)
		}
	}
	passes("before", map[netip.Prefix]bool{kept: true, dropped: true, added: false})

	// Pending: the change's list, not the one before.
	g.configure(change)
	passes("pending", map[netip.Prefix]bool{kept: true, dropped: false, added: true})
	reads("pending", added, kept)

	// Lapsed with nobody to settle it: the program is back on the list
	// before, alone.
	g.backdateConfirm()
	passes("lapsed", map[netip.Prefix]bool{kept: true, dropped: true, added: false})
	reads("lapsed", dropped, kept)

	// A clock refresh copies the configuration in force, its list with it.
	g.configure(before)
	refreshClock(t, g)
	passes("refreshed", map[netip.Prefix]bool{kept: true, dropped: true, added: false})
	reads("refreshed", dropped, kept)

	// Confirmed: the change's list for good; a later write starts from it.
	change.ConfirmBy = maps.BootAfter(time.Minute)
	g.configure(change)
	if _, err := g.maps.ConfirmConfig(); err != nil {
		t.Fatal(err)
	}
	passes("confirmed", map[netip.Prefix]bool{kept: true, dropped: false, added: true})
	reads("confirmed", added, kept)
	next, err := g.maps.WritableConfig()
	if err != nil {
		t.Fatal(err)
	}
	next.Policy.Services[0].Open = time.Hour
	if _, err := g.maps.WriteConfig(next); err != nil {
		t.Fatal(err)
	}
	passes("the write after", map[netip.Prefix]bool{kept: true, dropped: false, added: true})
	reads("the write after", added, kept)

	// Nothing of the epochs no configuration uses is left in the trie.
	var k bpf.KnockgateAllowKey
	var v uint8
	n := 0
	for it := g.objs.Allow.Iterate(); it.Next(&k, &v); n++ {
	}
	if n != 2 {
		t.Errorf("the allow trie holds %d entries, want the 2 of the configuration in force", n)
	}
}

// refreshClock makes the gate's recorded TAI offset stale, then refreshes
// it (maps.Set.RefreshClock), as run does when the kernel's offset moves.
func refreshClock(t *testing.T, g *gate) {
	t.Helper()
	g.staleTAIOffset()
	if changed, err := g.maps.RefreshClock(); err != nil || !changed {
		t.Fatalf("RefreshClock: %v, %v; want a change", changed, err)
	}
}

// staleTAIOffset records in the live configuration a TAI offset an hour
// off the kernel's, as if the kernel's had moved since it was written.
func (g *gate) staleTAIOffset() {
	g.t.Helper()
	var live uint32
	if err := g.objs.ConfigSlot.Lookup(uint32(0), &live); err != nil {
		g.t.Fatal(err)
	}
	var raw bpf.KnockgateConfig
	if err := g.objs.Configs.Lookup(live, &raw); err != nil {
		g.t.Fatal(err)
	}
	raw.TaiOffsetNs += int64(time.Hour)
	if err := g.objs.Configs.Update(live, &raw, ebpf.UpdateExist); err != nil {
		g.t.Fatal(err)
	}
}
