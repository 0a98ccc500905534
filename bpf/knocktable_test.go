package bpf_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

// keyedGate is a gate whose knock table is keyed the way a real gate's is
// (a random slot key).
func keyedGate(t *testing.T) *gate {
	t.Helper()
	cfg := defaultConfig()
	var err error
	if cfg.SlotKey, err = maps.NewSlotKey(); err != nil {
		t.Fatal(err)
	}
	return newGate(t, cfg)
}

func (g *gate) slotOf(addr netip.Addr) uint32 {
	return maps.KnockSlot(g.cfg.SlotKey, g.objs.Knocks.MaxEntries(), addr)
}

// collider finds a source of family f other than addr whose progress
// lives in addr's slot.
func (g *gate) collider(f family, addr netip.Addr) netip.Addr {
	g.t.Helper()
	want := g.slotOf(addr)
	for i := 1; i < 1<<20; i++ {
		if c := f.source(i); c != addr && g.slotOf(c) == want {
			return c
		}
	}
	g.t.Fatal("no colliding source found")
	return netip.Addr{}
}

// slot reads a slot of the knock table.
func (g *gate) slot(idx uint32) bpf.KnockgateKnockSlot {
	g.t.Helper()
	slots, err := g.maps.KnockSlots()
	if err != nil {
		g.t.Fatal(err)
	}
	return slots[idx]
}

// The program puts a source where maps.KnockSlot says, under the gate's key.
func TestKnockSlotMirrorsProgram(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		if g.cfg.SlotKey == [2]uint64{} {
			t.Fatal("no slot key")
		}
		for i := range 200 {
			src := f.source(1000 + i)
			g.run(f.knock(src, seq[0]))
			if k := g.slot(g.slotOf(src)); maps.AddrOf(k.Addr) != src || k.Stage != 1 {
				t.Fatalf("slot %d after %s's first knock: %s stage %d", g.slotOf(src), src, maps.AddrOf(k.Addr), k.Stage)
			}
		}
		// Another key puts sources elsewhere: the key is what places them.
		other := g.cfg
		other.SlotKey[0]++
		moved := 0
		for i := range 200 {
			if maps.KnockSlot(other.SlotKey, g.objs.Knocks.MaxEntries(), f.source(i)) != g.slotOf(f.source(i)) {
				moved++
			}
		}
		if moved < 190 {
			t.Errorf("another key moved %d of 200 sources, want nearly all", moved)
		}
	})
}

