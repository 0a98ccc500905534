package bpf_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

// BenchmarkFwknop is what a forged fwknop datagram costs the program (its
// HMAC under every key, each a SHA-256 of the datagram's blocks and one
// more, and no match), of the length the real client sends for one port
// (204 bytes: 3 blocks and the outer one a key) and the longest a
// Rijndael datagram has (399: 6 and 1), with 1 and 16 keys; and a replay of
// a valid one (the same HMAC, then the replay map's refusal).
func BenchmarkFwknop(b *testing.B) {
	netns.Require(b)
	f := families[0]
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: loader.DefaultMaxSources}, loader.Tuning{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { objs.Close() })
	set := maps.FromObjects(&objs.KnockgateMaps)
	cfg := spaConfig()
	cfg.Services = benchServices()
	if _, err := set.WriteConfig(cfg.config()); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	keys := make([]maps.FwknopKey, 16)
	for i := range keys {
		k := make([]byte, 64)
		for j := range k {
			k[j] = byte(r.Uint32())
		}
		keys[i] = maps.FwknopKey{HMACKey: k, Name: fmt.Sprint(i + 1)}
	}
	bare := bareDrop(b)
	frame := func(p []byte) []byte { return f.spaFrame(f.src, p).Bytes() }
	// Microseconds a run, not nanoseconds: fewer runs a call than the
	// other paths' benchRepeat, for the same precision.
	const repeat = benchRepeat / 100
	run := func(b *testing.B, fr []byte, reason bpf.KnockgateCounter) {
		before, _ := set.ReadCounters()
		var p, fl time.Duration
		for b.Loop() {
			fl += timed(b, bare, fr, repeat, xdpDrop)
			p += timed(b, objs.Knockgate, fr, repeat, xdpDrop)
		}
		report(b, p, fl, b.N)
		after, _ := set.ReadCounters()
		// At least b.N*repeat runs: a run the kernel cut short (a signal:
		// EINTR) is made again whole, so a few more may have been counted.
		got, runs := after.Counter(reason)-before.Counter(reason), uint64(b.N*repeat)
		all := after.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_SPA) - before.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_SPA)
		if got < runs || got != all {
			b.Fatalf("%s: %d of %d runs (%d dropped as SPA), the rest took another path", maps.CounterNames[maps.Verdicts+int(reason)], got, runs, all)
		}
	}
	for _, n := range []int{1, 16} {
		if err := set.SetFwknopKeys(keys[:n]); err != nil {
			b.Fatal(err)
		}
		for _, length := range []int{204, fwknop.GPGLen - 1} {
			forged := macd(r, length-fwknop.TagLen, []byte("not one of the gate's keys"))
			b.Run(fmt.Sprintf("fwknop_forged_%dB_%dkeys", length, n), func(b *testing.B) {
				run(b, frame(forged), bpf.KnockgateCounterCOUNTER_FWKNOP_BAD_HMAC)
			})
		}
		valid := frame(macd(r, 204-fwknop.TagLen, keys[n-1].HMACKey))
		b.Run(fmt.Sprintf("fwknop_replayed_%dkeys", n), func(b *testing.B) {
			timed(b, objs.Knockgate, valid, 1, xdpDrop) // handed over once
			run(b, valid, bpf.KnockgateCounterCOUNTER_FWKNOP_REPLAY)
		})
	}
}
