package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/bench"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// BenchmarkScale measures how a path's cost grows with the number of
// distinct sources its packets come from. The per-path benchmarks send one
// frame again and again, so every line of every map the path reads stays in
// cache; a flood from many sources reads a different tag byte, hint slot and
// grant each packet. Here a wrapper program moves the frame's IPv4 source to
// the next of n (base, base+1, ..., base+n-1, base, ...) and tail-calls the
// gate, every run; the floor is the same wrapper tail-calling a bare
// XDP_DROP. The gates are made once, at --max-sources 2^20 with 16
// services (but small):
//
//	bare        no grants
//	granted     10⁶ grants of default (source grantBase+i), through maps.Set.Grant,
//	            in a scattered order (bench.Stride)
//	nosequence  no grants, and no service has a knock sequence (a SYN skips
//	            the knock code and its tag bytes)
//	small       bare at the default --max-sources, 65536 (maps 16 times smaller)
//
// and each path runs with n = 1, 2^10, 2^16 and 10⁶ sources:
//
//	stranger_syn        SYN to 22 from a stranger: knock tags, hint slot
//	stranger_syn_grants the same on the granted gate (a hint that counts
//	                    something costs a grant lookup)
//	stranger_syn_noseq  the same on the nosequence gate: the hint slot only
//	stranger_syn_small  the same on the small gate
//	stranger_ack        ACK to 22 from a stranger: flow tags, hint slot
//	granted_ack         ACK to 22 from granted sources: flow tags, hint slot,
//	                    grant lookup and the clock
//
// go test -run '^$' -bench Scale -benchtime 3x ./bpf/
func BenchmarkScale(b *testing.B) {
	netns.Require(b)
	const maxSources = 1 << 20
	const grants = 1_000_000
	var (
		strangerBase = netip.MustParseAddr("10.128.0.0")
		grantBase    = netip.MustParseAddr("10.0.0.0")
		dst          = families[0].dst
	)
	gates := map[string]*loader.Objects{}
	gate := func(name string) *loader.Objects {
		if objs, ok := gates[name]; ok {
			return objs
		}
		size := uint32(maxSources)
		if name == "small" {
			size = loader.DefaultMaxSources
		}
		objs, err := loader.LoadTuned(loader.Sizes{MaxSources: size}, loader.Tuning{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { objs.Close() })
		set := maps.FromObjects(&objs.KnockgateMaps)
		cfg := conf{Sequence: seq, StepTimeout: 10 * time.Second, Open: time.Hour, Protected: []maps.Port{ssh},
			Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute, Services: benchServices()}
		if name == "nosequence" {
			// Opened by SPA alone (a UDP port: no TCP packet goes near it).
			cfg.Sequence, cfg.SPAPort, cfg.SPAWindow = nil, spaPort, 30*time.Second
			for i := range cfg.Services {
				cfg.Services[i].Sequence = nil
			}
		}
		if cfg.SlotKey, err = maps.NewSlotKey(); err != nil {
			b.Fatal(err)
		}
		if _, err := set.WriteConfig(cfg.config()); err != nil {
			b.Fatal(err)
		}
		if name == "granted" {
			start := time.Now()
			expires := maps.BootAfter(24 * time.Hour)
			// In a scattered order, as bench-scale makes them: see
			// bench.NewScaleGate.
			stride := bench.Stride(grants)
			for j := range uint32(grants) {
				i := uint32(uint64(j) * uint64(stride) % grants)
				if err := set.Grant(plus(grantBase, i), policy.DefaultService, expires); err != nil {
					b.Fatal(err)
				}
			}
			b.Logf("%d grants in %s", grants, time.Since(start).Round(time.Millisecond))
		}
		gates[name] = objs
		return objs
	}
	paths := []struct {
		name    string
		gate    string
		base    netip.Addr
		flags   uint8
		verdict uint32
	}{
		{"stranger_syn", "bare", strangerBase, packet.SYN, xdpDrop},
		{"stranger_syn_grants", "granted", strangerBase, packet.SYN, xdpDrop},
		{"stranger_syn_noseq", "nosequence", strangerBase, packet.SYN, xdpDrop},
		{"stranger_syn_small", "small", strangerBase, packet.SYN, xdpDrop},
		{"stranger_ack", "bare", strangerBase, packet.ACK, xdpDrop},
		{"granted_ack", "granted", grantBase, packet.ACK, xdpPass},
	}
	for _, path := range paths {
		for _, n := range []uint32{1, 1 << 10, 1 << 16, grants} {
			b.Run(fmt.Sprintf("%s/%d", path.name, n), func(b *testing.B) {
				objs := gate(path.gate)
				frame := packet.TCP(path.base, dst, 40000, 22, path.flags).Bytes()
				wrapGate := cycleSources(b, objs.Knockgate, ebpf.AttachXDP, path.base, n)
				wrapFloor := cycleSources(b, bareDrop(b), ebpf.AttachNone, path.base, n)
				var p, fl time.Duration
				for b.Loop() {
					fl += timed(b, wrapFloor, frame, benchRepeat, xdpDrop)
					p += timed(b, wrapGate, frame, benchRepeat, path.verdict)
				}
				report(b, p, fl, b.N)
			})
		}
	}
}

func plus(base netip.Addr, i uint32) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(base.AsSlice())+i)
	return netip.AddrFrom4(a)
}

// cycleSources is a program that moves its frame's IPv4 source to the next
// of base..base+n-1 (BPF_PROG_TEST_RUN keeps the frame as the last run left
// it) and tail-calls prog, whose expected attach type it must share (the
// kernel refuses a tail call between programs that differ). Checksums are
// left stale: no path here reads them.
func cycleSources(b *testing.B, prog *ebpf.Program, attach ebpf.AttachType, base netip.Addr, n uint32) *ebpf.Program {
	b.Helper()
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { progs.Close() })
	if err := progs.Update(uint32(0), prog, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	const saddr = 14 + 12 // IPv4 source, after Ethernet
	first := int32(binary.BigEndian.Uint32(base.AsSlice()))
	wrap, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: attach, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, saddr+4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, saddr, asm.Word),
		asm.HostTo(asm.BE, asm.R5, asm.Word), // host order
		// next = base + (addr - base + 1) % n, in 32 bits
		asm.Sub.Imm32(asm.R5, first),
		asm.Add.Imm32(asm.R5, 1),
		asm.Mod.Imm32(asm.R5, int32(n)),
		asm.Add.Imm32(asm.R5, first),
		asm.HostTo(asm.BE, asm.R5, asm.Word),
		asm.StoreMem(asm.R2, saddr, asm.R5, asm.Word),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("out"),
		asm.Return(),
	}}, ebpf.ProgramOptions{LogLevel: ebpf.LogLevelInstruction})
	if err != nil {
		b.Fatalf("load source-cycling wrapper: %+v", err)
	}
	b.Cleanup(func() { wrap.Close() })
	return wrap
}
