package maps

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
)

// replaySet is a Set with only a replay-state map, made from the program's
// own definition of spa_last; the tests of the gate's program (bpf/) show
// the same against packets.
func replaySet(t *testing.T) *Set {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true: not skipped)")
		}
		t.Skip("needs root")
	}
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(spec.Maps[bpf.KnockgateMapSpaLast])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &Set{SPALast: m}
}

func (s *Set) replayOf(t *testing.T, id uint32) uint64 {
	t.Helper()
	var v uint64
	if err := s.SPALast.Lookup(id, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// A newer timestamp accepted between AdvanceReplay's read and its write
// (the hook does it, as the program would) is kept: the write is a
// compare-and-swap, which a plain update after a lookup was not.
func TestAdvanceReplayKeepsANewerValue(t *testing.T) {
	s := replaySet(t)
	const id = 7
	if err := s.SPALast.Update(uint32(id), uint64(1000), ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	calls := 0
	moved, err := s.advanceReplay(id, 2000, func() {
		if calls++; calls == 1 {
			if err := s.SPALast.Update(uint32(id), uint64(3000), ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err != nil || moved {
		t.Errorf("advance to 2000 over a racing 3000: moved %v, %v; want not moved", moved, err)
	}
	if got := s.replayOf(t, id); got != 3000 {
		t.Errorf("replay state %d after the race, want 3000 (the newer)", got)
	}
	if calls != 1 {
		t.Errorf("hook called %d times, want once (the second look sees 3000 and stops)", calls)
	}

	// Forward moves, backward does not; each swap sees what it expected.
	for _, c := range []struct {
		to    uint64
		moved bool
		want  uint64
	}{{5000, true, 5000}, {4000, false, 5000}, {5000, false, 5000}, {5001, true, 5001}} {
		moved, err := s.AdvanceReplay(id, c.to)
		if err != nil || moved != c.moved || s.replayOf(t, id) != c.want {
			t.Errorf("advance to %d: moved %v, %v, state %d; want moved %v, state %d", c.to, moved, err, s.replayOf(t, id), c.moved, c.want)
		}
	}
}

// A swap that finds another value than it expected reports it and changes
// nothing; a key the gate does not have is left alone, not made.
func TestRaiserSwap(t *testing.T) {
	s := replaySet(t)
	if err := s.SPALast.Update(uint32(3), uint64(10), ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	r, err := newRaiser(s.SPALast, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	key := binary.NativeEndian.AppendUint32(nil, 3)
	if seen, found, err := r.swap(key, 9, 20); err != nil || seen != 10 || !found {
		t.Errorf("swap expecting 9 over 10: seen %d, found %v, %v", seen, found, err)
	}
	if got := s.replayOf(t, 3); got != 10 {
		t.Errorf("state %d after a failed swap, want 10", got)
	}
	if seen, found, err := r.swap(key, 10, 20); err != nil || seen != 10 || !found {
		t.Errorf("swap expecting 10 over 10: seen %d, found %v, %v", seen, found, err)
	}
	if got := s.replayOf(t, 3); got != 20 {
		t.Errorf("state %d after a swap to 20", got)
	}
	if moved, err := s.AdvanceReplay(4, 99); err != nil || moved {
		t.Errorf("advance of a key not there: moved %v, %v", moved, err)
	}
	var v uint64
	if err := s.SPALast.Lookup(uint32(4), &v); err == nil {
		t.Errorf("advance made key 4 (%d)", v)
	}
}

// grantSet is a Set with the grants map and hint bitmap of the program's
// own definitions.
func grantSet(t *testing.T) *Set {
	t.Helper()
	s := replaySet(t)
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name string
		to   **ebpf.Map
	}{{bpf.KnockgateMapGrants, &s.Grants}, {bpf.KnockgateMapHintBits, &s.HintBits}} {
		spec.Maps[m.name].MaxEntries = max(spec.Maps[m.name].MaxEntries, 1)
		made, err := ebpf.NewMap(spec.Maps[m.name])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { made.Close() })
		*m.to = made
	}
	return s
}

// The fleet's grants never shorten one, and never undo a renewal the
// program makes between the read and the write: a grant is raised in
// place; one that is missing is made, its hint bits set.
func TestExtendGrant(t *testing.T) {
	s := grantSet(t)
	a := netip.MustParseAddr("192.0.2.9")
	lookup := func() bpf.KnockgateGrant {
		t.Helper()
		g, ok, err := s.LookupGrant(a, "default")
		if err != nil || !ok {
			t.Fatalf("grant of %s: %v, %v", a, ok, err)
		}
		return g
	}
	if changed, err := s.ExtendGrant(a, "default", 1000); err != nil || !changed {
		t.Fatalf("extend a missing grant: %v, %v", changed, err)
	}
	if hinted, err := s.Hinted(GrantKey(a, 0)); err != nil || !hinted {
		t.Errorf("hinted %v (%v) after the grant was made, want true", hinted, err)
	}
	if changed, err := s.ExtendGrant(a, "default", 500); err != nil || changed || lookup().ExpiresNs != 1000 {
		t.Errorf("extend to an earlier expiry: changed %v, %v, expiry %d; want 1000 kept", changed, err, lookup().ExpiresNs)
	}
	// An expired grant, reported: raised, it is to be reported again.
	if err := s.Grants.Update(GrantKey(a, 0), bpf.KnockgateGrant{ExpiresNs: 1000, ExpiryReported: 1}, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.ExtendGrant(a, "default", 2000); err != nil || !changed {
		t.Fatalf("extend to 2000: %v, %v", changed, err)
	}
	if g := lookup(); g.ExpiresNs != 2000 || g.ExpiryReported != 0 {
		t.Errorf("after the extension: %+v, want 2000 and not reported", g)
	}
	if hinted, _ := s.Hinted(GrantKey(a, 0)); !hinted {
		t.Error("not hinted after extensions")
	}
	// The program renews to 4000 between the read and the swap: 3000 does
	// not undo it.
	r, err := newRaiser(s.Grants, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	k := GrantKey(a, 0)
	key := append(k.Addr[:], k.Service, 0, 0, 0)
	renewed := false
	moved, found, err := r.raise(key, 3000, func() {
		if !renewed {
			renewed = true
			if err := s.Grants.Update(GrantKey(a, 0), bpf.KnockgateGrant{ExpiresNs: 4000}, ebpf.UpdateExist); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err != nil || moved || !found || lookup().ExpiresNs != 4000 {
		t.Errorf("raise to 3000 over a racing 4000: moved %v, found %v, %v, expiry %d; want 4000", moved, found, err, lookup().ExpiresNs)
	}
}

// A rebuild of the hint bits loses no grant made while it runs, whatever
// the moment: here the worst one, played out at putGrant's point between
// setting the grant's bits and making its entry. The rebuild clears the
// bits in the half it makes active, and its walk of the grants cannot find
// the entry, not made yet; the writer's second setting, after the entry,
// puts them back. (The program's put_grant keeps the same order.)
func TestHintRebuildBetweenBitsAndEntry(t *testing.T) {
	s := grantSet(t)
	a := netip.MustParseAddr("192.0.2.77")
	key := GrantKey(a, 0)
	rebuilds := 0
	pointHook = func() {
		if rebuilds > 0 {
			return
		}
		rebuilds++
		hinted, err := s.Hinted(key)
		if err != nil || !hinted {
			t.Errorf("bits not set before the entry is made: %v, %v", hinted, err)
		}
		if _, err := s.RebuildHints(); err != nil {
			t.Error(err)
		}
		if hinted, _ := s.Hinted(key); hinted {
			t.Error("the rebuild in between kept bits no grant holds: this test shows nothing")
		}
	}
	defer func() { pointHook = nil }()
	if err := s.Grant(a, "default", 1000); err != nil {
		t.Fatal(err)
	}
	pointHook = nil
	if rebuilds != 1 {
		t.Fatalf("%d rebuilds in putGrant, want 1", rebuilds)
	}
	if hinted, err := s.Hinted(key); err != nil || !hinted {
		t.Errorf("grant made across a rebuild: hinted %v (%v), want true", hinted, err)
	}
	if st, err := s.RebuildHints(); err != nil || st.Grants != 1 {
		t.Fatalf("rebuild: %+v, %v; want one grant", st, err)
	}
	if hinted, err := s.Hinted(key); err != nil || !hinted {
		t.Errorf("after the next rebuild: hinted %v (%v), want true", hinted, err)
	}
	// Gone, and rebuilt without it: its bits go.
	if had, err := s.deleteGrant(key); err != nil || !had {
		t.Fatalf("delete the grant: %v, %v", had, err)
	}
	if _, err := s.RebuildHints(); err != nil {
		t.Fatal(err)
	}
	if hinted, _ := s.Hinted(key); hinted {
		t.Error("bits of a revoked grant after a rebuild")
	}
}
