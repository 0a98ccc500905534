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

// setOf is the set of the knock table addr's progress lives in.
func (g *gate) setOf(addr netip.Addr) uint32 {
	set, _ := maps.KnockPlace(g.cfg.SlotKey, g.objs.Knocks.MaxEntries(), addr)
	return set
}

// colliders finds n sources of family f other than addr whose progress
// lives in addr's set.
func (g *gate) colliders(f family, addr netip.Addr, n int) []netip.Addr {
	g.t.Helper()
	want := g.setOf(addr)
	var out []netip.Addr
	for i := 1; i < 1<<22 && len(out) < n; i++ {
		if c := f.source(i); c != addr && g.setOf(c) == want {
			out = append(out, c)
		}
	}
	if len(out) < n {
		g.t.Fatal("not enough colliding sources found")
	}
	return out
}

// set reads the slots and tags of a set of the knock table.
func (g *gate) set(set uint32) ([maps.KnockWays]bpf.KnockgateKnockSlot, [maps.KnockWays]uint8) {
	g.t.Helper()
	slots, err := g.maps.KnockSlots()
	if err != nil {
		g.t.Fatal(err)
	}
	tags := make([]byte, g.objs.KnockTags.ValueSize())
	if err := g.objs.KnockTags.Lookup(uint32(0), &tags); err != nil {
		g.t.Fatal(err)
	}
	var s [maps.KnockWays]bpf.KnockgateKnockSlot
	var t [maps.KnockWays]uint8
	for w := range maps.KnockWays {
		s[w], t[w] = slots[set*maps.KnockWays+uint32(w)], tags[set*maps.KnockWays+uint32(w)]
	}
	return s, t
}

// holders lists who holds the slots of a set, with their tags checked: a
// held slot carries its holder's tag, a free one 0.
func (g *gate) holders(set uint32) map[netip.Addr]bpf.KnockgateKnockSlot {
	g.t.Helper()
	slots, tags := g.set(set)
	out := map[netip.Addr]bpf.KnockgateKnockSlot{}
	for w, k := range slots {
		if k.Addr == [16]byte{} {
			if tags[w] != 0 {
				g.t.Errorf("set %d way %d: free, but tagged %d", set, w, tags[w])
			}
			continue
		}
		a := maps.AddrOf(k.Addr)
		if _, want := maps.KnockPlace(g.cfg.SlotKey, g.objs.Knocks.MaxEntries(), a); tags[w] != want {
			g.t.Errorf("set %d way %d: %s tagged %d, want %d", set, w, a, tags[w], want)
		}
		out[a] = k
	}
	return out
}

// The program puts a source in the set maps.KnockPlace says, tagged as it
// says, under the gate's key.
func TestKnockPlaceMirrorsProgram(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		if g.cfg.SlotKey == [2]uint64{} {
			t.Fatal("no slot key")
		}
		for i := range 200 {
			src := f.source(1000 + i)
			g.run(f.knock(src, seq[0]))
			if k, ok := g.holders(g.setOf(src))[src]; !ok || k.Stage != 1 {
				t.Fatalf("set %d after %s's first knock: %v", g.setOf(src), src, g.holders(g.setOf(src)))
			}
		}
		// Another key puts sources elsewhere: the key is what places them.
		other := g.cfg.SlotKey
		other[0]++
		moved := 0
		for i := range 200 {
			if set, _ := maps.KnockPlace(other, g.objs.Knocks.MaxEntries(), f.source(i)); set != g.setOf(f.source(i)) {
				moved++
			}
		}
		if moved < 190 {
			t.Errorf("another key moved %d of 200 sources, want nearly all", moved)
		}
	})
}

