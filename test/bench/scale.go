package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/packet"
)

// The scale benchmark (bench-scale): the per-path benchmark (bpf/bench_test.go)
// times one packet again and again, so every map line it touches stays in
// cache; a real flood comes from many sources. Here the same topology,
// generator and receiver-CPU measurement as bench-peers compare, per packet
// above an XDP_DROP gate in the same round, floods from one source with
// floods from ScaleOptions.Sources distinct ones:
//
//   - strangers: SYNs to a protected port from spoofed sources, on a gate
//     with no grants and on one holding Sources grants (which the strangers
//     are none of);
//   - granted: ACKs to granted ports from granted sources, each source
//     granted one of the gate's services (source i: service i mod
//     Services) by maps.Set.Grant and sending to that service's port.
//
// The gates are loaded once per run in this process (grants take a while to
// make) and attached to each configuration's fresh topology.

// ScalePort is the first protected port of the scale gate: service k (0 is
// default) protects ScalePort + k, and its sequence is TCP scaleStep + 2k,
// scaleStep + 2k + 1 (steps no flood touches, so that every SYN still goes
// through the knock code, as on a gate with sequences).
const (
	ScalePort = 10000
	scaleStep = 20000
)

// The floods' sources, apart from each other and from every other flood's;
// the receiver has no route back to either.
var (
	grantedBase  = netip.MustParseAddr("10.0.0.1")
	strangerBase = netip.MustParseAddr("10.128.0.1")
)

// maxScaleSources keeps the granted floods' sources below the strangers'.
const maxScaleSources = 1 << 23

// ScaleOptions of a scale run: Options' rounds, timing, cores, NAPI and
// generator (its churn, priming, clients and gates are not used).
type ScaleOptions struct {
	Options
	Sources    uint32 // distinct sources of the many-source floods, and grants made
	MaxSources uint32 // the gates' --max-sources (at least Sources)
	Services   int    // services of the gates, default included
}

// Flood names of the scale benchmark.
const (
	floodStranger1 = "stranger 1"
	floodStrangerN = "stranger N"
	floodGranted1  = "granted 1"
	floodGrantedN  = "granted N"
)

// Gate names of the scale benchmark (the floors are bench-peers').
const (
	nameScaleBare      = "knockgate"
	nameScaleSmall     = "knockgate 65536"
	nameScaleGranted   = "knockgate+grants"
	nameScaleBareAfter = "knockgate after"
)

// scaleProbe is one memory floor of the scale benchmark (Probe): one line
// a packet of a table of perSource bytes per --max-sources, its size
// rounded up to a power of two.
type scaleProbe struct {
	name      string
	perSource uint64
	// filterPerSource, if not 0: a word of a filter of that many bytes per
	// --max-sources first.
	filterPerSource uint64
	// granted: the granted floods, passed; else the strangers', dropped.
	granted bool
	what    string // the design whose least it is
}

// scaleProbes: a stranger's least (a filter's one line, at 1 and 4 bytes a
// source) and a granted source's (one line of a grant table; a word of a
// filter of the hint bits' size, then that line).
var scaleProbes = []scaleProbe{
	{name: "one line, 1 B/src", perSource: 1, what: "a filter of 8 bits a source holding knock progress too"},
	{name: "one line, 4 B/src", perSource: 4, what: "the hint bits' size, knock tags in the same line"},
	{name: "one line, 64 B/src", perSource: 64, granted: true,
		what: "a set-associative grant table, 32-byte slots at half load"},
	// What knockgate's granted packet reads since the grant cache: the
	// hint word, then the cache's line.
	{name: "2 B/src, 64 B/src", filterPerSource: 2, perSource: 64, granted: true,
		what: "the hint bits' active half, then a line of the grant cache"},
}

func probeNamed(name string) (scaleProbe, bool) {
	for _, p := range scaleProbes {
		if p.name == name {
			return p, true
		}
	}
	return scaleProbe{}, false
}

