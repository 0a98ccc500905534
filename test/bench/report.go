package bench

import (
	"bytes"
	"fmt"
	"github.com/knockgate/knockgate/bpf"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Stat is the median of a set of measurements with its range.
type Stat struct {
	Median, Min, Max float64
	N                int
}

// Summarise returns the median, min and max of v (zero Stat when empty).
func Summarise(v []float64) Stat {
	if len(v) == 0 {
		return Stat{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of d.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Row summarises one gate under one flood over all rounds.
type Row struct {
	Gate, Flood  string
	Floor        bool
	Handled      Stat // Mpps
	NsPerPacket  Stat
	Sent         Stat // Mpps
	FramesPerRun Stat
	RxShare      Stat    // share of the core the receiver's thread used
	RingDropped  float64 // share of frames refused by the full ring (median)
	SeenShare    float64 // gate count / frames handled over whole floods (min over rounds)
	Rounds       int     // rounds run
	Passed       int     // rounds whose correctness check passed (knock gates)
	Unauthorised int     // unauthorised connections accepted, all rounds
	// Knocked of KnockedOf knocked clients got in (less than all only after
	// a churn: see Check.LockedOut).
	Knocked, KnockedOf int
	Errors             []string
}

// Rows summarises res in table order: gates, then floods.
func (res *Result) Rows() []Row {
	var rows []Row
	for _, g := range res.Opts.Gates() {
		for _, f := range res.Opts.Floods() {
			if !runsFlood(g, f) {
				continue // never run: no row
			}
			r := Row{Gate: g.Name(), Flood: f.Name, Floor: g.Floor(), SeenShare: math.Inf(1)}
			var pps, ns, sent, drop, wake, share []float64
			for _, s := range res.Samples {
				if s.Gate != r.Gate || s.Flood != r.Flood {
					continue
				}
				r.Rounds++
				if s.Check != nil {
					r.Unauthorised += s.Check.Unauthorised()
					r.Knocked += s.Check.Knocked
					r.KnockedOf += s.Check.KnockedOf
					if s.Check.OK() {
						r.Passed++
					}
				}
				if s.Err != nil {
					r.Errors = append(r.Errors, fmt.Sprintf("round %d: %v", s.Round, s.Err))
					continue
				}
				if !s.Valid() {
					r.Errors = append(r.Errors, fmt.Sprintf("round %d: %s", s.Round, strings.Join(s.Check.Failures, "; ")))
					continue
				}
				pps = append(pps, s.HandledPPS/1e6)
				ns = append(ns, s.NsPerPacket)
				sent = append(sent, s.SentPPS/1e6)
				wake = append(wake, s.FramesPerRun)
				share = append(share, s.HandledPPS*s.NsPerPacket/1e9)
				if all := s.Total + s.RingDropped; all > 0 {
					drop = append(drop, float64(s.RingDropped)/float64(all))
				}
				if s.Total > 0 {
					r.SeenShare = min(r.SeenShare, float64(s.Seen)/float64(s.Total))
				}
			}
			r.Handled, r.NsPerPacket, r.Sent = Summarise(pps), Summarise(ns), Summarise(sent)
			r.FramesPerRun, r.RxShare = Summarise(wake), Summarise(share)
			r.RingDropped = Summarise(drop).Median
			if math.IsInf(r.SeenShare, 1) {
				r.SeenShare = math.NaN()
			}
			rows = append(rows, r)
		}
	}
	return rows
}

func (res *Result) row(gate, flood string) (Row, bool) {
	for _, r := range res.Rows() {
		if r.Gate == gate && r.Flood == flood && r.Handled.N > 0 {
			return r, true
		}
	}
	return Row{}, false
}

// Latencies pools the knock-to-open times of gate over all rounds.
func (res *Result) Latencies(gate string) []time.Duration {
	var out []time.Duration
	for _, s := range res.Samples {
		if s.Gate == gate {
			out = append(out, s.Latency...)
		}
	}
	return out
}

// UnderFloodShare sums, over all rounds, how many of gate's clients that
// knocked gap apart during a first-knock flood of rate got in, of how many.
func (res *Result) UnderFloodShare(gate string, gap time.Duration, rate float64) (in, of int) {
	for _, s := range res.Samples {
		if s.Gate != gate || s.Err != nil {
			continue
		}
		for _, r := range s.UnderFlood {
			if r.Gap == gap && r.Rate == rate {
				in += r.In
				of += r.Of
			}
		}
	}
	return in, of
}

// AboveFloor is knockgate's receiver cost minus the XDP_DROP floor's, per
// round (the two ran in the same round, minutes apart at most), under flood.
func (res *Result) AboveFloor(flood string) Stat {
	kg := map[int]float64{}
	floor := map[int]float64{}
	for _, s := range res.Samples {
		if s.Flood != flood || !s.Valid() {
			continue
		}
		switch s.Gate {
		case (&Knockgate{}).Name():
			kg[s.Round] = s.NsPerPacket
		case (&XDPDrop{}).Name():
			floor[s.Round] = s.NsPerPacket
		}
	}
	var d []float64
	for r, v := range kg {
		if f, ok := floor[r]; ok {
			d = append(d, v-f)
		}
	}
	return Summarise(d)
}

// Machine describes where the run happened, for the report.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d CPUs, Linux %s", model, runtime.NumCPU(), kernel)
}

// LoadAvg is the 1-minute load average, to say how busy the machine was.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// Target is one goal of the benchmark and whether this run met it.
type Target struct {
	Goal     string
	Measured string
	Met      bool
	Known    bool // false: not measured in this run
}

const (
	nameNoFilter  = "no filter"
	nameKnockgate = "knockgate"
	nameNft       = "nftables"
	nameIpt       = "iptables recent"
	nameFloor     = "XDP_DROP floor"
	// The protect-all gates: every port closed.
	nameKnockgateAll = "knockgate all"
	nameNftAll       = "nftables ct"
	nameIptAll       = "iptables ct"
)

// Targets checks the run against the goals.
func (res *Result) Targets() []Target {
	var out []Target
	ratioOf := func(gate, flood, peer string, want float64) {
		t := Target{Goal: fmt.Sprintf("%s ≥ %g× less receiver CPU per packet than %s, %s flood", gate, want, peer, flood)}
		kg, ok1 := res.row(gate, flood)
		p, ok2 := res.row(peer, flood)
		if ok1 && ok2 {
			r := p.NsPerPacket.Median / kg.NsPerPacket.Median
			t.Known, t.Met = true, r >= want
			t.Measured = fmt.Sprintf("%.2f× (%.1f vs %.1f ns/pkt; packets/s handled ratio %.2f×)",
				r, kg.NsPerPacket.Median, p.NsPerPacket.Median, kg.Handled.Median/p.Handled.Median)
		}
		out = append(out, t)
	}
	ratio := func(flood, peer string, want float64) { ratioOf(nameKnockgate, flood, peer, want) }
	ratio("single", nameNft, 5)
	ratio("single", nameIpt, 6)
	ratio("spoofed", nameNft, 4)
	ratio("spoofed", nameIpt, 4)
	ratio("ack", nameNft, 4)
	ratio("ack", nameIpt, 4)
	for _, f := range []string{"spoofed", "ack"} {
		ratioOf(nameKnockgateAll, f, nameNftAll, 4)
		ratioOf(nameKnockgateAll, f, nameIptAll, 4)
	}
	for _, f := range res.Opts.Floods() {
		t := Target{Goal: fmt.Sprintf("knockgate ≤ 25 ns/pkt above the XDP_DROP floor, %s flood", f.Name)}
		if st := res.AboveFloor(f.Name); st.N > 0 {
			t.Known, t.Met = true, st.Median <= 25
			t.Measured = fmt.Sprintf("%+.1f ns (per-round %+.1f to %+.1f)", st.Median, st.Min, st.Max)
		}
		out = append(out, t)
	}
	for _, rate := range res.Opts.FloodRates {
		for _, gap := range res.Opts.Gaps {
			t := Target{Goal: fmt.Sprintf("knockgate lets clients in under a %s first-knock flood at least as often as %s, %s between knocks",
				rateName(rate), nameBase, gap)}
			in, of := res.UnderFloodShare(nameKnockgate, gap, rate)
			bin, bof := res.UnderFloodShare(nameBase, gap, rate)
			if of > 0 && bof > 0 {
				t.Known = true
				t.Met = float64(in)/float64(of) >= float64(bin)/float64(bof)
				t.Measured = fmt.Sprintf("%d/%d vs %d/%d", in, of, bin, bof)
			}
			out = append(out, t)
		}
	}
	lat := res.Latencies(nameKnockgate)
	t := Target{Goal: "knock-to-open p99 < 2 ms (knockgate)"}
	if len(lat) > 0 {
		p99 := Percentile(lat, 99)
		t.Known, t.Met = true, p99 < 2*time.Millisecond
		t.Measured = fmt.Sprintf("p99 %s over %d sources", fmtDur(p99), len(lat))
	}
	out = append(out, t)
	t = Target{Goal: "zero unauthorised connections accepted (knockgate)"}
	checks, unauth := 0, 0
	for _, s := range res.Samples {
		if s.Gate == nameKnockgate && s.Check != nil {
			checks++
			unauth += s.Check.Unauthorised()
		}
	}
	if checks > 0 {
		t.Known, t.Met = true, unauth == 0
		t.Measured = fmt.Sprintf("%d accepted over %d checks", unauth, checks)
	}
	out = append(out, t)
	t = Target{Goal: "≤ 96 bytes of map memory per tracked source (knockgate)"}
	if m := res.Memory; m != nil {
		t.Known, t.Met = true, m.PerSource() <= 96
		reserved, _ := m.Reserved()
		t.Measured = fmt.Sprintf("%.2f B per source tracked; %.2f B reserved per --max-sources", m.PerSource(), reserved)
	}
	out = append(out, t)
	return out
}

// rateName names a flood rate: "full rate", or "1.0 Mpps".
func rateName(rate float64) string {
	if rate == 0 {
		return "full rate"
	}
	return fmt.Sprintf("%.1f Mpps", rate/1e6)
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func fmtStat(s Stat, prec int) string {
	if s.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, s.Median, prec, s.Min, prec, s.Max)
}

// WriteTable prints the report.
func (res *Result) WriteTable(w io.Writer) {
	o := res.Opts
	fmt.Fprintf(w, "\nknockgate vs the knock gates users pick instead, under a SYN flood to port %d\n", ProtectedPort)
	fmt.Fprintf(w, "machine: %s; load avg %s at the end\n", Machine(), LoadAvg())
	fmt.Fprintf(w, "%d round(s), configurations shuffled per round, each in fresh namespaces; flood %s after %s warm-up;\n",
		o.Rounds, o.Duration, o.Warmup)
	fmt.Fprintf(w, "generator: %s, %d frames per flush, on CPU %d;\n", res.Generator, o.Batch, o.SenderCPU)
	fmt.Fprintf(w, "receiver: the threaded NAPI of %s pinned to CPU %d", RxIface, o.CPU)
	if o.NAPIDefer > 0 {
		fmt.Fprintf(w, ", once idle polling again after %s", o.NAPIDefer)
	}
	fmt.Fprintf(w, ".\nFloods of SYNs to port %d: single (one source), spoofed (%d sources), primed (the\n",
		ProtectedPort, o.Spoofed)
	fmt.Fprintf(w, "same %d sources after %s of SYNs from them to knock port %d: every one is known to the gates)",
		o.Spoofed, o.Prime, KnockPort1)
	if o.Churn > 0 {
		fmt.Fprintf(w, ",\nchurned (the spoofed flood after first knocks from %d other sources, which fill the gates' tables)", o.Churn)
	}
	fmt.Fprintf(w, ",\nack (ACKs to port %d from the spoofed flood's sources: no knock, no connection).\n", ProtectedPort)
	fmt.Fprintf(w, "gates without XDP get NAPI from %s; protected-port rules first, no conntrack, except the gates that\n", o.PeerNAPI.describe())
	fmt.Fprintf(w, "protect every port (%s: --protect all, its own flow table; %s, %s: conntrack's\n", nameKnockgateAll, nameNftAll, nameIptAll)
	fmt.Fprintln(w, "established,related accepted first, then the knock gate, then drop), which run the spoofed and ack floods.")
	fmt.Fprintf(w, "took %s\n\n", res.Took.Round(time.Second))

	tw := &table{}
	tw.add("gate", "flood", "rx ns/pkt (min–max)", "frames/wake", "handled Mpps (min–max)", "sent Mpps", "rx core", "ring full", "gate saw", "correct")
	for _, r := range res.Rows() {
		correct := "floor"
		if !r.Floor {
			correct = fmt.Sprintf("%d/%d", r.Passed, r.Rounds)
			if r.KnockedOf > 0 && r.Knocked < r.KnockedOf {
				correct += fmt.Sprintf(" (%d/%d knocked in)", r.Knocked, r.KnockedOf)
			}
			if r.Unauthorised > 0 {
				correct += fmt.Sprintf(" (%d let in)", r.Unauthorised)
			}
		}
		seen := "—"
		if !math.IsNaN(r.SeenShare) {
			seen = fmt.Sprintf("%.1f%%", 100*r.SeenShare)
		}
		drop := "—"
		if !math.IsNaN(r.RingDropped) {
			drop = fmt.Sprintf("%.0f%%", 100*r.RingDropped)
		}
		sent := "—"
		if r.Sent.N > 0 {
			sent = fmt.Sprintf("%.2f", r.Sent.Median)
		}
		wake := "—"
		if r.FramesPerRun.N > 0 {
			wake = fmt.Sprintf("%.0f", r.FramesPerRun.Median)
		}
		share := "—"
		if r.RxShare.N > 0 {
			share = fmt.Sprintf("%.0f%%", 100*r.RxShare.Median)
		}
		tw.add(r.Gate, r.Flood, fmtStat(r.NsPerPacket, 1), wake, fmtStat(r.Handled, 3), sent, share, drop, seen, correct)
	}
	tw.write(w)
	fmt.Fprintln(w, "  rx ns/pkt: the receiving veth's NAPI thread's CPU time (/proc/PID/schedstat) per frame it handled,")
	fmt.Fprintln(w, "  the figure to compare; frames/wake: frames per switch-in of that thread (each wake-up costs it time);")
	fmt.Fprintln(w, "  handled: frames it took per second, which a sender slower than the receiver bounds (sent: the")
	fmt.Fprintln(w, "  generator's rate); rx core: that thread's share of its core; ring full: frames lost to a full")
	fmt.Fprintln(w, "  veth ring; gate saw: the gate's own drop counter")
	fmt.Fprintln(w, "  (no filter: TCP segments received) ÷ frames handled, over the whole flood; correct: rounds whose")
	fmt.Fprintln(w, "  check passed, and after a churn how many knocked clients still got in (a gate whose tables the")
	fmt.Fprintln(w, "  churn filled keeps them out until entries time out).")
	var tracked []float64
	for _, s := range res.Samples {
		if s.Gate == nameKnockgate && s.Tracked >= 0 {
			tracked = append(tracked, float64(s.Tracked))
		}
	}
	if st := Summarise(tracked); st.N > 0 {
		fmt.Fprintf(w, "  primed: knockgate held knock progress for %.0f of the %d sources when the flood began (median).\n",
			st.Median, o.Spoofed)
	}
	for _, r := range res.Rows() {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s, %s flood: %s\n", r.Gate, r.Flood, e)
		}
	}

	if len(o.Gaps) > 0 {
		fmt.Fprintf(w, "\nknocks during a flood of spoofed first knocks (SYNs to %d from 2^20 sources, as fast as the sender goes):\n", KnockPort1)
		fmt.Fprintf(w, "clients that got in, of those that knocked %d then %d (gap between) and connected, all rounds:\n", KnockPort1, KnockPort2)
		tw := &table{}
		head := []string{"gate"}
		for _, rate := range o.FloodRates {
			for _, gap := range o.Gaps {
				head = append(head, rateName(rate)+", gap "+gap.String())
			}
		}
		tw.add(head...)
		for _, g := range o.Gates() {
			row := []string{g.Name()}
			any := false
			for _, rate := range o.FloodRates {
				for _, gap := range o.Gaps {
					in, of := res.UnderFloodShare(g.Name(), gap, rate)
					if of == 0 {
						row = append(row, "—")
						continue
					}
					any = true
					row = append(row, fmt.Sprintf("%d/%d (%.0f%%)", in, of, 100*float64(in)/float64(of)))
				}
			}
			if any {
				tw.add(row...)
			}
		}
		tw.write(w)
		fmt.Fprintln(w, "  no filter: the floor, connections the flooded link lets through without any gate.")
	}

	fmt.Fprintf(w, "\nheadline (medians; generator: %s):\n", res.Generator)
	for _, f := range o.Floods() {
		kg, ok := res.row(nameKnockgate, f.Name)
		if !ok {
			continue
		}
		for _, peer := range []string{nameBase, nameNft, nameIpt} {
			if p, ok := res.row(peer, f.Name); ok {
				fmt.Fprintf(w, "  %-8s flood: knockgate ÷ %-15s = %5.2f× less receiver CPU per packet (%5.2f× packets/s handled)\n",
					f.Name, peer, p.NsPerPacket.Median/kg.NsPerPacket.Median, kg.Handled.Median/p.Handled.Median)
			}
		}
		if st := res.AboveFloor(f.Name); st.N > 0 {
			fmt.Fprintf(w, "  %-8s flood: knockgate costs %+.1f ns/pkt above the XDP_DROP floor (per round %+.1f to %+.1f)\n",
				f.Name, st.Median, st.Min, st.Max)
		}
	}
	for _, f := range []string{"spoofed", "ack"} {
		kg, ok := res.row(nameKnockgateAll, f)
		if !ok {
			continue
		}
		for _, peer := range []string{nameNftAll, nameIptAll} {
			if p, ok := res.row(peer, f); ok {
				fmt.Fprintf(w, "  %-8s flood: %s ÷ %-11s = %5.2f× less receiver CPU per packet (%5.2f× packets/s handled)\n",
					f, nameKnockgateAll, peer, p.NsPerPacket.Median/kg.NsPerPacket.Median, kg.Handled.Median/p.Handled.Median)
			}
		}
	}

	fmt.Fprintln(w, "\nknock-to-open (knock 9000, knock 8000, connect to 22; fresh source each; no flood running):")
	for _, g := range o.Gates() {
		if lat := res.Latencies(g.Name()); len(lat) > 0 {
			fmt.Fprintf(w, "  %-16s p50 %7s  p99 %7s  max %7s  (%d sources)\n", g.Name(),
				fmtDur(Percentile(lat, 50)), fmtDur(Percentile(lat, 99)), fmtDur(Percentile(lat, 100)), len(lat))
		}
	}

	if m := res.Memory; m != nil {
		fmt.Fprintln(w, "\nknockgate map memory (memlock: the kernel's own accounting of each map):")
		for i, mm := range m.After {
			fmt.Fprintf(w, "  %-7s %7d slots: %8d B with %5d entries, %8d B with %5d", mm.Name, mm.MaxEntries,
				m.Before[i].Bytes, m.Before[i].Entries, mm.Bytes, mm.Entries)
			if per, ok := m.PerEntry[mm.Name]; ok {
				fmt.Fprintf(w, " (preallocated): %.2f B per entry + %.0f B per map", per, m.Fixed[mm.Name])
			} else {
				fmt.Fprintf(w, " (fixed size)")
			}
			fmt.Fprintln(w)
		}
		reserved, n := m.Reserved()
		fmt.Fprintf(w, "  a knocking source takes one slot of the knock table (%.2f B) and its tag byte, a granted one a grant entry (%.2f B);\n",
			m.PerEntry[bpf.KnockgateMapKnocks], m.PerEntry[bpf.KnockgateMapGrants])
		fmt.Fprintf(w, "  the maps together reserve %.2f B per source at --max-sources %d (per entry: from the same map made at 2× the size)\n",
			reserved, n)
	}

	fmt.Fprintln(w, "\ntargets:")
	for _, t := range res.Targets() {
		state := "NOT MEASURED"
		if t.Known {
			state = "met"
			if !t.Met {
				state = "NOT MET"
			}
		}
		fmt.Fprintf(w, "  %-12s %s: %s\n", state, t.Goal, t.Measured)
	}
}

func (p PeerNAPI) describe() string {
	switch p {
	case NAPIGRO:
		return "GRO on " + RxIface
	case NAPIXDPPass:
		return "an XDP_PASS program on " + RxIface + " (GRO off)"
	}
	return string(p)
}

// table aligns columns.
type table struct{ rows [][]string }

func (t *table) add(cols ...string) { t.rows = append(t.rows, cols) }

func (t *table) write(w io.Writer) {
	width := map[int]int{}
	for _, r := range t.rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-len([]rune(c))+2))
			}
		}
		fmt.Fprintln(w, "  "+strings.TrimRight(b.String(), " "))
	}
}

