package bench

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"slices"
	"time"

	"github.com/knockgate/knockgate/test/packet"
)

// Options of a benchmark run.
type Options struct {
	Rounds   int           // every configuration once per round, order shuffled per round
	Warmup   time.Duration // flood time before the measured window
	Prime    time.Duration // knock flood before a primed flood
	Duration time.Duration // measured window
	CPU      int           // the receiver's core: its NAPI thread is pinned there
	Batch    uint32        // frames the generator flushes at once (1-MaxBatch)
	Spoofed  uint32        // sources of the spoofed flood
	Latency  int           // fresh sources per knock-to-open measurement
	Knocked  int           // knocked clients per correctness check
	MemFill  int           // entries per map for the memory reading
	PeerNAPI PeerNAPI      // how gates without XDP get NAPI
	// SenderCPU is the sending thread's core: another than CPU where the
	// machine has one, so that the sender's work neither lands on the
	// receiver's account nor takes its time.
	SenderCPU int
	// NAPIDefer: the receiver's NAPI, once idle, polls again after this
	// long rather than at the next frame (see CoalesceNAPI); 0: at once.
	NAPIDefer time.Duration
	// Generator is the flood's back end (auto: live frames if the kernel
	// runs them, else AF_PACKET).
	Generator GeneratorKind
	// Knockgate is the knockgate binary to attach with; "" attaches
	// in-process through loader.Create.
	Knockgate string
	// KnockgateBase is another build's knockgate binary (an earlier
	// design), run as the gate "knockgate-base" through its CLI; "": none.
	KnockgateBase string
	// Churn is how many distinct spoofed sources send a first knock before
	// the churned flood (0: no churned flood), for ChurnTime at most.
	Churn     uint32
	ChurnTime time.Duration
	// Gaps between the two knocks of the clients that knock during a
	// flood of spoofed first knocks (see UnderFlood), UnderFlood of them
	// per gap; none: not measured.
	Gaps       []time.Duration
	UnderFlood int
	// FloodRates are the rates of that flood, frames a second; 0: as fast
	// as the sender goes. A paced flood puts every gate under the same
	// load, whatever it can take.
	FloodRates []float64
	Log        io.Writer // progress, one line per configuration
	Only       []string  // gate names to run; all when empty
}

// Floods of every round.
func (o Options) Floods() []Flood {
	floods := []Flood{
		{Name: "single", Sources: 1, Describe: "from one source"},
		{Name: "spoofed", Sources: o.Spoofed, Describe: fmt.Sprintf("from %d spoofed sources", o.Spoofed)},
		{Name: "primed", Sources: o.Spoofed, Primed: true,
			Describe: fmt.Sprintf("from %d spoofed sources that knocked first", o.Spoofed)},
	}
	if o.Churn > 0 {
		floods = append(floods, Flood{Name: "churned", Sources: o.Spoofed, Churn: o.Churn,
			Describe: fmt.Sprintf("from %d spoofed sources, after first knocks from %d others", o.Spoofed, o.Churn)})
	}
	floods = append(floods, Flood{Name: "ack", Sources: o.Spoofed, Flags: packet.ACK,
		Describe: fmt.Sprintf("of ACKs from %d spoofed sources", o.Spoofed)})
	return floods
}

// Gates returns fresh instances of the gates to run, in table order.
func (o Options) Gates() []Gate {
	all := []Gate{
		NewNoFilter(o.PeerNAPI),
		NewXDPDrop(),
		NewKnockgate(o.Knockgate),
		NewKnockgateCLI(nameBase, o.KnockgateBase),
		NewNftables(o.PeerNAPI),
		NewIptables(o.PeerNAPI),
		NewKnockgateAll(o.Knockgate),
		NewNftablesAll(o.PeerNAPI),
		NewIptablesAll(o.PeerNAPI),
	}
	var out []Gate
	for _, g := range all {
		if g.Name() == nameBase && o.KnockgateBase == "" {
			continue // no earlier build to run
		}
		if len(o.Only) == 0 || slices.Contains(o.Only, g.Name()) {
			out = append(out, g)
		}
	}
	return out
}