// ScaleFloods are the floods of every round.
func (o ScaleOptions) ScaleFloods() []Flood {
	n := o.Sources
	return []Flood{
		{Name: floodStranger1, Sources: 1, Base: strangerBase, Port: ScalePort,
			Describe: "SYNs to a protected port from one spoofed source"},
		{Name: floodStrangerN, Sources: n, Base: strangerBase, Port: ScalePort,
			Describe: fmt.Sprintf("SYNs to a protected port from %d spoofed sources", n)},
		{Name: floodGranted1, Sources: 1, Base: grantedBase, Port: ScalePort, Flags: packet.ACK,
			Ports: uint16(o.Services), Describe: "ACKs from one granted source to its service's port"},
		{Name: floodGrantedN, Sources: n, Base: grantedBase, Port: ScalePort, Flags: packet.ACK,
			Ports:    uint16(o.Services),
			Describe: fmt.Sprintf("ACKs from %d granted sources, each to its service's port", n)},
	}
}

// scaleGranted: floods of granted sources (every frame should pass).
func scaleGranted(f Flood) bool { return f.Base == grantedBase }

// scaleServiceName is the name of the scale gate's service k.
func scaleServiceName(k int) string {
	if k == 0 {
		return policy.DefaultService
	}
	return fmt.Sprintf("svc%d", k)
}

// ScalePolicy is the scale gates' policy: services services, service k
// protecting TCP ScalePort+k with a two-step sequence of its own; flows on,
// as the command's defaults.
func ScalePolicy(services int) policy.Policy {
	p := policy.Policy{Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute}
	for k := range services {
		p.Services = append(p.Services, policy.Service{
			Name: scaleServiceName(k),
			Sequence: []policy.Port{{Num: uint16(scaleStep + 2*k), Proto: policy.TCP},
				{Num: uint16(scaleStep + 2*k + 1), Proto: policy.TCP}},
			StepTimeout: StepTimeout,
			Open:        Open,
			Protect:     []policy.Port{{Num: uint16(ScalePort + k), Proto: policy.TCP}},
		})
	}
	return p
}

// addrPlus is base + i (IPv4).
func addrPlus(base netip.Addr, i uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(base.AsSlice())+i)
	return netip.AddrFrom4(b)
}

// ScaleGate is a knockgate loaded in this process with the scale policy and,
// when made with grants, one grant for each of the granted floods' sources.
type ScaleGate struct {
	Objs   *loader.Objects
	Set    *maps.Set
	Grants uint32        // grants made
	Took   time.Duration // to make them
}

// NewScaleGate loads a gate of maxSources and services and grants n sources
// from grantedBase, source i the service i mod services, through
// maps.Set.Grant, checking that each is then in the grants map. The grants
// are made in a scattered order (Stride), not the floods' order: no gate's
// grants are made in the order their sources then send, and in that order
// the grants map's entries, which the kernel hands out one after another,
// would be read one after another too, which the prefetcher makes cheap.
func NewScaleGate(maxSources uint32, services int, n uint32) (*ScaleGate, error) {
	return newScaleGate(maxSources, services, n, nil)
}

