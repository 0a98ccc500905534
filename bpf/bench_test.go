package bpf_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// The per-packet cost of each path of knockgate, through BPF_PROG_TEST_RUN,
// beside floors that show what the test harness itself costs:
//
//	go test -run '^$' -bench . -benchtime 3x ./bpf/
//
// The kernel times the repeat loop itself (bpf_test_timer) and reports the
// mean per run, so the syscall and the copy of the frame are not counted;
// what remains besides the program is the loop's own overhead (bottom-half
// disable, the dispatcher, the timer check), which the bare XDP_DROP floor
// measures. Each path benchmark runs the floor and the path alternately in
// the same loop, so both see the same machine state (frequency, neighbours
// on the shared cores), and reports:
//
//	ns/pkt          the path
//	floor-ns/pkt    the bare `return XDP_DROP` program, same run
//	ns-above-floor  their difference: what knockgate costs on that path
//
// The figures are integer nanoseconds averaged by the kernel over each
// chunk; the last digit is noise. The target for unauthorised_drop (a
// stranger's SYN to a protected port, what a scan or flood sends) is to
// stay within 25 ns of the floor.

// benchServices are the services every benchmark's gate has beside
// default: 15, so that each path is timed on a gate of 16 services (the
// issue's budget), each protecting a port and knocking a sequence of its
// own that no benchmark packet touches.
func benchServices() []policy.Service {
	var out []policy.Service
	for i := range 15 {
		out = append(out, policy.Service{
			Name:        fmt.Sprintf("svc%d", i),
			Sequence:    []maps.Port{tcp(uint16(20000 + 2*i)), tcp(uint16(20001 + 2*i))},
			StepTimeout: 10 * time.Second,
			Open:        time.Hour,
			Protect:     []maps.Port{tcp(uint16(10000 + i))},
		})
	}
	return out
}

// benchRepeat is how many runs one BPF_PROG_TEST_RUN call makes: enough to
// drown the call's fixed cost, few enough to keep a chunk near 50 ms.
const benchRepeat = 1_000_000

// knockChunk bounds the runs per call on the knock path: each run emits an
// event, and knock events go out only while less than half the 256 KiB ring
// buffer waits to be read (48 bytes a record: 2730 records), so the ring is
// drained between chunks; the program is loaded with an event budget that
// no chunk exhausts (production's lets 100 through at once), and the budget
// is refilled between chunks too. Otherwise the benchmark measures the
// cheaper events_suppressed path (knock_flood measures that on purpose).
const knockChunk = 2048

// knockChunks is how many chunks make one iteration of the knock path. Few:
// every call with a repeat count attaches the program to the kernel's XDP
// dispatcher and detaches it after (bpf_prog_change_xdp), which waits for an
// RCU grace period, some 10-20 ms outside the timed loop.
const knockChunks = 16

// bareDrop is the floor: `return XDP_DROP`.
func bareDrop(b *testing.B) *ebpf.Program {
	return floorProgram(b, asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
	})
}

// parseDrop parses Ethernet, IPv4 (honouring IHL) and the TCP ports and
// flags with the bounds checks the verifier demands, then drops: the least
// any port filter must do, for comparison with knockgate's own parsing.
// IPv4 without VLAN tags only; anything else passes.
func parseDrop(b *testing.B) *ebpf.Program {
	return floorProgram(b, asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
		asm.Mov.Imm(asm.R0, xdpPass),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R5, 0x0008, "out"), // ETH_P_IP, read little-endian
		asm.LoadMem(asm.R5, asm.R2, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R5, packet.ProtoTCP, "out"),
		asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte),
		asm.And.Imm(asm.R5, 0x0f),
		asm.LSh.Imm(asm.R5, 2), // IHL in bytes, 0..60
		asm.JLT.Imm(asm.R5, 20, "out"),
		asm.Mov.Reg(asm.R6, asm.R2),
		asm.Add.Reg(asm.R6, asm.R5), // data + IHL: the TCP header, less Ethernet
		asm.Mov.Reg(asm.R7, asm.R6),
		asm.Add.Imm(asm.R7, 14+20),
		asm.JGT.Reg(asm.R7, asm.R3, "out"),
		asm.LoadMem(asm.R8, asm.R6, 14+2, asm.Half),  // destination port
		asm.LoadMem(asm.R9, asm.R6, 14+13, asm.Byte), // flags
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return().WithSymbol("out"),
	})
}