// WriteChart draws the result with gnuplot into path (PNG): for each gate,
// bars for every flood with min–max whiskers, receiver CPU per packet on the
// left and packets handled per second on the right.
func (res *Result) WriteChart(path string) error {
	gp, err := exec.LookPath("gnuplot")
	if err != nil {
		return fmt.Errorf("draw chart: gnuplot not found (apt-get install gnuplot-nox): %w", err)
	}
	dir, err := os.MkdirTemp("", "kgb-chart")
	if err != nil {
		return fmt.Errorf("draw chart: %w", err)
	}
	defer os.RemoveAll(dir)
	floods := res.Opts.Floods()
	var pps, ns bytes.Buffer
	for _, g := range res.Opts.Gates() {
		fmt.Fprintf(&pps, "%q", g.Name())
		fmt.Fprintf(&ns, "%q", g.Name())
		for _, f := range floods {
			r, ok := res.row(g.Name(), f.Name)
			if !ok {
				fmt.Fprint(&pps, " 0 0 0")
				fmt.Fprint(&ns, " 0 0 0")
				continue
			}
			fmt.Fprintf(&pps, " %g %g %g", r.Handled.Median, r.Handled.Min, r.Handled.Max)
			fmt.Fprintf(&ns, " %g %g %g", r.NsPerPacket.Median, r.NsPerPacket.Min, r.NsPerPacket.Max)
		}
		pps.WriteString("\n")
		ns.WriteString("\n")
	}
	ppsFile, nsFile := filepath.Join(dir, "pps.dat"), filepath.Join(dir, "ns.dat")
	if err := os.WriteFile(ppsFile, pps.Bytes(), 0o644); err != nil {
		return fmt.Errorf("draw chart: %w", err)
	}
	if err := os.WriteFile(nsFile, ns.Bytes(), 0o644); err != nil {
		return fmt.Errorf("draw chart: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("draw chart: %w", err)
	}
	var plots = func(file string) string {
		var p []string
		for i, f := range floods {
			c := 2 + 3*i
			using := fmt.Sprintf("%d:%d:%d", c, c+1, c+2)
			if i == 0 {
				using += ":xtic(1)"
			}
			src := "''"
			if i == 0 {
				src = fmt.Sprintf("%q", file)
			}
			p = append(p, fmt.Sprintf("%s using %s title %q", src, using, "flood "+f.Describe))
		}
		return strings.Join(p, ", ")
	}
	gen, _, _ := strings.Cut(res.Generator, " (") // "AF_PACKET", "live frames"
	script := fmt.Sprintf(`set terminal pngcairo size 1400,600 font "sans,11" noenhanced
set output %q
set multiplot layout 1,2 title %q
set style data histograms
set style histogram errorbars gap 1.5 lw 1.5
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside bottom center horizontal
set xtics nomirror rotate by 20 right
set title "receiver CPU per packet (ns, lower is better)"
set logscale y
set yrange [10:*]
plot %s
set title "packets handled per second (Mpps; at most the sender's rate)"
unset logscale y
set yrange [0:*]
plot %s
unset multiplot
`, abs, fmt.Sprintf("SYN flood to port %d, generator %s; median of %d rounds, whiskers min–max — %s",
		ProtectedPort, gen, res.Opts.Rounds, Machine()), plots(nsFile), plots(ppsFile))
	cmd := exec.Command(gp)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	return nil
}