// newScaleGate is NewScaleGate saying on log (if not nil) how the grants
// come along.
func newScaleGate(maxSources uint32, services int, n uint32, log io.Writer) (_ *ScaleGate, err error) {
	objs, err := loader.LoadTuned(loader.Sizes{MaxSources: maxSources}, loader.Tuning{})
	if err != nil {
		return nil, fmt.Errorf("load knockgate: %w", err)
	}
	g := &ScaleGate{Objs: objs, Set: maps.FromObjects(&objs.KnockgateMaps)}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	cfg := maps.FromPolicy(ptr(ScalePolicy(services)))
	if cfg.SlotKey, err = maps.NewSlotKey(); err != nil {
		return nil, err
	}
	if _, err := g.Set.WriteConfig(cfg); err != nil {
		return nil, fmt.Errorf("write configuration: %w", err)
	}
	start := time.Now()
	expires := maps.BootAfter(24 * time.Hour)
	// One worker a CPU: a grant of a service other than default reads the
	// configuration in force back (maps.Set.Grant resolves the name), some
	// 30 µs each.
	workers := uint32(runtime.NumCPU())
	errs := make([]error, workers)
	var made atomic.Uint32
	var wg sync.WaitGroup
	if log != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(30 * time.Second):
					done := made.Load()
					fmt.Fprintf(log, "  %d of %d grants made, %s\n", done, n, time.Since(start).Round(time.Second))
				}
			}
		}()
	}
	stride := Stride(n)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < n; j += workers {
				i := uint32(uint64(j) * uint64(stride) % uint64(n))
				if err := g.Set.Grant(addrPlus(grantedBase, i), scaleServiceName(int(i)%services), expires); err != nil {
					errs[w] = err
					return
				}
				made.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g.Took = time.Since(start)
	got, err := g.Set.CountGrants()
	if err != nil {
		return nil, err
	}
	if got != int(n) {
		return nil, fmt.Errorf("%d grants made, %d in the grants map (evicted?)", n, got)
	}
	g.Grants = n
	return g, nil
}