// A set holds KG_KNOCK_WAYS sources' progress; a first knock into a full
// set takes the slot of the oldest progress (the earliest deadline): that
// source starts over, nobody else loses anything.
func TestFullSetTakesOldest(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		a := f.src
		others := g.colliders(f, a, maps.KnockWays)
		g.expect("a: step 1", f.knock(a, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		// Sources of the set whose packets are no first step leave a's
		// progress alone.
		b := others[0]
		g.expect("b: SYN to 22", f.knock(b, ssh), xdpDrop, "dropped_protected")
		g.expect("b: step 2", f.knock(b, seq[1]), xdpDrop, "dropped_knock")
		g.expect("b: UDP to 5353", f.knock(b, mdns), xdpDrop, "dropped_protected")
		// Three more fill the set; all four keep their progress.
		for _, o := range others[:maps.KnockWays-1] {
			g.expect("step 1 of a source of the same set", f.knock(o, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		}
		if h := g.holders(g.setOf(a)); len(h) != maps.KnockWays {
			t.Fatalf("full set holds %v", h)
		}
		// a advances: its deadline is now the latest.
		g.expect("a: step 2", f.knock(a, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		// The fifth source takes the oldest slot: the first collider's.
		last := others[maps.KnockWays-1]
		g.expect("fifth source: step 1", f.knock(last, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		h := g.holders(g.setOf(a))
		if _, ok := h[others[0]]; ok {
			t.Errorf("the oldest progress (%s) kept its slot: %v", others[0], h)
		}
		for _, keep := range []netip.Addr{a, last, others[1], others[2]} {
			if _, ok := h[keep]; !ok {
				t.Errorf("%s lost its progress: %v", keep, h)
			}
		}
		// The evicted source's next step starts nothing; a finishes.
		g.expect("evicted: step 2 without progress", f.knock(others[0], seq[1]), xdpDrop, "dropped_knock")
		g.expect("a: step 3", f.knock(a, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.expect("a: SYN to 22", f.knock(a, ssh), xdpPass, "passed_granted")
		if _, ok := g.holders(g.setOf(a))[a]; ok {
			t.Error("a's slot not freed by its completed sequence")
		}
		g.events()
	})
}

// A reset or stale progress frees the slot: the source is a stranger again.
func TestFreedSlots(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		g.knockSteps(f, f.src, 1)
		g.expect("reset", f.knock(f.src, unrelated), xdpPass, "knock_reset", "passed")
		if h := g.holders(g.setOf(f.src)); len(h) != 0 {
			t.Errorf("set after a reset: %v, want free", h)
		}
		g.knockSteps(f, f.src, 1)
		g.configure(defaultConfigKeyed(g.cfg.SlotKey)) // a new generation voids it
		g.expect("step 2 after set", f.knock(f.src, seq[1]), xdpDrop, "dropped_knock")
		if h := g.holders(g.setOf(f.src)); len(h) != 0 {
			t.Errorf("set after void progress was seen: %v, want free", h)
		}
		g.events()
	})
}

func defaultConfigKeyed(key [2]uint64) conf {
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
	if err != nil || got.SlotKey != key || got.Policy.Default().Open != c.Open {
		t.Errorf("after a write without a key: key %x (%v), want %x", got.SlotKey, err, key)
	}
}

// Two CPUs at once on one set: a source knocking its whole sequence over
// and over, and KG_KNOCK_WAYS others of its set sending first knocks, so
// that the set is always full and slots change hands. Whatever the
// interleaving, only the sequence's source is ever granted, every slot holds
// one of them (or nothing) in a state one of them could have made, and the
// tags agree with the slots.
func TestFullSetConcurrently(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		a := f.src
		others := g.colliders(f, a, maps.KnockWays)
		steps := [][]byte{f.knock(a, seq[0]), f.knock(a, seq[1]), f.knock(a, seq[2])}
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
				g.maps.Revoke(a, "")
			}
		}()
		go func() {
			defer wg.Done()
			for i := range 3 * rounds {
				g.objs.Knockgate.Run(runOpts(f.knock(others[i%len(others)], seq[0])))
			}
		}()
		wg.Wait()
		for _, o := range others {
			g.noGrant("a source that never completed a sequence", o)
		}
		for holder, k := range g.holders(g.setOf(a)) {
			switch {
			case holder == a && (k.Stage == 1 || k.Stage == 2):
			case holder != a && k.Stage == 1:
			default:
				t.Errorf("slot holds %s at stage %d: no interleaving makes that", holder, k.Stage)
			}
		}
		c := g.counters()
		if c.Counter(bpf.KnockgateCounterCOUNTER_GRANTED) == 0 || c.Counter(bpf.KnockgateCounterCOUNTER_GRANTED) > rounds {
			t.Errorf("%d grants over %d rounds", c.Counter(bpf.KnockgateCounterCOUNTER_GRANTED), rounds)
		}
		if c.Counter(bpf.KnockgateCounterCOUNTER_GRANT_FAILED) != 0 {
			t.Errorf("%d grants failed", c.Counter(bpf.KnockgateCounterCOUNTER_GRANT_FAILED))
		}
		g.events()
	})
}

func runOpts(frame []byte) *ebpf.RunOptions { return &ebpf.RunOptions{Data: frame} }

// The tag byte of a slot says who may hold it: the holder's tag while it
// does, 0 once the slot is free; Go's writes keep it so.
func TestKnockTagsFollowSlots(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := keyedGate(t)
		set := g.setOf(f.src)
		check := func(what string, held bool) {
			t.Helper()
			if _, ok := g.holders(set)[f.src]; ok != held { // holders checks the tags
				t.Errorf("%s: held %v, want %v", what, ok, held)
			}
		}
		check("fresh", false)
		g.knockSteps(f, f.src, 1)
		check("knocking", true)
		g.expect("reset", f.knock(f.src, unrelated), xdpPass, "knock_reset", "passed")
		check("after a reset", false)
		g.knockSteps(f, f.src, len(seq))
		check("sequence completed", false)
		if err := g.maps.PutKnock(f.src, bpf.KnockgateKnockSlot{DeadlineNs: maps.BootAfter(time.Minute), Generation: uint16(g.cfg.Generation), Stage: 1}); err != nil {
			t.Fatal(err)
		}
		check("progress written from Go", true)
		g.expect("step 2 after Go's write", f.knock(f.src, seq[1]), xdpDrop, "dropped_knock", "knock_advanced")
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		check("revoked", false)
		g.noProgress("revoked", f.src)
		g.events()
	})
}