func floorProgram(b *testing.B, insns asm.Instructions) *ebpf.Program {
	b.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: insns,
		License:      "GPL",
	})
	if err != nil {
		b.Fatalf("load floor program: %v", err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

// timed runs prog over frame repeat times and returns the kernel's mean
// per run, after checking the verdict.
func timed(b *testing.B, prog *ebpf.Program, frame []byte, repeat int, verdict uint32) time.Duration {
	b.Helper()
	got, per, err := prog.Benchmark(frame, repeat, nil)
	if err != nil {
		b.Fatal(err)
	}
	if got != verdict {
		b.Fatalf("%s, want %s", verdictName(got), verdictName(verdict))
	}
	return per
}

// report publishes the means of b.N chunks of path and floor.
func report(b *testing.B, path, floor time.Duration, chunks int) {
	p := float64(path.Nanoseconds()) / float64(chunks)
	f := float64(floor.Nanoseconds()) / float64(chunks)
	b.ReportMetric(p, "ns/pkt")
	b.ReportMetric(f, "floor-ns/pkt")
	b.ReportMetric(p-f, "ns-above-floor")
}

func BenchmarkFloor(b *testing.B) {
	netns.Require(b)
	frame := packet.TCP(families[0].src, families[0].dst, 40000, 22, packet.SYN).Bytes()
	b.Run("xdp_drop", func(b *testing.B) {
		prog := bareDrop(b)
		var sum time.Duration
		for b.Loop() {
			sum += timed(b, prog, frame, benchRepeat, xdpDrop)
		}
		b.ReportMetric(float64(sum.Nanoseconds())/float64(b.N), "ns/pkt")
	})
	b.Run("parse_ipv4", func(b *testing.B) {
		bare, parse := bareDrop(b), parseDrop(b)
		var p, f time.Duration
		for b.Loop() {
			f += timed(b, bare, frame, benchRepeat, xdpDrop)
			p += timed(b, parse, frame, benchRepeat, xdpDrop)
		}
		report(b, p, f, b.N)
	})
}

// BenchmarkKnockgate measures each path with a fresh program in the state
// the path needs: a three-step sequence, 22/tcp protected, one granted
// source (f.other), empty allow list (production's default, which skips the
// trie).
func BenchmarkKnockgate(b *testing.B) {
	netns.Require(b)
	paths := []struct {
		name    string
		v6      bool
		frame   func(f family) []byte
		verdict uint32
		// knock: every run must make a real state change (and an event,
		// unless flood).
		knock bool
		// flood: the event budget is spent, as under a flood of spoofed
		// first knocks: the state changes, the event is only counted.
		flood bool
		// stale: f.src starts with an expired progress entry.
		stale bool
	}{
		// A SYN from a stranger: its hint slot counts zero, so neither the
		// progress nor the grant map is looked up; dropped.
		{"unauthorised_drop", false, func(f family) []byte { return f.tcp(f.src, 22, packet.SYN) }, xdpDrop, false, false, false},
		{"unauthorised_drop_v6", true, func(f family) []byte { return f.tcp(f.src, 22, packet.SYN) }, xdpDrop, false, false, false},
		// A stranger's non-SYN to a protected port: not a possible knock.
		{"unauthorised_ack_drop", false, func(f family) []byte { return f.tcp(f.src, 22, packet.ACK) }, xdpDrop, false, false, false},
		// A source that knocked once and let its progress expire (a primed
		// flood). Its first packet finds the stale entry (both lookups and
		// the clock) and deletes it, which uncounts its hint slot; every
		// packet after that takes the stranger's path. This measures that
		// steady state.
		{"stale_source_drop", false, func(f family) []byte { return f.tcp(f.src, 22, packet.SYN) }, xdpDrop, false, false, true},
		// Established traffic to an unprotected service: parse and pass.
		{"unrelated_pass", false, func(f family) []byte { return f.tcp(f.src, 443, packet.ACK) }, xdpPass, false, false, false},
		// Established traffic of a granted source: one grant lookup and
		// the clock.
		{"granted_pass", false, func(f family) []byte { return f.tcp(f.other, 22, packet.ACK) }, xdpPass, false, false, false},
		// A knock that changes state every run. A repeated frame cannot
		// advance a sequence (the second run would be a retransmission,
		// which is ignored), so the step timeout is 1 ns: by the next run
		// the progress has expired and counts as none, and the same SYN
		// starts the sequence again. Each run thus does the full start:
		// progress lookup (a hit, found stale), clock, grant lookup (miss),
		// progress update, event. That is a superset of an advance (lookup
		// hit, clock, in-place store, event), so it bounds the knock path
		// from above.
		{"knock_start", false, func(f family) []byte { return f.tcp(f.src, 7000, packet.SYN) }, xdpDrop, true, false, false},
		// The same with the event budget spent: what each packet of a
		// flood of spoofed first knocks costs.
		{"knock_flood", false, func(f family) []byte { return f.tcp(f.src, 7000, packet.SYN) }, xdpDrop, true, true, false},
	}
	for _, path := range paths {
		b.Run(path.name, func(b *testing.B) {
			f := families[0]
			if path.v6 {
				f = families[1]
			}
			objs, err := loader.LoadTuned(loader.Sizes{MaxSources: loader.DefaultMaxSources}, loader.Tuning{EventBurst: 1 << 20})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { objs.Close() })
			set := maps.FromObjects(&objs.KnockgateMaps)
			// Flows on, as by default: a stranger's non-SYN also checks
			// the flow table's tags.
			cfg := conf{
				Sequence:    seq,
				StepTimeout: 10 * time.Second,
				Open:        time.Hour,
				Protected:   []maps.Port{ssh},
				Flows:       true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute,
				Services: benchServices(),
			}
			if path.knock {
				cfg.StepTimeout = time.Nanosecond
			}
			if _, err := set.WriteConfig(cfg.config()); err != nil {
				b.Fatal(err)
			}
			// f.other is the granted source; f.src the stranger.
			if err := set.Grant(f.other, "default", maps.BootAfter(time.Hour)); err != nil {
				b.Fatal(err)
			}
			if path.stale {
				expired := bpf.KnockgateKnockSlot{DeadlineNs: maps.BootNow() - 1, Generation: 1, Stage: 1}
				if err := set.PutKnock(f.src, expired); err != nil {
					b.Fatal(err)
				}
			}
			frame, bare := path.frame(f), bareDrop(b)

			if !path.knock {
				var p, fl time.Duration
				for b.Loop() {
					fl += timed(b, bare, frame, benchRepeat, xdpDrop)
					p += timed(b, objs.Knockgate, frame, benchRepeat, path.verdict)
				}
				report(b, p, fl, b.N)
				return
			}

			rd, err := ringbuf.NewReader(objs.Events)
			if err != nil {
				b.Fatal(err)
			}
			defer rd.Close()
			before, err := set.ReadCounters()
			if err != nil {
				b.Fatal(err)
			}
			budget := uint64(0) // a full budget
			if path.flood {
				budget = maps.BootAfter(1000 * time.Hour) // spent, whatever the burst
			}
			var p, fl time.Duration
			chunks := 0
			for b.Loop() {
				fl += timed(b, bare, frame, benchRepeat, xdpDrop) * knockChunks
				for range knockChunks {
					setBudget(b, objs.EventBudget, budget)
					p += timed(b, objs.Knockgate, frame, knockChunk, path.verdict)
					chunks++
					drain(b, rd)
				}
			}
			report(b, p, fl, chunks)
			// The method is only sound if every run really started the
			// sequence, and delivered its event or (flood) counted it.
			after, err := set.ReadCounters()
			if err != nil {
				b.Fatal(err)
			}
			advanced := after.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED) - before.Counter(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED)
			lost := after.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST) - before.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST)
			suppressed := after.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED) - before.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED)
			if runs := uint64(chunks * knockChunk); lost != 0 || advanced < runs || path.flood != (suppressed >= runs) || !path.flood && suppressed != 0 {
				b.Fatalf("%d chunks of %d runs: %d advances, %d events lost, %d suppressed", chunks, knockChunk, advanced, lost, suppressed)
			}
		})
	}
}

