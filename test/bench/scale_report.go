package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/knockgate/knockgate/loader"
)

// sample is gate's valid sample under flood in round.
func (res *ScaleResult) sample(gate, flood string, round int) (Sample, bool) {
	for _, s := range res.Samples {
		if s.Gate == gate && s.Flood == flood && s.Round == round && s.Err == nil {
			return s, true
		}
	}
	return Sample{}, false
}

// Above is gate's receiver CPU per packet less ref's under flood, per round
// in which both ran (minutes apart at most).
func (res *ScaleResult) Above(gate, ref, flood string) map[int]float64 {
	out := map[int]float64{}
	for r := 1; r <= res.Opts.Rounds; r++ {
		g, ok1 := res.sample(gate, flood, r)
		f, ok2 := res.sample(ref, flood, r)
		if ok1 && ok2 {
			out[r] = g.NsPerPacket - f.NsPerPacket
		}
	}
	return out
}

// ScaleRatio compares two per-packet costs over a run's rounds.
type ScaleRatio struct {
	Num, Den Stat // the two costs (ns/pkt), over rounds
	// PerRound is num ÷ den in each round that has both, where den is
	// above zero (a cost within noise of nothing has no ratio).
	PerRound Stat
	Medians  float64 // Num.Median ÷ Den.Median; NaN unless Den.Median > 0
	Diff     Stat    // num − den per round (ns/pkt)
	// Excess is num − max·den per round (den taken as zero when below
	// it: noise around a cost of nothing), for a bound max on the ratio:
	// at most zero where the bound holds.
	Excess Stat
}

func ratioOf(num, den map[int]float64, max float64) ScaleRatio {
	var n, d, r, diff, ex []float64
	for round, v := range num {
		w, ok := den[round]
		if !ok {
			continue
		}
		if w > 0 {
			r = append(r, v/w)
		}
		diff = append(diff, v-w)
		ex = append(ex, v-max*math.Max(w, 0))
	}
	for _, v := range num {
		n = append(n, v)
	}
	for _, v := range den {
		d = append(d, v)
	}
	s := ScaleRatio{Num: Summarise(n), Den: Summarise(d), PerRound: Summarise(r), Diff: Summarise(diff), Excess: Summarise(ex)}
	s.Medians = math.NaN()
	if s.Den.Median > 0 {
		s.Medians = s.Num.Median / s.Den.Median
	}
	return s
}

// Bound is one of the scale bounds and what this run measured.
type Bound struct {
	Goal  string
	Ratio ScaleRatio
	Max   float64 // the bound on the ratio (0: "the same within noise")
}

// sameWithin is how far apart two costs may be and still count as the
// same: 5 ns/pkt, or a tenth of the smaller, what these runs vary by at
// best.
func sameWithin(den float64) float64 { return math.Max(5, 0.1*den) }

// Met: for a bound on the ratio, num ≤ max·den in the median round (the
// median of num − max·den per round at most zero; the same as the median
// ratio within the bound while den is above zero, and still defined when
// the single-source cost is within noise of nothing); for "the same within
// noise", the median difference within sameWithin.
func (b Bound) Met() bool {
	if b.Ratio.Diff.N == 0 {
		return false
	}
	if b.Max == 0 {
		return math.Abs(b.Ratio.Diff.Median) <= sameWithin(b.Ratio.Den.Median)
	}
	return b.Ratio.Excess.Median <= 0
}

// says is met when the bound is met, not otherwise.
func (b Bound) says(met, not string) string {
	if b.Met() {
		return met
	}
	return not
}

// Bounds are the three scale bounds, each per packet above the
// XDP_DROP floor of the same round and flood; the first for both sizes of
// gate.
func (res *ScaleResult) Bounds() []Bound {
	n := res.Opts.Sources
	above := func(gate, flood string) map[int]float64 { return res.Above(gate, nameFloor, flood) }
	return []Bound{
		{Goal: fmt.Sprintf("a stranger's SYN flood from %d spoofed sources ≤ 1.5× one from a single source (%s)", n, nameScaleBare),
			Ratio: ratioOf(above(nameScaleBare, floodStrangerN), above(nameScaleBare, floodStranger1), 1.5), Max: 1.5},
		{Goal: fmt.Sprintf("the same at the default --max-sources (%s)", nameScaleSmall),
			Ratio: ratioOf(above(nameScaleSmall, floodStrangerN), above(nameScaleSmall, floodStranger1), 1.5), Max: 1.5},
		{Goal: fmt.Sprintf("ACKs from %d granted sources over %d services ≤ 1.5× from one granted source", n, res.Opts.Services),
			Ratio: ratioOf(above(nameScaleGranted, floodGrantedN), above(nameScaleGranted, floodGranted1), 1.5), Max: 1.5},
		{Goal: fmt.Sprintf("a stranger's SYN flood from %d sources costs the same with %d grants in the map as with none (%s and %s, made before and after)",
			n, n, nameScaleBare, nameScaleBareAfter),
			Ratio: ratioOf(above(nameScaleGranted, floodStrangerN),
				roundMeans(above(nameScaleBare, floodStrangerN), above(nameScaleBareAfter, floodStrangerN)), 1)},
	}
}

