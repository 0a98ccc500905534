// Command bench-peers floods knockgate and the knock gates users would pick
// instead (nftables timeout sets, iptables' recent match), beside two floors
// (no filter; parse-and-XDP_DROP), and prints a table and draws a chart:
// receiver CPU per packet (and packets handled per second) under
// single-source and spoofed SYN floods, knock-to-open latency, map memory per source, and
// whether every gate let exactly the knocked clients in. Run it as root:
//
//	go run ./test/bench/cmd/bench-peers [--smoke] [--out bench-peers.png]
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/test/bench"
)

const inProcess = "in-process"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench-peers:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	o := bench.Options{Log: stderr}
	so := bench.SPAOptions{}
	var (
		smoke    bool
		out      string
		peerNAPI string
		gates    []string
		gen      string
	)
	fs := pflag.NewFlagSet("bench-peers", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Rounds, "rounds", 5, "rounds; each runs every gate under every flood once, in shuffled order")
	fs.DurationVar(&o.Duration, "duration", 2*time.Second, "measured flood time per configuration")
	fs.DurationVar(&o.Warmup, "warmup", 500*time.Millisecond, "flood time before the measured window")
	fs.DurationVar(&o.Prime, "prime", 300*time.Millisecond, "knock flood before the primed flood")
	fs.IntVar(&o.CPU, "cpu", runtime.NumCPU()-1, "the receiver's core: its NAPI thread is pinned there")
	fs.IntVar(&o.SenderCPU, "sender-cpu", -1, "the sending thread's core; -1: another than --cpu (the same on a 1-CPU machine)")
	fs.DurationVar(&o.NAPIDefer, "napi-defer", 200*time.Microsecond,
		"the receiver's NAPI, once idle, polls again after this long instead of at the next frame (0: at once)")
	fs.StringVar(&gen, "generator", string(bench.GenAuto),
		"the flood's back end: live (BPF_PROG_RUN live frames), afpacket (AF_PACKET sendmmsg), or auto (live if the kernel runs it)")
	fs.Uint32Var(&o.Batch, "batch", bench.MaxBatch, "frames the generator flushes to the veth at once (1-256)")
	fs.Uint32Var(&o.Spoofed, "spoofed", 50000, "sources of the spoofed flood")
	fs.IntVar(&o.Latency, "latency", 100, "fresh sources per knock-to-open measurement (one per gate and round)")
	fs.IntVar(&o.Knocked, "knocked", 3, "knocked clients per correctness check (plus three that must stay out)")
	fs.IntVar(&o.MemFill, "mem-fill", 10000, "entries added to each knockgate map for the memory reading")
	fs.StringVar(&peerNAPI, "peer-napi", string(bench.NAPIXDPPass),
		"how gates without XDP get NAPI on the receiving veth: xdp-pass or gro")
	fs.StringVar(&o.Knockgate, "knockgate", "",
		"knockgate binary to attach with (default: go build ./cmd/knockgate); \""+inProcess+"\": loader.Attach in this process")
	fs.StringVar(&o.KnockgateBase, "knockgate-base", "",
		"another build's knockgate binary (an earlier design) to run beside this one as \"knockgate-base\"")
	fs.Uint32Var(&o.Churn, "churn", 1_000_000, "first knocks from this many spoofed sources before the churned flood (0: no churned flood)")
	fs.DurationVar(&o.ChurnTime, "churn-time", 3*time.Second, "longest the churn may take")
	fs.DurationSliceVar(&o.Gaps, "gaps", []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, time.Second},
		"gaps between the two knocks of the clients that knock during a first-knock flood (none: not measured)")
	fs.IntVar(&o.UnderFlood, "under-flood", 30, "clients per gap that knock during a first-knock flood")
	fs.Float64SliceVar(&o.FloodRates, "flood-rates", []float64{0, 500_000},
		"rates of that first-knock flood, frames a second (0: as fast as the sender goes)")
	fs.IntVar(&so.Rounds, "spa-rounds", -1, "rounds of the SPA benchmark (knockgate spa, knockgate fwknop 1 key and 16 keys, fwknopd under forged SPA floods); -1: --rounds; 0: none")
	fs.IntVar(&so.Attempts, "spa-attempts", 10, "valid SPA packets sent during each forged flood")
	fs.IntVar(&so.FwknopdDispatch, "fwknopd-dispatch", 10000, "fwknopd's PCAP_DISPATCH_COUNT (Debian's default: 100)")
	fs.IntVar(&so.FwknopdSleep, "fwknopd-sleep", 1000, "fwknopd's PCAP_LOOP_SLEEP in µs (Debian's default: 100000)")
	fs.StringSliceVar(&gates, "gates", nil, "gates to run (default all): "+strings.Join(append(bench.GateNames(), bench.SPAGateNames()...), ", "))
	fs.StringVar(&out, "out", "bench-peers.png", "chart to write (PNG); empty: none")
	fs.BoolVar(&smoke, "smoke", false, "a seconds-long run that checks everything works: 1 round, short floods")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: bench-peers [FLAGS]   (as root)")
		fmt.Fprintln(stderr, "\nFloods knockgate, nftables and iptables-recent knock gates and two floors with SYNs;")
		fmt.Fprintln(stderr, "prints a table to stdout, progress to stderr, and draws a chart.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if smoke {
		o.Rounds, o.Duration, o.Warmup, o.Prime, o.MemFill = 1, 300*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond, 1000
		o.Churn, o.Gaps, o.UnderFlood, o.FloodRates = 100_000, []time.Duration{20 * time.Millisecond}, 5, []float64{0}
		so.Rounds, so.Attempts = 1, 2
	}
	if so.Rounds < 0 {
		so.Rounds = o.Rounds
	}
	var err error
	if o.PeerNAPI, err = bench.ParsePeerNAPI(peerNAPI); err != nil {
		return err
	}
	if o.Generator, err = bench.ParseGeneratorKind(gen); err != nil {
		return err
	}
	if o.SenderCPU < 0 && o.CPU >= 0 {
		o.SenderCPU = otherCPU(o.CPU)
	}
	if o.Rounds < 1 || o.Duration <= 0 || o.Warmup < 0 || o.NAPIDefer < 0 || o.CPU < 0 || o.CPU >= runtime.NumCPU() ||
		o.SenderCPU < 0 || o.SenderCPU >= runtime.NumCPU() || o.Spoofed < 2 || o.Batch < 1 || o.Batch > bench.MaxBatch {
		return errors.New("need --rounds ≥ 1, --duration > 0, --warmup ≥ 0, --napi-defer ≥ 0, --spoofed ≥ 2, --batch 1-256 and an online --cpu and --sender-cpu")
	}
	var mainGates, spaGates []string
	for _, g := range gates {
		switch {
		case contains(bench.GateNames(), g):
			mainGates = append(mainGates, g)
		case contains(bench.SPAGateNames(), g):
			spaGates = append(spaGates, g)
		default:
			return fmt.Errorf("unknown gate %q (want %s)", g, strings.Join(append(bench.GateNames(), bench.SPAGateNames()...), ", "))
		}
	}
	o.Only = mainGates
	runMain := len(gates) == 0 || len(mainGates) > 0
	so.Only = spaGates
	if len(gates) > 0 && len(spaGates) == 0 {
		so.Rounds = 0
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces and loads XDP programs")
	}
	tools := []string{"ip", "nsenter", "nft", "iptables", "sysctl"}
	if so.Rounds > 0 {
		tools = append(tools, "fwknopd", "fwknop")
	}
	if o.PeerNAPI == bench.NAPIGRO {
		tools = append(tools, "ethtool")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	if out != "" {
		if _, err := exec.LookPath("gnuplot"); err != nil {
			return fmt.Errorf("needs gnuplot for the chart (apt-get install gnuplot-nox, or --out ''): %w", err)
		}
	}

	switch o.Knockgate {
	case inProcess:
		o.Knockgate = ""
	case "":
		dir, err := os.MkdirTemp("", "kgb-bin")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.Knockgate = filepath.Join(dir, "knockgate")
		build := exec.Command("go", "build", "-o", o.Knockgate, "github.com/knockgate/knockgate/cmd/knockgate")
		if b, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build knockgate: %w: %s", err, b)
		}
	}

	var bad []string
	if so.Rounds > 0 {
		// First: the shorter of the two, so its table is not lost to a
		// failure of the longer.
		spaRes, err := bench.RunSPA(o, so, bench.SPAGates(o, so))
		if err != nil {
			return err
		}
		spaRes.WriteTable(stdout)
		bad = append(bad, spaRes.Failed()...)
	}
	if !runMain {
		if len(bad) > 0 {
			return fmt.Errorf("errors: %s", strings.Join(bad, ", "))
		}
		return nil
	}
	res, err := bench.Run(o)
	if err != nil {
		return err
	}
	res.WriteTable(stdout)
	// Performance targets are reported, not enforced (a shared machine's
	// noise is not a failure); a broken run (a gate that handled no
	// frames, say) or a misbehaving gate is.
	for _, r := range res.Rows() {
		if len(r.Errors) > 0 || (!r.Floor && r.Passed != r.Rounds) {
			bad = append(bad, r.Gate+"/"+r.Flood)
		}
	}
	var errs []error
	if len(bad) > 0 {
		errs = append(errs, fmt.Errorf("errors or failed correctness checks: %s", strings.Join(bad, ", ")))
	}
	if out != "" {
		// Drawn even after errors (what ran is worth seeing), without
		// hiding them behind gnuplot's complaint about empty bars.
		if err := res.WriteChart(out); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(stdout, "\nchart: %s\n", out)
		}
	}
	return errors.Join(errs...)
}

func otherCPU(cpu int) int {
	for c := runtime.NumCPU() - 1; c >= 0; c-- {
		if c != cpu {
			return c
		}
	}
	return cpu
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