// GateNames names every gate, in table order.
func GateNames() []string {
	var names []string
	for _, g := range (Options{KnockgateBase: "given"}).Gates() {
		names = append(names, g.Name())
	}
	return names
}

// Sample is one measured flood of one gate.
type Sample struct {
	Gate, Flood  string
	Floor        bool
	Round        int
	Window       time.Duration
	Handled      uint64  // frames the receiver took in the window
	HandledPPS   float64 // Handled per second
	NsPerPacket  float64 // receiver CPU per handled frame
	SentPPS      float64 // frames the generator built per second
	FramesPerRun float64 // frames handled per switch-in of the NAPI thread
	SenderShare  float64 // CPU share of the sending thread
	RingDropped  uint64  // frames refused by the full veth ring (whole flood)
	Seen         uint64  // the gate's own count over the whole flood
	Total        uint64  // frames the receiver took over the whole flood
	Tracked      int     // sources with knock progress after priming (knockgate); -1: not read
	Check        *Check  // nil for floors
	Latency      []time.Duration
	// Under a flood of spoofed first knocks: how many of the clients that
	// knocked with each gap between their two knocks got in (see
	// UnderFlood).
	UnderFlood []UnderFloodResult
	ChurnSent  uint64 // first knocks sent before the churned flood
	Err        error
}

// Valid: measured, and (for a knock gate) behaved.
func (s Sample) Valid() bool { return s.Err == nil && (s.Check == nil || s.Check.OK()) }

// Result is a whole run.
type Result struct {
	Opts    Options
	Samples []Sample
	Memory  *Memory
	Started time.Time
	Took    time.Duration
	// Generator names the back end that sent the floods.
	Generator string
}

// protectsAll is a gate that closes every port (knockgate --protect all,
// the netfilter gates with conntrack's established,related first).
type protectsAll interface{ ProtectsAll() bool }

// runsFlood: a protect-all gate runs the spoofed SYN and ACK floods only,
// where it differs from its protect-a-port sibling (the per-packet work of
// a flow or conntrack lookup); the rest would repeat the sibling's rows.
func runsFlood(g Gate, f Flood) bool {
	if pa, ok := g.(protectsAll); ok && pa.ProtectsAll() {
		return f.Name == "spoofed" || f.Name == "ack"
	}
	return true
}

// A configuration that got nowhere: the receiver handled no frames in the
// window, a churn fell short of its sources, or the knocked clients of the
// check timed out (nobody else getting in) while the receiver took none of
// the check's packets or its NAPI thread waited at least starvedWait for its
// core. On a broken path the first two happen every time. On this kind of
// 2-CPU VM all three also happen when other work keeps the sender or the
// NAPI thread off its core for seconds, and, rarely and only seen with
// --napi-defer, when the receiving NAPI stops being woken (its thread
// neither runs nor waits, and frames pile up in its ring): a kernel matter,
// not the gate's.
// Run runs such a configuration once more (fresh namespaces, fresh gate,
// fresh NAPI) and keeps the second result, so a broken path or gate still
// fails and a stall of the machine does not.
var (
	errNoFrames   = errors.New("the receiver handled no frames")
	errChurnShort = errors.New("the churn fell short")
	errStalled    = errors.New("the receiver stalled")
)

const starvedWait = time.Second

func stalled(err error) bool {
	return errors.Is(err, errNoFrames) || errors.Is(err, errChurnShort) || errors.Is(err, errStalled)
}

type config struct {
	gate  int
	flood int
}