// roundMeans is the mean of a and b in each round both have.
func roundMeans(a, b map[int]float64) map[int]float64 {
	m := map[int]float64{}
	for r, v := range a {
		if w, ok := b[r]; ok {
			m[r] = (v + w) / 2
		}
	}
	return m
}

// WriteTable prints the run: every gate under every flood, the cost above
// the floor, the bounds, and what a packet reads.
func (res *ScaleResult) WriteTable(w io.Writer) {
	o := res.Opts
	fmt.Fprintf(w, "\nknockgate at scale: floods from one source and from %d, per packet above an XDP_DROP gate\n", o.Sources)
	fmt.Fprintf(w, "machine: %s; load avg %s (1 min) at each round's start and at the end\n", Machine(), strings.Join(res.Load, ", "))
	fmt.Fprintf(w, "%d round(s), configurations shuffled per round, each in fresh namespaces; flood %s after %s warm-up;\n",
		o.Rounds, o.Duration, o.Warmup)
	fmt.Fprintf(w, "generator: %s, %d frames per flush, on CPU %d;\n", res.Generator, o.Batch, o.SenderCPU)
	fmt.Fprintf(w, "receiver: the threaded NAPI of %s pinned to CPU %d", RxIface, o.CPU)
	if o.NAPIDefer > 0 {
		fmt.Fprintf(w, ", once idle polling again after %s", o.NAPIDefer)
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintf(w, "knockgate: loaded in this process with --max-sources %d and %d services (service k protects TCP %d+k and\n",
		o.MaxSources, o.Services, ScalePort)
	fmt.Fprintf(w, "knocks its own two steps), flows on; attached native to %s in each topology. %s: no grants;\n", RxIface, nameScaleBare)
	fmt.Fprintf(w, "%s: no grants, at the default --max-sources (%d), its maps 16 times smaller;\n", nameScaleSmall, loader.DefaultMaxSources)
	fmt.Fprintf(w, "%s: %d grants made through maps.Set.Grant (took %s), source %s+i granted service i mod %d,\n",
		nameScaleGranted, o.Sources, res.GrantsTook.Round(time.Second), grantedBase, o.Services)
	fmt.Fprintf(w, "  in a scattered order (source j × %d mod %d the j-th), not the floods' order.\n", Stride(o.Sources), o.Sources)
	fmt.Fprintf(w, "%s: no grants, made after %s (%s before it): a stranger's cost without grants is the mean of both,\n",
		nameScaleBareAfter, nameScaleGranted, nameScaleBare)
	fmt.Fprintln(w, "  as two gates made at different times differ by tens of ns a packet either way, with grants or without (their maps' memory).")
	fmt.Fprintf(w, "no filter: the kernel alone (NAPI from %s), for the granted floods, which knockgate passes on to the stack.\n",
		o.PeerNAPI.describe())
	for _, f := range o.ScaleFloods() {
		fmt.Fprintf(w, "  %-10s  %s\n", f.Name, f.Describe)
	}
	fmt.Fprintf(w, "took %s\n\n", res.Took.Round(time.Second))

	tw := &table{}
	tw.add("gate", "flood", "rx ns/pkt (min–max)", "above floor (min–max)", "frames/wake", "handled Mpps (min–max)", "sent Mpps", "ring full", "gate saw", "rounds")
	for _, g := range scaleGates {
		for _, f := range o.ScaleFloods() {
			if !scaleRuns(g, f) {
				continue
			}
			var ns, wake, pps, sent, drop []float64
			seen, ran, ok := math.Inf(1), 0, 0
			for _, s := range res.Samples {
				if s.Gate != g || s.Flood != f.Name {
					continue
				}
				ran++
				if s.Err != nil {
					continue
				}
				ok++
				ns = append(ns, s.NsPerPacket)
				wake = append(wake, s.FramesPerRun)
				pps = append(pps, s.HandledPPS/1e6)
				sent = append(sent, s.SentPPS/1e6)
				if all := s.Total + s.RingDropped; all > 0 {
					drop = append(drop, float64(s.RingDropped)/float64(all))
				}
				if s.Total > 0 {
					seen = min(seen, float64(s.Seen)/float64(s.Total))
				}
			}
			above := "floor"
			if g != nameFloor {
				above = fmtStatSigned(Summarise(values(res.Above(g, nameFloor, f.Name))))
			}
			seenS := "—"
			if !math.IsInf(seen, 1) {
				seenS = fmt.Sprintf("%.1f%%", 100*seen)
			}
			tw.add(g, f.Name, fmtStat(Summarise(ns), 1), above, fmtMedian(wake, 0), fmtStat(Summarise(pps), 3),
				fmtMedian(sent, 2), fmtMedianPct(drop), seenS, fmt.Sprintf("%d/%d", ok, ran))
		}
	}
	tw.write(w)
	fmt.Fprintln(w, "  rx ns/pkt: the receiving NAPI thread's CPU time per frame it handled; above floor: less the XDP_DROP")
	fmt.Fprintln(w, "  floor's under the same flood in the same round; gate saw: frames the gate gave the verdict its flood")
	fmt.Fprintln(w, "  should get (knockgate: passed as granted, or dropped as protected; no filter: TCP segments received)")
	fmt.Fprintln(w, "  ÷ frames handled, over the whole flood (lowest round); rounds: rounds measured of those run.")
	for _, s := range res.Samples {
		if s.Err != nil {
			fmt.Fprintf(w, "  %s, %s flood: round %d: %v\n", s.Gate, s.Flood, s.Round, s.Err)
		}
	}

	fmt.Fprintln(w, "\nthe gate's own work on granted traffic (less the kernel alone, no filter, same flood and round):")
	for _, f := range []string{floodGranted1, floodGrantedN} {
		fmt.Fprintf(w, "  %-10s  %s ns/pkt\n", f, fmtStatSigned(Summarise(values(res.Above(nameScaleGranted, nameNoFilter, f)))))
	}
	own := ratioOf(res.Above(nameScaleGranted, nameNoFilter, floodGrantedN), res.Above(nameScaleGranted, nameNoFilter, floodGranted1), 1)
	fmt.Fprintf(w, "  %d sources ÷ one: %s\n", o.Sources, fmtRatio(own))

	fmt.Fprintf(w, "\nbounds (per packet above the XDP_DROP floor of the same flood and round):\n")
	for _, b := range res.Bounds() {
		status := b.says("met", "NOT MET")
		r := b.Ratio
		if b.Max == 0 {
			fmt.Fprintf(w, "  %-8s %s: %+.1f ns/pkt (per round %+.1f to %+.1f; the same: within %.1f); %.1f vs %.1f ns above the floor, %s\n",
				status, b.Goal, r.Diff.Median, r.Diff.Min, r.Diff.Max, sameWithin(r.Den.Median), r.Num.Median, r.Den.Median, fmtRatio(r))
			continue
		}
		fmt.Fprintf(w, "  %-8s %s: %.1f vs %.1f ns above the floor, %s; many − %.1f × one: %+.1f ns (per round %+.1f to %+.1f)\n",
			status, b.Goal, r.Num.Median, r.Den.Median, fmtRatio(r), b.Max, r.Excess.Median, r.Excess.Min, r.Excess.Max)
	}
	fmt.Fprintln(w, "  ratios: the median of the per-round ratios (their range; rounds whose single-source cost was above zero),")
	fmt.Fprintln(w, "  and the ratio of the medians; a bound holds when many − 1.5 × one is at most zero in the median round.")

	res.writeProbes(w)

	m := res.Maps
	fmt.Fprintf(w, "\nwhat a packet reads beyond the configuration's line (--max-sources %d):\n", o.MaxSources)
	fmt.Fprintf(w, "  a stranger's SYN: 4 bytes of knock_tags (its set; %s, one byte a knock slot) and one word of hint bits\n", fmtBytes(m.KnockTags))
	fmt.Fprintf(w, "    (the active half: %d words, %s); each at a place hashed from the source: a line each;\n", m.HintWords, fmtBytes(m.HintBits))
	fmt.Fprintln(w, "    with the word's 4 bits of the source all set (other grants set them), a lookup in grants besides.")
	fmt.Fprintf(w, "  a granted source's ACK: 4 bytes of flow_tags (%s), the hint word, one line of grant_cache (its set of 4\n", fmtBytes(m.FlowTags))
	fmt.Fprintf(w, "    entries; %d sets, %s) and the clock; the grant itself (a hash lookup in grants, %d entries, %s)\n",
		m.CacheSets, fmtBytes(m.GrantCache), m.GrantSlots, fmtBytes(m.Grants))
	fmt.Fprintln(w, "    only when the cache has no entry for it (its first packet, or one forgotten).")
	fmt.Fprintf(w, "memory per grant: grants map %.1f B per --max-sources (memlock ÷ entries, as loader's TestMaxSourcesLimits),\n", m.GrantsPer)
	fmt.Fprintf(w, "  %.1f B per added entry (the map made at two sizes); the hint bitmap %.1f B and the grant cache %.1f B\n", m.PerGrant, m.HintsPer, m.CachePer)
	fmt.Fprintln(w, "  more per --max-sources.")
}

// ProbeBounds hold the memory floors (Probe) to the stranger's SYN bound
// and the granted ACKs' bound: a probe's many-source flood against 1.5 × knockgate's
// single-source one (without grants for the strangers' probes, with them
// for the granted one), each above the XDP_DROP floor of its round. Where a
// probe, which reads one line and decides nothing, is over the bound, no
// design reading a table of that size per packet meets it here.
func (res *ScaleResult) ProbeBounds() []Bound {
	above := func(gate, flood string) map[int]float64 { return res.Above(gate, nameFloor, flood) }
	var out []Bound
	for _, p := range scaleProbes {
		gate, many, one, what := nameScaleBare, floodStrangerN, floodStranger1, "a stranger's SYN"
		if p.granted {
			gate, many, one, what = nameScaleGranted, floodGrantedN, floodGranted1, "a granted ACK"
		}
		reads := "one line of " + fmtBytes(probeBytes(res.Opts.MaxSources, p.perSource))
		if p.filterPerSource != 0 {
			reads = fmt.Sprintf("a word of %s, then %s", fmtBytes(probeBytes(res.Opts.MaxSources, p.filterPerSource)), reads)
		}
		out = append(out, Bound{
			Goal: fmt.Sprintf("%s: %s (%s) %s, %d sources, ≤ 1.5× %s's from one", p.name,
				reads, p.what, what, res.Opts.Sources, gate),
			Ratio: ratioOf(above(p.name, many), above(gate, one), 1.5), Max: 1.5})
	}
	return out
}

// writeProbes prints the memory floors against the bounds they bear on.
func (res *ScaleResult) writeProbes(w io.Writer) {
	fmt.Fprintln(w, "\nthe memory floors: gates that parse, read one line of a table at a place hashed from the source (after")
	fmt.Fprintln(w, "a word of a filter, for one), and decide nothing (the strangers' dropping, the granted one's passing); over")
	fmt.Fprintln(w, "a bound, no design that reads tables of those sizes per packet meets it on this machine:")
	for _, b := range res.ProbeBounds() {
		status := b.says("within", "over")
		r := b.Ratio
		fmt.Fprintf(w, "  %-7s %s: %.1f vs %.1f ns above the floor; many − %.1f × one: %+.1f ns (per round %+.1f to %+.1f)\n",
			status, b.Goal, r.Num.Median, r.Den.Median, b.Max, r.Excess.Median, r.Excess.Min, r.Excess.Max)
	}
}

// fmtRatio says a ratio: the median per round (range, rounds), and the
// medians' ratio.
func fmtRatio(r ScaleRatio) string {
	if r.PerRound.N == 0 {
		return fmt.Sprintf("no ratio (the one cost %.1f ns/pkt: nothing above the floor)", r.Den.Median)
	}
	s := fmt.Sprintf("%.2f× (per round %.2f–%.2f, %d rounds)", r.PerRound.Median, r.PerRound.Min, r.PerRound.Max, r.PerRound.N)
	if !math.IsNaN(r.Medians) {
		s += fmt.Sprintf(", medians %.2f×", r.Medians)
	}
	return s
}

func values(m map[int]float64) []float64 {
	var out []float64
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

func fmtStatSigned(s Stat) string {
	if s.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%+.1f (%+.1f to %+.1f)", s.Median, s.Min, s.Max)
}

func fmtMedian(v []float64, prec int) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.*f", prec, Summarise(v).Median)
}

func fmtMedianPct(v []float64) string {
	if len(v) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", 100*Summarise(v).Median)
}

func fmtBytes(b uint64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

// Failed lists what went wrong in the run: a configuration that never
// measured in any round (a broken gate or path), or a knockgate that gave
// the wrong verdicts.
func (res *ScaleResult) Failed() []string {
	var bad []string
	for _, s := range res.Samples {
		if s.Err != nil {
			bad = append(bad, fmt.Sprintf("%s/%s round %d", s.Gate, s.Flood, s.Round))
		}
	}
	return bad
}
