// Command bench-scale floods knockgate from one source and from many (10⁶
// by default), with bench-peers' topology, generator and receiver-CPU
// measurement, and prints each per packet above an XDP_DROP gate in the same
// run: a stranger's SYN flood with and without 10⁶ grants in the map, and
// ACKs from granted sources spread over 16 services. Run it as root:
//
//	go run ./test/bench/cmd/bench-scale [--smoke]
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/test/bench"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	o := bench.ScaleOptions{Options: bench.Options{Log: stderr, PeerNAPI: bench.NAPIXDPPass}}
	var (
		smoke bool
		gen   string
	)
	fs := pflag.NewFlagSet("bench-scale", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Rounds, "rounds", 5, "rounds; each runs every gate under every flood once, in shuffled order")
	fs.DurationVar(&o.Duration, "duration", 2*time.Second, "measured flood time per configuration")
	fs.DurationVar(&o.Warmup, "warmup", 500*time.Millisecond, "flood time before the measured window")
	fs.IntVar(&o.CPU, "cpu", runtime.NumCPU()-1, "the receiver's core: its NAPI thread is pinned there")
	fs.IntVar(&o.SenderCPU, "sender-cpu", -1, "the sending thread's core; -1: another than --cpu (the same on a 1-CPU machine)")
	fs.DurationVar(&o.NAPIDefer, "napi-defer", 200*time.Microsecond,
		"the receiver's NAPI, once idle, polls again after this long instead of at the next frame (0: at once)")
	fs.StringVar(&gen, "generator", string(bench.GenAuto),
		"the flood's back end: live (BPF_PROG_RUN live frames), afpacket (AF_PACKET sendmmsg), or auto (live if the kernel runs it)")
	fs.Uint32Var(&o.Batch, "batch", bench.MaxBatch, "frames the generator flushes to the veth at once (1-256)")
	fs.Uint32Var(&o.Sources, "sources", 1_000_000, "distinct sources of the many-source floods, and grants made")
	fs.Uint32Var(&o.MaxSources, "max-sources", 1<<20, "the knockgate gates' --max-sources (at least --sources)")
	fs.IntVar(&o.Services, "services", 16, "services of the knockgate gates, default included (1-32)")
	fs.BoolVar(&smoke, "smoke", false, "a seconds-long run that checks everything works: 1 round, short floods, 4096 sources, --max-sources 8192")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: bench-scale [FLAGS]   (as root)")
		fmt.Fprintln(stderr, "\nFloods knockgate from one source and from many, beside an XDP_DROP floor; prints a table to stdout,")
		fmt.Fprintln(stderr, "progress to stderr.\n\nFlags:")
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
		o.Rounds, o.Duration, o.Warmup = 1, 300*time.Millisecond, 100*time.Millisecond
		o.Sources, o.MaxSources = 4096, 8192
	}
	var err error
	if o.Generator, err = bench.ParseGeneratorKind(gen); err != nil {
		return err
	}
	if o.SenderCPU < 0 && o.CPU >= 0 {
		o.SenderCPU = otherCPU(o.CPU)
	}
	if o.Rounds < 1 || o.Duration <= 0 || o.Warmup < 0 || o.NAPIDefer < 0 || o.CPU < 0 || o.CPU >= runtime.NumCPU() ||
		o.SenderCPU < 0 || o.SenderCPU >= runtime.NumCPU() || o.Batch < 1 || o.Batch > bench.MaxBatch {
		return errors.New("need --rounds ≥ 1, --duration > 0, --warmup ≥ 0, --napi-defer ≥ 0, --batch 1-256 and an online --cpu and --sender-cpu")
	}
	if o.Sources < 2 || o.MaxSources < o.Sources || o.Services < 1 || o.Services > 32 {
		return errors.New("need --sources ≥ 2, --max-sources ≥ --sources and --services 1-32")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces and loads XDP programs")
	}
	for _, tool := range []string{"ip", "nsenter", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	res, err := bench.RunScale(o)
	if err != nil {
		return err
	}
	res.WriteTable(stdout)
	// The bounds are reported, not enforced (a shared machine's noise is
	// not a failure); a configuration that could not be measured, or a
	// gate that gave a flood's frames the wrong verdict, is.
	if bad := res.Failed(); len(bad) > 0 {
		return fmt.Errorf("errors: %s", strings.Join(bad, ", "))
	}
	return nil
}

func otherCPU(cpu int) int {
	for c := runtime.NumCPU() - 1; c >= 0; c-- {
		if c != cpu {
			return c
		}
	}
	return cpu
}
