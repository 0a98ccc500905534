package maps

import (
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
func TestReplayCAS(t *testing.T) {
	s := replaySet(t)
	if err := s.SPALast.Update(uint32(3), uint64(10), ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	prog, err := newReplayCAS(s.SPALast)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	if swapped, seen, found, err := replayCAS(prog, 3, 9, 20); err != nil || swapped || seen != 10 || !found {
		t.Errorf("swap expecting 9 over 10: swapped %v, seen %d, found %v, %v", swapped, seen, found, err)
	}
	if got := s.replayOf(t, 3); got != 10 {
		t.Errorf("state %d after a failed swap, want 10", got)
	}
	if swapped, seen, found, err := replayCAS(prog, 3, 10, 20); err != nil || !swapped || seen != 10 || !found {
		t.Errorf("swap expecting 10 over 10: swapped %v, seen %d, found %v, %v", swapped, seen, found, err)
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