// setBudget sets every CPU's event budget (see bpf/events_test.go).
func setBudget(b *testing.B, m *ebpf.Map, next uint64) {
	v := make([]uint64, ebpf.MustPossibleCPU())
	for i := range v {
		v[i] = next
	}
	if err := m.Update(uint32(0), v, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
}

// drain empties the ring buffer without blocking.
func drain(b *testing.B, rd *ringbuf.Reader) {
	rd.SetDeadline(time.Now())
	var rec ringbuf.Record
	for {
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		if err != nil {
			b.Fatalf("drain events: %v", err)
		}
	}
}

// churn sends n first knocks from n distinct spoofed sources through the
// gate's program, the way a flood would: a wrapper program adds 1 to the
// IPv4 source address of the frame (BPF_PROG_TEST_RUN keeps the frame as the
// last run left it) and tail-calls the gate, n times in one call. It returns
// the number of slots of the knock table that hold progress afterwards.
func churn(b *testing.B, objs *loader.Objects, frame []byte, n int) int {
	b.Helper()
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer progs.Close()
	if err := progs.Update(uint32(0), objs.Knockgate, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	const saddr = 14 + 12 // IPv4 source, after Ethernet
	wrap, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, saddr+4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.LoadMem(asm.R5, asm.R2, saddr, asm.Word),
		asm.Add.Imm(asm.R5, 1),
		asm.StoreMem(asm.R2, saddr, asm.R5, asm.Word),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		b.Fatalf("load churn wrapper: %v", err)
	}
	defer wrap.Close()
	if _, err := wrap.Run(&ebpf.RunOptions{Data: frame, Repeat: uint32(n)}); err != nil {
		b.Fatalf("churn: %v", err)
	}
	slots, err := maps.FromObjects(&objs.KnockgateMaps).KnockSlots()
	if err != nil {
		b.Fatal(err)
	}
	used := 0
	for _, k := range slots {
		if k.Addr != [16]byte{} {
			used++
		}
	}
	return used
}

// BenchmarkStranger measures a stranger's packets — the ones a scan or a
// flood is made of — on a fresh gate, after 10⁶ spoofed first knocks into a
// small table (--max-sources 1024: every slot taken by the flood), and with
// the table full of progress that has long expired (what an hour after a
// flood looks like), each beside the XDP_DROP floor. The target: ≤ 25 ns
// above the floor, the same in every state.
func BenchmarkStranger(b *testing.B) {
	netns.Require(b)
	f := families[0]
	cfg := conf{Sequence: seq, StepTimeout: 10 * time.Second, Open: time.Hour, Protected: []maps.Port{ssh, mdns},
		Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute, Services: benchServices()}
	states := []struct {
		name       string
		maxSources uint32
		churn      int
		stepNs     time.Duration // step timeout while the flood ran
	}{
		{"fresh", loader.DefaultMaxSources, 0, 0},
		{"churned", 1024, 1_000_000, 10 * time.Second},
		{"expired", 1024, 1_000_000, time.Nanosecond},
	}
	paths := []struct {
		name    string
		frame   []byte
		verdict uint32
	}{
		{"syn_22", f.tcp(f.src, 22, packet.SYN), xdpDrop},
		{"ack_22", f.tcp(f.src, 22, packet.ACK), xdpDrop},
		{"udp_protected", f.knock(f.src, mdns), xdpDrop},
		{"syn_step2", f.knock(f.src, seq[1]), xdpDrop}, // a knock port that starts nothing
	}
	for _, st := range states {
		for _, path := range paths {
			b.Run(st.name+"/"+path.name, func(b *testing.B) {
				objs, err := loader.Load(st.maxSources)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { objs.Close() })
				set := maps.FromObjects(&objs.KnockgateMaps)
				c := cfg
				if c.SlotKey, err = maps.NewSlotKey(); err != nil {
					b.Fatal(err)
				}
				if st.churn > 0 {
					c.StepTimeout = st.stepNs
					if _, err := set.WriteConfig(c.config()); err != nil {
						b.Fatal(err)
					}
					start := f.frame(netip.MustParseAddr("10.79.0.1"), seq[0]).Bytes()
					if used, slots := churn(b, objs, start, st.churn), int(objs.Knocks.MaxEntries()); used < slots*99/100 {
						b.Fatalf("after %d spoofed first knocks, %d of %d slots hold progress", st.churn, used, slots)
					}
				} else if _, err := set.WriteConfig(c.config()); err != nil {
					b.Fatal(err)
				}
				bare := bareDrop(b)
				var p, fl time.Duration
				for b.Loop() {
					fl += timed(b, bare, path.frame, benchRepeat, xdpDrop)
					p += timed(b, objs.Knockgate, path.frame, benchRepeat, path.verdict)
				}
				report(b, p, fl, b.N)
			})
		}
	}
}