// Stride is the step of the order grants of n sources are made in: the
// j-th grant is of source j × Stride(n) mod n, a permutation (the stride is
// prime to n) whose neighbours are some 8000 sources apart.
func Stride(n uint32) uint32 {
	s := uint32(7919)
	for gcd(s, n) != 1 {
		s++
	}
	return s
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func ptr[T any](v T) *T { return &v }

// Close unloads the gate.
func (g *ScaleGate) Close() error { return g.Objs.Close() }

// Check runs the gate's program (BPF_PROG_TEST_RUN) on a few frames of each
// flood and reports the first that does not get the verdict it should: every
// stranger's SYN dropped; every granted source's ACK to its service's port
// passed when the gate holds its grant (dropped otherwise), and dropped on
// another service's port.
func (g *ScaleGate) Check(o ScaleOptions) error {
	var mac [6]byte
	run := func(src netip.Addr, port uint16, flags uint8, want uint32) error {
		frame := TCPFrame(mac[:], mac[:], src, rxAddr, 40000, port, flags)
		got, err := g.Objs.Knockgate.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s to port %d (flags %#x): verdict %d, want %d", src, port, flags, got, want)
		}
		return nil
	}
	const drop, pass = 1, 2
	rng := rand.New(rand.NewSource(1))
	picks := []uint32{0, 1, uint32(o.Services) - 1, o.Sources - 1}
	for range 16 {
		picks = append(picks, uint32(rng.Int63n(int64(o.Sources))))
	}
	for _, i := range picks {
		if i >= o.Sources {
			continue
		}
		svc := uint16(int(i) % o.Services)
		if err := run(addrPlus(strangerBase, i), ScalePort, packet.SYN, drop); err != nil {
			return err
		}
		want := uint32(drop)
		if i < g.Grants {
			want = pass
		}
		if err := run(addrPlus(grantedBase, i), ScalePort+svc, packet.ACK, want); err != nil {
			return err
		}
		other := ScalePort + (svc+1)%uint16(o.Services)
		if err := run(addrPlus(grantedBase, i), other, packet.ACK, drop); err != nil {
			return err
		}
	}
	return nil
}

// scaleKnockgate is a ScaleGate attached to one configuration's topology.
// Seen is the verdict counter its flood's packets should land in: passed
// (granted) for the granted floods, dropped (protected) for the strangers'.
type scaleKnockgate struct {
	name    string
	g       *ScaleGate
	verdict bpf.KnockgateVerdict
	link    link.Link
}

func (k *scaleKnockgate) Name() string { return k.name }
func (k *scaleKnockgate) Floor() bool  { return false }

func (k *scaleKnockgate) Setup(topo *Topology) error {
	return topo.RX.Do(func() (err error) {
		k.link, err = attachXDP(k.g.Objs.Knockgate)
		return err
	})
}

func (k *scaleKnockgate) Seen() (uint64, error) {
	c, err := k.g.Set.ReadCounters()
	return c.Verdict(k.verdict), err
}

func (k *scaleKnockgate) Close() error {
	if k.link == nil {
		return nil
	}
	err := k.link.Close()
	k.link = nil
	return err
}

// ScaleResult is a whole scale run.
type ScaleResult struct {
	Opts      ScaleOptions
	Samples   []Sample
	Started   time.Time
	Took      time.Duration
	Generator string
	// GrantsTook is how long the Sources grants took to make.
	GrantsTook time.Duration
	// Maps are the granted gate's maps a stranger's or a granted source's
	// packet reads, with their sizes (see ScaleMaps).
	Maps ScaleMaps
	// Load is the 1-minute load average at each round's start, and at the
	// end.
	Load []string
}

// scaleConfig is one gate under one flood.
type scaleConfig struct {
	gate  string
	flood Flood
}

// scaleGates are the scale benchmark's gates in table order, and which
// floods each runs: the XDP_DROP floor every one; no filter (the kernel
// alone) the granted floods, whose packets every gate but the floor passes
// on to the stack; knockgate with no grants, at MaxSources and at the
// default --max-sources, the strangers' floods; knockgate with Sources
// grants every one; knockgate after (no grants, made after the one with)
// the strangers' floods; the memory floors (Probe at MaxSources, scaleProbes)
// the floods of their kind: a stranger's probe the strangers' floods,
// dropping them, the granted one the granted floods, passing them.
var scaleGates = append([]string{nameFloor, nameNoFilter, nameScaleBare, nameScaleSmall, nameScaleGranted, nameScaleBareAfter},
	func() (names []string) {
		for _, p := range scaleProbes {
			names = append(names, p.name)
		}
		return names
	}()...)

func scaleRuns(gate string, f Flood) bool {
	switch gate {
	case nameNoFilter:
		return scaleGranted(f)
	case nameScaleBare, nameScaleSmall, nameScaleBareAfter:
		return !scaleGranted(f)
	}
	if p, ok := probeNamed(gate); ok {
		return p.granted == scaleGranted(f)
	}
	return true
}

// RunScale runs the scale benchmark: both knockgate gates are loaded (and
// the grants made) once, then every configuration runs once per round in a
// fresh topology, in a new random order each round.
func RunScale(o ScaleOptions) (*ScaleResult, error) {
	if o.Services < 1 || o.Services > 32 || o.Sources < 2 || o.Sources > maxScaleSources || o.MaxSources < o.Sources {
		return nil, fmt.Errorf("scale: need 1-32 services, 2-%d sources and --max-sources ≥ sources (%d services, %d sources, %d max)",
			maxScaleSources, o.Services, o.Sources, o.MaxSources)
	}
	if err := Sweep(); err != nil {
		return nil, err
	}
	gen, err := openGenerator(o.Generator, o.Log)
	if err != nil {
		return nil, err
	}
	defer gen.Close()
	res := &ScaleResult{Opts: o, Started: time.Now(), Generator: gen.Name()}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format, args...)
		}
	}

	logf("loading knockgate (--max-sources %d, %d services), no grants\n", o.MaxSources, o.Services)
	bare, err := NewScaleGate(o.MaxSources, o.Services, 0)
	if err != nil {
		return nil, err
	}
	defer bare.Close()
	small, err := NewScaleGate(loader.DefaultMaxSources, o.Services, 0)
	if err != nil {
		return nil, err
	}
	defer small.Close()
	logf("loading knockgate (--max-sources %d, %d services), %d grants through maps.Set.Grant\n", o.MaxSources, o.Services, o.Sources)
	granted, err := newScaleGate(o.MaxSources, o.Services, o.Sources, o.Log)
	if err != nil {
		return nil, err
	}
	defer granted.Close()
	res.GrantsTook = granted.Took
	logf("%d grants made in %s\n", o.Sources, granted.Took.Round(time.Millisecond))
	// A second gate without grants, made after the one with. Two gates of
	// the same maps, made at different times, came out up to some 40 ns a
	// stranger's packet apart in either direction, whichever held the
	// grants (their maps' memory, not what is in it: under
	// BPF_PROG_TEST_RUN the two cost the same), so the strangers' cost
	// without grants is the mean of two gates, one made either side.
	logf("loading knockgate (--max-sources %d, %d services), no grants, again\n", o.MaxSources, o.Services)
	after, err := NewScaleGate(o.MaxSources, o.Services, 0)
	if err != nil {
		return nil, err
	}
	defer after.Close()
	for _, g := range []*ScaleGate{bare, small, granted, after} {
		if err := g.Check(o); err != nil {
			return nil, fmt.Errorf("scale gate with %d grants: %w", g.Grants, err)
		}
	}
	if res.Maps, err = scaleMaps(granted, o.MaxSources); err != nil {
		return nil, err
	}

	var configs []scaleConfig
	for _, g := range scaleGates {
		for _, f := range o.ScaleFloods() {
			if scaleRuns(g, f) {
				configs = append(configs, scaleConfig{g, f})
			}
		}
	}
	gate := func(name string, f Flood) Gate {
		v := bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED
		if scaleGranted(f) {
			v = bpf.KnockgateVerdictVERDICT_PASSED_GRANTED
		}
		switch name {
		case nameFloor:
			return NewXDPDrop()
		case nameNoFilter:
			return NewNoFilter(o.PeerNAPI)
		case nameScaleBare:
			return &scaleKnockgate{name: name, g: bare, verdict: v}
		case nameScaleSmall:
			return &scaleKnockgate{name: name, g: small, verdict: v}
		case nameScaleBareAfter:
			return &scaleKnockgate{name: name, g: after, verdict: v}
		}
		if p, ok := probeNamed(name); ok {
			pr := NewProbe(name, probeBytes(o.MaxSources, p.perSource), p.granted)
			if p.filterPerSource != 0 {
				pr.Filter = probeBytes(o.MaxSources, p.filterPerSource)
			}
			return pr
		}
		return &scaleKnockgate{name: name, g: granted, verdict: v}
	}
	total, done := o.Rounds*len(configs), 0
	for round := 1; round <= o.Rounds; round++ {
		res.Load = append(res.Load, LoadAvg())
		rng := rand.New(rand.NewSource(int64(round)))
		for _, i := range rng.Perm(len(configs)) {
			c := configs[i]
			s := runScaleOne(o, gen, gate(c.gate, c.flood), c.flood, round)
			if stalled(s.Err) {
				logf("[%2d/%d] round %d %-16s %-10s again, once: %v\n", done+1, total, round, s.Gate, s.Flood, s.Err)
				s = runScaleOne(o, gen, gate(c.gate, c.flood), c.flood, round)
			}
			done++
			logSample(o.Log, done, total, s)
			res.Samples = append(res.Samples, s)
		}
	}
	res.Load = append(res.Load, LoadAvg())
	res.Took = time.Since(res.Started)
	return res, nil
}

