package bpf_test

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

// Knock and reset events are budgeted per CPU (KG_EVENT_BURST at once,
// KG_EVENT_RATE a second) so that a flood of spoofed knocks costs neither a
// flood of events nor the room open and expire events need.
const (
	eventRate      = 100
	eventBurst     = 100
	eventRingBytes = 256 * 1024
)

// onOneCPU runs the rest of the test on one CPU, so that every program run
// draws on the same per-CPU event budget.
func onOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.SchedSetaffinity(0, &set) })
	var one unix.CPUSet
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
}

// source makes the n-th of many distinct sources of family f, none of them
// f.src or f.other (byte 12 marks them: 240/8 for IPv4).
func (f family) source(n int) netip.Addr {
	b := f.src.As16()
	b[12], b[13], b[14], b[15] = 0xf0, byte(n>>16), byte(n>>8), byte(n)
	return netip.AddrFrom16(b).Unmap()
}

// setBudget makes every CPU's event budget next have room at the
// CLOCK_BOOTTIME stamp next: 0 is a full budget, a stamp far ahead one
// spent for that long. This is what time passing does, without waiting.
func (g *gate) setBudget(next uint64) {
	g.t.Helper()
	v := make([]uint64, ebpf.MustPossibleCPU())
	for i := range v {
		v[i] = next
	}
	if err := g.objs.EventBudget.Update(uint32(0), v, ebpf.UpdateAny); err != nil {
		g.t.Fatal(err)
	}
}

func TestKnockEventsBudgeted(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		onOneCPU(t)
		g := newGate(t, defaultConfig())
		// A burst of first knocks from distinct sources, as fast as they
		// come: the first eventBurst are reported, plus what the budget
		// earned back while the burst ran; the rest are only counted.
		// Verdicts and state are the same for all.
		const burst = 3 * eventBurst
		start := maps.BootNow()
		for i := range burst {
			if v := g.run(f.knock(f.source(i), seq[0])); v != xdpDrop {
				t.Fatalf("first knock %d: %s", i, verdictName(v))
			}
		}
		earned := (maps.BootNow()-start)/uint64(time.Second/eventRate) + 1
		// (Some of these sources share a slot: the last knock holds it.)
		if _, ok := g.progress(f.source(burst - 1)); !ok {
			t.Fatal("the last first knock made no progress")
		}
		c := g.counters()
		delivered := uint64(len(g.events()))
		if delivered < eventBurst || delivered > eventBurst+earned {
			t.Errorf("%d knock events delivered, want %d to %d", delivered, eventBurst, eventBurst+earned)
		}
		if got := c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED); got != burst-delivered {
			t.Errorf("events_suppressed = %d, want %d (made %d, delivered %d)", got, burst-delivered, burst, delivered)
		}
		if got := c.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED); got != burst {
			t.Errorf("knock_advanced = %d, want %d", got, burst)
		}

		// With the budget spent, steps and resets are reported no more,
		// but an open is: it is never budgeted.
		g.setBudget(maps.BootNow() + uint64(time.Minute))
		src := f.source(burst - 1)
		g.expect("step 2, budget spent", f.knock(src, seq[1]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("step 3, budget spent", f.knock(src, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		g.expect("step 1, budget spent", f.knock(f.other, seq[0]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("reset, budget spent", f.knock(f.other, unrelated), xdpPass, "knock_reset", "events_suppressed", "passed")
		evs := g.expectEvents("budget spent", "open")
		if len(evs) == 1 && evs[0].Src != src {
			t.Errorf("open event for %s, want %s", evs[0].Src, src)
		}
		// Time refills it.
		g.setBudget(0)
		g.expect("step 1, budget refilled", f.knock(f.other, seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expect("reset, budget refilled", f.knock(f.other, unrelated), xdpPass, "knock_reset", "passed")
		g.expectEvents("budget refilled", "knock", "reset")
	})
}

// With the ring buffer full, events are lost but verdicts and state are
// exactly what they would be; knock events give way before open events do.
func TestFullRingBufferKeepsVerdicts(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		// One step: every first knock from a new source is an open event,
		// which no budget holds back, so opens alone fill the ring.
		cfg := defaultConfig()
		cfg.Sequence = seq[:1]
		g := newGate(t, cfg)
		limit := eventRingBytes/48 + 64 // more opens than the ring holds
		lost := false
		for i := 0; i < limit && !lost; i++ {
			if v := g.run(f.knock(f.source(i), seq[0])); v != xdpDrop {
				t.Fatalf("knock %d: %s", i, verdictName(v))
			}
			if i%64 == 63 {
				c := g.counters()
				lost = c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST) > 0
			}
		}
		if !lost {
			t.Fatalf("ring buffer of %d bytes never filled", eventRingBytes)
		}
		c := g.counters()
		if n := c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED); n != 0 {
			t.Errorf("%d open events suppressed: opens are never budgeted", n)
		}

		// With the ring full, the state machine runs exactly as before.
		g.configure(defaultConfig())
		src := f.source(limit + 1)
		g.expect("step 1, ring full", f.knock(src, seq[0]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("step 2, ring full", f.knock(src, seq[1]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("step 3, ring full", f.knock(src, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted", "events_lost")
		if _, ok := g.grant(src); !ok {
			t.Error("ring full: sequence did not grant")
		}
		g.expect("SYN to 22, ring full", f.knock(src, ssh), xdpPass, "passed_granted")

		// Every event was delivered, lost or suppressed.
		c = g.counters()
		made := c.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED) + c.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_RESET) + c.Counter(bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED)
		read := uint64(len(g.events()))
		if read+c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST)+c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED) != made {
			t.Errorf("%d events made, %d read + %d lost + %d suppressed", made, read, c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST), c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED))
		}
		// Once drained, knock events flow again.
		g.expect("step 1 after draining", f.knock(f.source(limit+2), seq[0]), xdpDrop, "dropped_knock", "knock_advanced")
		g.expectEvents("after draining", "knock")
	})
}

// Knock events are held back while more than half the ring waits for the
// reader, so that open events still find room.
func TestRingReserveKeptForOpens(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := defaultConfig()
		cfg.Sequence = seq[:1]
		g := newGate(t, cfg)
		// Fill a little over half the ring with opens (48 bytes a record).
		for i := range eventRingBytes/2/48 + 8 {
			g.run(f.knock(f.source(i), seq[0]))
		}
		g.configure(defaultConfig())
		g.expect("first knock past the reserve", f.knock(f.other, seq[0]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("step 2 past the reserve", f.knock(f.other, seq[1]), xdpDrop, "dropped_knock", "knock_advanced", "events_suppressed")
		g.expect("open past the reserve", f.knock(f.other, seq[2]), xdpDrop, "dropped_knock", "knock_advanced", "granted")
		evs := g.events()
		if last := evs[len(evs)-1]; last.Type != "open" || last.Src != f.other {
			t.Errorf("last event %s from %s, want open from %s", last.Type, last.Src, f.other)
		}
	})
}