// tcNext is the tc floor: `return TCX_NEXT`, what the egress program returns.
func tcNext(b *testing.B) *ebpf.Program {
	b.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		b.Fatalf("load tc floor program: %v", err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

// BenchmarkFlows measures the flow table's paths: an inbound packet of a
// live flow, a stranger's packets under --protect all (with the flow
// table's tags empty, and full as a busy host's would be), and the egress
// program on a packet the host sends (beside a bare tc program).
func BenchmarkFlows(b *testing.B) {
	netns.Require(b)
	f4, f6 := families[0], families[1]
	paths := []struct {
		name       string
		protectAll bool
		fullTags   bool // every flow_tags byte non-zero: a table full of flows
		egress     bool // the frame goes through the egress program
		frame      func(f family) []byte
		f          family
		verdict    uint32
	}{
		// The rest of a session whose grant has ended: one tag check and
		// the flow's slot.
		{"flow_pass", false, false, false, func(f family) []byte { return packet.TCP(f.src, f.dst, 40000, 22, packet.ACK).Bytes() }, f4, xdpPass},
		{"flow_pass_v6", false, false, false, func(f family) []byte { return packet.TCP(f.src, f.dst, 40000, 22, packet.ACK).Bytes() }, f6, xdpPass},
		// A reply to the host's own connection under --protect all.
		{"protect_all_reply_pass", true, false, false, func(f family) []byte { return packet.TCP(f.src, f.dst, 40000, 22, packet.ACK).Bytes() }, f4, xdpPass},
		{"protect_all_syn_drop", true, false, false, func(f family) []byte { return f.tcp(f.other, 80, packet.SYN) }, f4, xdpDrop},
		{"protect_all_ack_drop", true, false, false, func(f family) []byte { return f.tcp(f.other, 80, packet.ACK) }, f4, xdpDrop},
		{"protect_all_synack_drop", true, false, false, func(f family) []byte { return f.tcp(f.other, 41000, packet.SYN|packet.ACK) }, f4, xdpDrop},
		{"protect_all_udp_drop", true, false, false, func(f family) []byte { return packet.UDP(f.other, f.dst, 40000, 5000).Bytes() }, f4, xdpDrop},
		{"protect_all_ack_drop_full", true, true, false, func(f family) []byte { return f.tcp(f.other, 80, packet.ACK) }, f4, xdpDrop},
		{"protect_all_syn_drop_full", true, true, false, func(f family) []byte { return f.tcp(f.other, 80, packet.SYN) }, f4, xdpDrop},
		// Egress: a packet of a known flow (refreshed), and one from an
		// unprotected port (not learned).
		{"egress_refresh", false, false, true, func(f family) []byte { return packet.TCP(f.dst, f.src, 22, 40000, packet.ACK).Bytes() }, f4, tcxNext},
		{"egress_refresh_v6", false, false, true, func(f family) []byte { return packet.TCP(f.dst, f.src, 22, 40000, packet.ACK).Bytes() }, f6, tcxNext},
		{"egress_unprotected", false, false, true, func(f family) []byte { return packet.TCP(f.dst, f.src, 443, 40000, packet.ACK).Bytes() }, f4, tcxNext},
	}
	for _, path := range paths {
		b.Run(path.name, func(b *testing.B) {
			f := path.f
			objs, err := loader.Load(loader.DefaultMaxSources)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { objs.Close() })
			set := maps.FromObjects(&objs.KnockgateMaps)
			cfg := conf{Sequence: seq, StepTimeout: 10 * time.Second, Open: time.Hour, Protected: []maps.Port{ssh},
				ProtectAll: path.protectAll, Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute,
				Services: benchServices()}
			if cfg.SlotKey, err = maps.NewSlotKey(); err != nil {
				b.Fatal(err)
			}
			if _, err := set.WriteConfig(cfg.config()); err != nil {
				b.Fatal(err)
			}
			if path.fullTags {
				fillTags(b, objs.FlowTags)
			}
			// The flow every path may use: the host's port 22 (or, under
			// protect all, any port) to f.src:40000, learned on egress.
			host := packet.TCP(f.dst, f.src, 22, 40000, packet.SYN|packet.ACK).Bytes()
			if _, err := objs.Egress.Run(&ebpf.RunOptions{Data: host}); err != nil {
				b.Fatal(err)
			}
			if fs, err := set.Flows(); err != nil || len(fs) != 1 {
				b.Fatalf("flows after the host's SYN+ACK: %v %v", fs, err)
			}
			frame := path.frame(f)
			prog, floor, floorVerdict := objs.Knockgate, bareDrop(b), uint32(xdpDrop)
			if path.egress {
				prog, floor, floorVerdict = objs.Egress, tcNext(b), tcxNext
			}
			var p, fl time.Duration
			for b.Loop() {
				fl += timed(b, floor, frame, benchRepeat, floorVerdict)
				p += timed(b, prog, frame, benchRepeat, path.verdict)
			}
			report(b, p, fl, b.N)
		})
	}
}

// fillTags makes every slot's tag non-zero and random, as a flow table full
// of flows has them: a stranger's packet then finds a matching tag in its
// set about once in 64 and looks at the slot.
func fillTags(b *testing.B, m *ebpf.Map) {
	b.Helper()
	mem, err := unix.Mmap(m.FD(), 0, int(m.ValueSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	rand.Read(mem)
	for i := range mem {
		if mem[i] == 0 {
			mem[i] = 1
		}
	}
}

// BenchmarkSPA measures single-packet authorization beside the floor: a
// forged packet (a known key id, a wrong tag: the whole check up to the
// hash, which is what a flood of forgeries costs), one with an unknown key
// id, a valid one sent again (every check passes but the replay rule: the
// hash, the clock, the compare), and a valid one accepted (all of that, the
// compare-and-swap, the grant and its open event). Target: a forged packet
// within 150 ns of the floor.
func BenchmarkSPA(b *testing.B) {
	netns.Require(b)
	f := families[0]
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: loader.DefaultMaxSources}, loader.Tuning{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { objs.Close() })
	set := maps.FromObjects(&objs.KnockgateMaps)
	cfg := spaConfig()
	cfg.Flows, cfg.FlowIdleTCP, cfg.FlowIdleUDP = true, 24*time.Hour, 3*time.Minute
	cfg.Services = benchServices()
	if _, err := set.WriteConfig(cfg.config()); err != nil {
		b.Fatal(err)
	}
	if err := set.SetSPAKeys([]spa.Key{plainKey, anyKey}); err != nil {
		b.Fatal(err)
	}
	valid := spaPayload(&plainKey, time.Now().Add(10*time.Minute), netip.Addr{})
	forged := append([]byte(nil), valid...)
	forged[50] ^= 0x80
	unknown := append([]byte(nil), valid...)
	unknown[7] ^= 1
	frame := func(p []byte) []byte { return f.spaFrame(f.src, p).Bytes() }
	bare := bareDrop(b)

	// The valid packets are stamped ahead and the window widened, so the
	// replayed one stays in it for as long as the benchmark runs.
	cfg.SPAWindow = time.Hour
	if _, err := set.WriteConfig(cfg.config()); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		frame  []byte
		reason bpf.KnockgateCounter
	}{
		{"spa_forged", frame(forged), bpf.KnockgateCounterCOUNTER_SPA_BAD_TAG},
		{"spa_unknown_key", frame(unknown), bpf.KnockgateCounterCOUNTER_SPA_UNKNOWN_KEY},
		{"spa_replayed", frame(valid), bpf.KnockgateCounterCOUNTER_SPA_REPLAY},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.reason == bpf.KnockgateCounterCOUNTER_SPA_REPLAY {
				// Accepted once: every run after is a replay.
				timed(b, objs.Knockgate, c.frame, 1, xdpDrop)
			}
			before, _ := set.ReadCounters()
			var p, fl time.Duration
			for b.Loop() {
				fl += timed(b, bare, c.frame, benchRepeat, xdpDrop)
				p += timed(b, objs.Knockgate, c.frame, benchRepeat, xdpDrop)
			}
			report(b, p, fl, b.N)
			after, _ := set.ReadCounters()
			if got, runs := after.Counter(c.reason)-before.Counter(c.reason), uint64(b.N*benchRepeat); got != runs {
				b.Fatalf("%s: %d of %d runs, the rest took another path", maps.CounterNames[maps.Verdicts+int(c.reason)], got, runs)
			}
		})
	}

	// Accepted: each run needs a timestamp newer than the last accepted,
	// so the replay state is reset before each, and each is its own call
	// (the kernel's timer around one run; the floor is timed the same way).
	b.Run("spa_valid", func(b *testing.B) {
		rd, err := ringbuf.NewReader(objs.Events)
		if err != nil {
			b.Fatal(err)
		}
		defer rd.Close()
		fr := frame(valid)
		const runs = 512
		before, _ := set.ReadCounters()
		var p, fl time.Duration
		chunks := 0
		for b.Loop() {
			for range runs {
				if err := set.SPALast.Update(plainKey.ID, uint64(0), ebpf.UpdateExist); err != nil {
					b.Fatal(err)
				}
				fl += timed(b, bare, fr, 1, xdpDrop)
				p += timed(b, objs.Knockgate, fr, 1, xdpDrop)
				chunks++
			}
			drain(b, rd)
		}
		report(b, p, fl, chunks)
		after, _ := set.ReadCounters()
		if got := after.Counter(bpf.KnockgateCounterCOUNTER_SPA_ACCEPTED) - before.Counter(bpf.KnockgateCounterCOUNTER_SPA_ACCEPTED); got != uint64(chunks) {
			b.Fatalf("accepted %d of %d", got, chunks)
		}
	})
}