// probeBytes is a probe's table for maxSources at perSource bytes each,
// rounded up to a power of two.
func probeBytes(maxSources uint32, perSource uint64) uint64 {
	n := uint64(maxSources) * perSource
	b := uint64(128)
	for b < n {
		b <<= 1
	}
	return b
}

// runScaleOne builds a topology, attaches gate, floods it and tears
// everything down again. A knockgate gate must have given every frame the
// receiver took the verdict its flood should get (all passed as granted, or
// all dropped as protected).
func runScaleOne(o ScaleOptions, gen Generator, gate Gate, f Flood, round int) (s Sample) {
	s = Sample{Gate: gate.Name(), Flood: f.Name, Floor: gate.Floor(), Round: round, Tracked: -1}
	st, teardown, err := setUp(o.Options, gen, gate)
	defer func() {
		if err := teardown(); err != nil && s.Err == nil {
			s.Err = fmt.Errorf("teardown: %w", err)
		}
	}()
	if err != nil {
		s.Err = err
		return s
	}
	if err := measureFlood(o.Options, gen, st.topo, gate, st.napi, f, &s); err != nil {
		s.Err = err
		return s
	}
	if _, ok := gate.(*scaleKnockgate); ok && (s.Seen > s.Total || s.Seen < s.Total-s.Total/1000) {
		s.Err = fmt.Errorf("the gate counted %d of the %d frames the receiver took as it should (%s)", s.Seen, s.Total, f.Describe)
	}
	return s
}