// Run runs the benchmark. Configurations run in a fresh topology each, in
// a new random order every round, so a drift of the machine's load spreads
// over all of them instead of biasing one.
func Run(o Options) (*Result, error) {
	if err := Sweep(); err != nil {
		return nil, err
	}
	gen, err := openGenerator(o.Generator, o.Log)
	if err != nil {
		return nil, err
	}
	defer gen.Close()

	res := &Result{Opts: o, Started: time.Now(), Generator: gen.Name()}
	floods := o.Floods()
	var configs []config
	for g, gate := range o.Gates() {
		for f := range floods {
			if !runsFlood(gate, floods[f]) {
				continue
			}
			configs = append(configs, config{g, f})
		}
	}
	total := o.Rounds * len(configs)
	done := 0
	for round := 1; round <= o.Rounds; round++ {
		rng := rand.New(rand.NewSource(int64(round)))
		for _, i := range rng.Perm(len(configs)) {
			c := configs[i]
			s := runOne(o, gen, o.Gates()[c.gate], floods[c.flood], round, res)
			if stalled(s.Err) {
				if o.Log != nil {
					fmt.Fprintf(o.Log, "[%2d/%d] round %d %-16s %-8s again, once: %v\n", done+1, total, round, s.Gate, s.Flood, s.Err)
				}
				s = runOne(o, gen, o.Gates()[c.gate], floods[c.flood], round, res)
			}
			done++
			logSample(o.Log, done, total, s)
			res.Samples = append(res.Samples, s)
		}
	}
	res.Took = time.Since(res.Started)
	return res, nil
}

func logSample(w io.Writer, done, total int, s Sample) {
	if w == nil {
		return
	}
	status := "ok"
	switch {
	case s.Err != nil:
		status = "error: " + s.Err.Error()
	case s.Check != nil && !s.Check.OK():
		status = fmt.Sprintf("FAILED correctness: %v", s.Check.Failures)
	case s.Check == nil:
		status = "floor"
	}
	fmt.Fprintf(w, "[%2d/%d] round %d %-16s %-8s %7.1f rx ns/pkt  %5.0f frames/wake  %7.3f Mpps handled  sent %6.3f Mpps  sender %3.0f%%  %s\n",
		done, total, s.Round, s.Gate, s.Flood, s.NsPerPacket, s.FramesPerRun, s.HandledPPS/1e6, s.SentPPS/1e6, 100*s.SenderShare, status)
}

// runOne builds a topology, installs gate, floods it, checks it, and tears
// everything down again.
func runOne(o Options, gen Generator, gate Gate, f Flood, round int, res *Result) (s Sample) {
	s = Sample{Gate: gate.Name(), Flood: f.Name, Floor: gate.Floor(), Round: round, Tracked: -1}
	st, teardown, err := setUp(o, gen, gate)
	defer func() {
		if err := teardown(); err != nil && s.Err == nil {
			s.Err = fmt.Errorf("teardown: %w", err)
		}
	}()
	if err != nil {
		s.Err = err
		return s
	}
	topo, napi, ln := st.topo, st.napi, st.ln

	if err := measureFlood(o, gen, topo, gate, napi, f, &s); err != nil {
		s.Err = err
		return s
	}
	srcs := NewSources()
	underFlood := func() ([]netip.Addr, error) {
		var knocked []netip.Addr
		if f.Sources != 1 || len(o.Gaps) == 0 {
			return nil, nil
		}
		for _, rate := range o.FloodRates {
			for _, gap := range o.Gaps {
				r, err := UnderFlood(topo, gen, srcs, gap, rate, o.UnderFlood, o.SenderCPU, o.Batch)
				if err != nil {
					return knocked, fmt.Errorf("knocks under a flood: %w", err)
				}
				s.UnderFlood = append(s.UnderFlood, r)
				knocked = append(knocked, r.Sources...)
			}
		}
		return knocked, nil
	}
	if gate.Floor() {
		if gate.Name() == nameNoFilter {
			_, s.Err = underFlood()
		}
		return s
	}

	w0, err1 := napi.Sched()
	l0, err2 := linkStats(topo.RX, RxIface)
	if err := errors.Join(err1, err2); err != nil {
		s.Err = err
		return s
	}
	chk, authorised := Correctness(topo, srcs, o.Knocked, f.Churn > 0)
	s.Check = &chk
	w1, err1 := napi.Sched()
	l1, err2 := linkStats(topo.RX, RxIface)
	if err := errors.Join(err1, err2); err != nil {
		s.Err = err
		return s
	}
	if !chk.OK() && chk.Unauthorised() == 0 && chk.Knocked < chk.KnockedOf {
		// Nobody got in who should not have, and the knocked clients
		// timed out: the gate's doing only if the receiver took their
		// packets.
		waited := time.Duration(w1.Wait - w0.Wait)
		switch {
		case l1.RxPackets == l0.RxPackets:
			s.Err = fmt.Errorf("%w: the receiver took none of the check's packets (%d of %d knocked clients could not connect)",
				errStalled, chk.KnockedOf-chk.Knocked, chk.KnockedOf)
			return s
		case waited >= starvedWait:
			s.Err = fmt.Errorf("%w: %d of %d knocked clients could not connect while the receiver's NAPI thread waited %s for a CPU",
				errStalled, chk.KnockedOf-chk.Knocked, chk.KnockedOf, waited)
			return s
		}
	}
	if f.Sources == 1 && o.Latency > 0 {
		lat, err := Latency(topo, srcs, o.Latency, authorised)
		if err != nil {
			chk.Failures = append(chk.Failures, err.Error())
		}
		s.Latency = lat
	}
	if _, ok := gate.(*Knockgate); ok && res.Memory == nil && o.MemFill > 0 {
		mem, err := KnockgateMemory(o.MemFill)
		if err != nil {
			s.Err = fmt.Errorf("knockgate map memory: %w", err)
			return s
		}
		res.Memory = &mem
	}
	// Last: a first-knock flood leaves a gate's tables full (nftables'
	// sets refuse new members until old ones time out).
	knocked, err := underFlood()
	for _, a := range knocked {
		authorised[a] = true // they knocked, flood or not
	}
	if err != nil {
		s.Err = err
		return s
	}
	// Everyone the listener let in must have knocked.
	for addr, n := range ln.Accepted() {
		if !authorised[addr] {
			chk.Accepted += n
			chk.Failures = append(chk.Failures, fmt.Sprintf("%s got %d connections through without knocking", addr, n))
		}
	}
	s.Check = &chk
	return s
}