// A first knock from a source that hashes to an occupied slot takes it: the
// earlier source loses its progress (it knocks again), nothing else does.
func TestCollidingFirstKnockTakesSlot(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		a := f.src
		b := g.collider(f, a)
		g.expect("a: step 1", f.knock(a, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("a: step 2", f.knock(a, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		// b's packets that are no first step leave a's progress alone.
		g.expect("b: SYN to 22", f.knock(b, ssh), xdpDrop, "dropped_protected")
		g.expect("b: step 2", f.knock(b, seq[1]), xdpDrop, "dropped_knock")
		g.expect("b: UDP to 5353", f.knock(b, mdns), xdpDrop, "dropped_protected")
		if p, ok := g.progress(a); !ok || p.Stage != 2 {
			t.Fatalf("a's progress after b's other packets: %+v %v, want stage 2", p, ok)
		}
		// b's first step takes the slot.
		g.expect("b: step 1", f.knock(b, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.noProgress("after b's first step", a)
		if p, ok := g.progress(b); !ok || p.Stage != 1 {
			t.Fatalf("b's progress: %+v %v, want stage 1", p, ok)
		}
		// a's last step now starts nothing, and changes nothing of b's.
		g.expect("a: step 3 without progress", f.knock(a, seq[2]), xdpDrop, "dropped_knock")
		g.noGrant("a after losing its slot", a)
		g.expect("b: step 2", f.knock(b, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("b: step 3", f.knock(b, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.expect("b: SYN to 22", f.knock(b, ssh), xdpPass, "passed_granted")
		g.expect("a: SYN to 22", f.knock(a, ssh), xdpDrop, "dropped_protected")
		// Completing the sequence frees the slot; a knocks again and gets in.
		if k := g.slot(g.slotOf(a)); k.Addr != [16]byte{} {
			t.Errorf("slot after b's sequence: %s, want free", maps.AddrOf(k.Addr))
		}
		g.knockSteps(f, a, len(seq))
		g.expect("a: SYN to 22 after knocking again", f.knock(a, ssh), xdpPass, "passed_granted")
		g.expectEvents("collisions") // knockSteps drained its own; the rest:
	})
}

// A reset or stale progress frees the slot: the source is a stranger again.
func TestFreedSlots(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		g.knockSteps(f, f.src, 1)
		g.expect("reset", f.knock(f.src, unrelated), xdpPass, "knock_reset", "passed")
		if k := g.slot(g.slotOf(f.src)); k.Addr != [16]byte{} || k.Stage != 0 {
			t.Errorf("slot after a reset: %+v, want free", k)
		}
		g.knockSteps(f, f.src, 1)
		g.configure(defaultConfigKeyed(g.cfg.SlotKey)) // a new generation voids it
		g.expect("step 2 after set", f.knock(f.src, seq[1]), xdpDrop, "dropped_knock")
		if k := g.slot(g.slotOf(f.src)); k.Addr != [16]byte{} {
			t.Errorf("slot after void progress was seen: %s, want free", maps.AddrOf(k.Addr))
		}
		g.events()
	})
}

func defaultConfigKeyed(key [2]uint64) maps.Config {
	c := defaultConfig()
	c.SlotKey = key
	return c
}

// A write of the configuration without a slot key keeps the gate's: another
// key would move every source to another slot.
func TestSlotKeyKept(t *testing.T) {
	netns.Require(t)
	g := keyedGate(t)
	key := g.cfg.SlotKey
	c := defaultConfig() // no key
	c.Open *= 2
	g.configure(c)
	got, err := g.maps.ReadConfig()
	if err != nil || got.SlotKey != key || got.Open != c.Open {
		t.Errorf("after a write without a key: key %x (%v), want %x", got.SlotKey, err, key)
	}
}

// Two CPUs at once on one slot: a source knocking its whole sequence over
// and over, and a colliding one sending first knocks. Whatever the
// interleaving, only the sequence's source is ever granted, the slot always
// holds one of the two (or nothing) in a state one of them could have made,
// and every completed sequence is one grant.
func TestCollidingSourcesConcurrently(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		a := f.src
		b := g.collider(f, a)
		steps := [][]byte{f.knock(a, seq[0]), f.knock(a, seq[1]), f.knock(a, seq[2])}
		first := f.knock(b, seq[0])
		const rounds = 3000
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range rounds {
				for _, s := range steps {
					g.objs.Knockgate.Run(runOpts(s))
				}
				// Back to no grant, so the next round's sequence counts.
				g.maps.Revoke(a)
			}
		}()
		go func() {
			defer wg.Done()
			for range 3 * rounds {
				g.objs.Knockgate.Run(runOpts(first))
			}
		}()
		wg.Wait()
		g.noGrant("b, which never completed a sequence", b)
		k := g.slot(g.slotOf(a))
		switch holder := maps.AddrOf(k.Addr); {
		case k.Addr == [16]byte{}:
		case holder == b && k.Stage == 1:
		case holder == a && (k.Stage == 1 || k.Stage == 2):
		default:
			t.Errorf("slot holds %s at stage %d: no interleaving makes that", holder, k.Stage)
		}
		c := g.counters()
		if c.Get("granted") == 0 || c.Get("granted") > rounds {
			t.Errorf("%d grants over %d rounds", c.Get("granted"), rounds)
		}
		if c.Get("grant_failed") != 0 {
			t.Errorf("%d grants failed", c.Get("grant_failed"))
		}
		g.events()
	})
}

func runOpts(frame []byte) *ebpf.RunOptions { return &ebpf.RunOptions{Data: frame} }

// tag is the byte knock_tags holds for slot idx.
func (g *gate) tag(idx uint32) uint8 {
	g.t.Helper()
	v := make([]byte, g.objs.KnockTags.ValueSize())
	if err := g.objs.KnockTags.Lookup(uint32(0), &v); err != nil {
		g.t.Fatal(err)
	}
	return v[idx]
}

// The tag byte of a slot says who may hold it: the holder's tag while it
// does, 0 once the slot is free; Go's writes keep it so.
func TestKnockTagsFollowSlots(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		idx, want := maps.KnockPlace(g.cfg.SlotKey, g.objs.Knocks.MaxEntries(), f.src)
		check := func(what string, tag uint8) {
			t.Helper()
			if got := g.tag(idx); got != tag {
				t.Errorf("%s: tag %d, want %d", what, got, tag)
			}
		}
		check("fresh", 0)
		g.knockSteps(f, f.src, 1)
		check("knocking", want)
		g.expect("reset", f.knock(f.src, unrelated), xdpPass, "knock_reset", "passed")
		check("after a reset", 0)
		g.knockSteps(f, f.src, len(seq))
		check("sequence completed", 0)
		if err := g.maps.PutKnock(f.src, bpf.KnockgateKnockSlot{DeadlineNs: maps.BootAfter(time.Minute), Generation: g.cfg.Generation, Stage: 1}); err != nil {
			t.Fatal(err)
		}
		check("progress written from Go", want)
		g.expect("step 2 after Go's write", f.knock(f.src, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		if _, err := g.maps.Revoke(f.src); err != nil {
			t.Fatal(err)
		}
		check("revoked", 0)
		g.noProgress("revoked", f.src)
		g.events()
	})
}