// ScaleMaps are the maps a flood packet reads beyond the configuration (of
// which it reads one byte of the port table and a few fields, the same
// line for every packet of a flood), with their sizes in bytes: what
// decides whether a flood from many sources finds them in cache.
type ScaleMaps struct {
	KnockTags  uint64 // knock_tags: one byte a knock slot; a SYN reads its set's 4
	HintBits   uint64 // hint_bits: the active half (two in memory); reads one 8-byte word
	HintWords  uint32 // words of a half
	FlowTags   uint64 // flow_tags: one byte a flow slot; a non-SYN reads its set's 4
	Grants     uint64 // grants (memlock): a hint that counts something costs a lookup
	GrantSlots uint32
	GrantCache uint64 // grant_cache (memlock): a granted packet reads its set's line
	CacheSets  uint32
	// PerGrant is what one more grant costs the grants map (memlock of the
	// map made at two sizes, as bench-peers measures), and GrantsPer the
	// grants map's memlock over its entries (as loader's
	// TestMaxSourcesLimits measures); HintsPer the hint bitmap's (both
	// halves) over --max-sources, CachePer the grant cache's.
	PerGrant, GrantsPer, HintsPer, CachePer float64
}

func scaleMaps(g *ScaleGate, maxSources uint32) (ScaleMaps, error) {
	m := g.Objs.KnockgateMaps
	sm := ScaleMaps{
		KnockTags:  uint64(m.KnockTags.ValueSize()),
		HintWords:  maps.HintWordsOf(m.HintBits.ValueSize()),
		HintBits:   8 * uint64(maps.HintWordsOf(m.HintBits.ValueSize())),
		FlowTags:   uint64(m.FlowTags.ValueSize()),
		GrantSlots: m.Grants.MaxEntries(),
		CacheSets:  m.GrantCache.MaxEntries(),
	}
	mem := func(em *ebpf.Map) (uint64, error) {
		info, err := em.Info()
		if err != nil {
			return 0, err
		}
		b, ok := info.Memlock()
		if !ok {
			return 0, errors.New("the kernel reports no memlock")
		}
		return b, nil
	}
	var err error
	if sm.Grants, err = mem(m.Grants); err != nil {
		return sm, fmt.Errorf("grants map memory: %w", err)
	}
	hints, err := mem(m.HintBits)
	if err != nil {
		return sm, fmt.Errorf("hint bits memory: %w", err)
	}
	if sm.GrantCache, err = mem(m.GrantCache); err != nil {
		return sm, fmt.Errorf("grant cache memory: %w", err)
	}
	sm.CachePer = float64(sm.GrantCache) / float64(maxSources)
	sm.GrantsPer = float64(sm.Grants) / float64(maxSources)
	sm.HintsPer = float64(hints) / float64(maxSources)
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		return sm, fmt.Errorf("load program spec: %w", err)
	}
	small, err := memlockAt(spec.Maps[bpf.KnockgateMapGrants], sm.GrantSlots)
	if err != nil {
		return sm, err
	}
	large, err := memlockAt(spec.Maps[bpf.KnockgateMapGrants], 2*sm.GrantSlots)
	if err != nil {
		return sm, err
	}
	sm.PerGrant = float64(large-small) / float64(sm.GrantSlots)
	return sm, nil
}