// installable is a gate as setUp installs it (Gate, SPAGate).
type installable interface {
	Name() string
	Setup(topo *Topology) error
	Close() error
}

// stage is one configuration's place to run: a fresh topology with the
// generator attached, the gate set up, the receiver's NAPI thread found
// and a listener on the protected port.
type stage struct {
	topo *Topology
	napi NAPI
	ln   *Listener
}

// setUp builds a stage for gate. teardown, to be called whatever err says,
// takes down what was built: listener, gate, generator, topology.
func setUp(o Options, gen Generator, gate installable) (st stage, teardown func() error, err error) {
	teardown = func() error { return nil }
	if st.topo, err = NewTopology(); err != nil {
		return st, teardown, err
	}
	teardown = func() error {
		if st.ln != nil {
			st.ln.Close()
		}
		return errors.Join(gate.Close(), gen.Detach(), st.topo.Close())
	}
	if err := gen.Attach(st.topo); err != nil {
		return st, teardown, err
	}
	if err := gate.Setup(st.topo); err != nil {
		return st, teardown, fmt.Errorf("set up %s: %w", gate.Name(), err)
	}
	if st.napi, err = ThreadedNAPI(st.topo.RX, o.CPU); err != nil {
		return st, teardown, err
	}
	if err := CoalesceNAPI(st.topo.RX, o.NAPIDefer); err != nil {
		return st, teardown, err
	}
	st.ln, err = Listen(st.topo.RX)
	return st, teardown, err
}

// measureFlood floods the gate and reads the receiver's counters around a
// window after the warm-up.
func measureFlood(o Options, gen Generator, topo *Topology, gate Gate, napi NAPI, f Flood, s *Sample) error {
	if f.Churn > 0 {
		// First knocks from f.Churn sources other than the flood's (they
		// count up from churnBase), once each if the ring lets them in.
		stop := make(chan struct{})
		churn := Flood{Sources: f.Churn, Base: churnBase}
		sent0, err := gen.Sent()
		if err != nil {
			return err
		}
		go func() {
			// Stop once every source has sent, or at ChurnTime.
			deadline := time.After(o.ChurnTime)
			for {
				select {
				case <-deadline:
					close(stop)
					return
				case <-time.After(20 * time.Millisecond):
					if n, err := gen.Sent(); err == nil && n-sent0 >= uint64(f.Churn) {
						close(stop)
						return
					}
				}
			}
		}()
		fr, err := gen.Run(topo, churn, KnockPort1, o.SenderCPU, o.Batch, stop)
		if err != nil {
			return fmt.Errorf("churn: %w", err)
		}
		s.ChurnSent = fr.Sent
		if fr.Sent < uint64(f.Churn) {
			return fmt.Errorf("%w: %d first knocks sent in %s, want %d (%d calls; the sender ran %s)",
				errChurnShort, fr.Sent, o.ChurnTime, f.Churn, fr.Calls, time.Duration(fr.SenderNS))
		}
		time.Sleep(50 * time.Millisecond) // the ring drains
	}
	if f.Primed {
		// Every source knocks the first step, many times over (the veth
		// ring loses some): a SYN to the first knock port.
		stop := make(chan struct{})
		time.AfterFunc(o.Prime, func() { close(stop) })
		if _, err := gen.Run(topo, f, KnockPort1, o.SenderCPU, o.Batch, stop); err != nil {
			return fmt.Errorf("prime: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // the ring drains

		if t, ok := gate.(interface{ Tracked() (int, error) }); ok {
			n, err := t.Tracked()
			if err != nil {
				return err
			}
			s.Tracked = n
		}
	}
	ls0, err := linkStats(topo.RX, RxIface)
	if err != nil {
		return err
	}
	seen0, err := gate.Seen()
	if err != nil {
		return err
	}

	stop := make(chan struct{})
	type result struct {
		r   FloodResult
		err error
	}
	resc := make(chan result, 1)
	go func() {
		r, err := gen.Run(topo, f, ProtectedPort, o.SenderCPU, o.Batch, stop)
		resc <- result{r, err}
	}()
	stopFlood := func() (FloodResult, error) {
		close(stop)
		r := <-resc
		return r.r, r.err
	}

	time.Sleep(o.Warmup)
	schedA, errA := napi.Sched()
	lsA, errB := linkStats(topo.RX, RxIface)
	tA := time.Now()
	time.Sleep(o.Duration)
	schedB, errC := napi.Sched()
	lsB, errD := linkStats(topo.RX, RxIface)
	tB := time.Now()
	fr, errE := stopFlood()
	if err := errors.Join(errA, errB, errC, errD, errE); err != nil {
		return err
	}
	// Let the receiver drain its ring (256 frames) before the totals.
	time.Sleep(50 * time.Millisecond)
	ls1, err := linkStats(topo.RX, RxIface)
	if err != nil {
		return err
	}
	seen1, err := gate.Seen()
	if err != nil {
		return err
	}

	s.Window = tB.Sub(tA)
	s.Handled = lsB.RxPackets - lsA.RxPackets
	if s.Handled == 0 {
		return fmt.Errorf("%w (sent %d, %d lost to a full ring; in the window its NAPI thread ran %s and waited %s for a CPU)",
			errNoFrames, fr.Sent, lsB.RxDropped-lsA.RxDropped, time.Duration(schedB.CPU-schedA.CPU), time.Duration(schedB.Wait-schedA.Wait))
	}
	s.HandledPPS = float64(s.Handled) / s.Window.Seconds()
	s.NsPerPacket = float64(schedB.CPU-schedA.CPU) / float64(s.Handled)
	if runs := schedB.Runs - schedA.Runs; runs > 0 {
		s.FramesPerRun = float64(s.Handled) / float64(runs)
	}
	s.SenderShare = float64(fr.SenderNS) / float64(fr.Elapsed)
	s.SentPPS = float64(fr.Sent) / fr.Elapsed.Seconds()
	s.RingDropped = ls1.RxDropped - ls0.RxDropped
	s.Total = ls1.RxPackets - ls0.RxPackets
	s.Seen = seen1 - seen0
	return nil
}
