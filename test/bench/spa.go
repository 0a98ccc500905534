package bench

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// Single-packet authorization under a flood of forged SPA packets: knockgate
// (verified in XDP) beside fwknopd (libpcap in user space, iptables back
// end), both in the receiving namespace, both guarding the protected port.
// Each gate's flood carries forged packets in its own format and of its
// real size: for knockgate a 56-byte packet with a wrong tag, for fwknopd a
// real fwknop packet (Rijndael + HMAC-SHA256, base64) with one character of
// its HMAC changed, so each gate does its full check and refuses.

// SPAPort is the UDP port both gates take SPA packets on (fwknop's default).
const SPAPort = spa.DefaultPort

// Gate names of the SPA benchmark.
const (
	nameKnockgateSPA = "knockgate spa"
	nameFwknopd      = "fwknopd"
)

// SPAGate is an SPA gate under test.
type SPAGate interface {
	Name() string
	Setup(topo *Topology) error
	// Forged is the payload of the flood: refused by the gate's full check.
	Forged() ([]byte, error)
	// Open sends one valid SPA packet from txAddr with the gate's own
	// client; call it from outside the namespaces.
	Open(topo *Topology) error
	// Revoke takes txAddr's access away, so the next attempt starts shut.
	Revoke(topo *Topology) error
	// Processed counts the SPA packets the gate itself examined.
	Processed() (uint64, error)
	// DaemonCPU is the CPU time (ns) of the gate's user-space process; 0
	// for a gate with none.
	DaemonCPU() (uint64, error)
	Close() error
}

// SPAOptions of the SPA benchmark; the rest comes from Options.
type SPAOptions struct {
	Rounds   int
	Attempts int // valid packets sent during each flood
	// FwknopdDispatch and FwknopdSleep are fwknopd's PCAP_DISPATCH_COUNT
	// and PCAP_LOOP_SLEEP (µs): packets taken per loop, and the pause
	// between loops.
	FwknopdDispatch int
	FwknopdSleep    int
	Only            []string // SPA gates to run; all when empty
}

// SPAGateNames names the SPA benchmark's gates.
func SPAGateNames() []string {
	return []string{nameKnockgateSPA, nameFwknopd, nameKnockgateFwknop1, nameKnockgateFwknop16}
}

// SPASample is one flood of one SPA gate.
type SPASample struct {
	Gate        string
	Round       int
	HandledPPS  float64 // frames the receiving NAPI took per second
	NapiNs      float64 // NAPI thread CPU per handled frame
	ProcessedPS float64 // SPA packets the gate examined per second
	DaemonNs    float64 // the gate's process CPU per handled frame
	PerExamined float64 // the gate's process CPU per packet it examined
	TotalNs     float64 // receiver CPU (NAPI + process) per handled frame
	RingFull    float64 // frames the sender lost to the full ring ÷ sent
	Opened      int     // valid packets that opened the port within 1 s
	Attempts    int
	Latency     []time.Duration // of the attempts that opened
	Err         error
}

// SPAResult is the whole SPA benchmark.
type SPAResult struct {
	Opts      SPAOptions
	Base      Options
	Samples   []SPASample
	Took      time.Duration
	Generator string // the back end that sent the floods
}

// RunSPA runs every SPA gate under the forged flood, Rounds times.
func RunSPA(o Options, so SPAOptions, gates func() []SPAGate) (*SPAResult, error) {
	if err := Sweep(); err != nil {
		return nil, err
	}
	gen, err := openGenerator(o.Generator, o.Log)
	if err != nil {
		return nil, err
	}
	defer gen.Close()
	res := &SPAResult{Opts: so, Base: o, Generator: gen.Name()}
	start := time.Now()
	n := len(gates())
	for round := 1; round <= so.Rounds; round++ {
		for i := range n {
			// Alternate who goes first; a flood that got nowhere once more
			// (see stalled).
			s := runSPA(o, so, gen, gates()[(i+round)%n], round)
			if stalled(s.Err) {
				if o.Log != nil {
					fmt.Fprintf(o.Log, "[spa] round %d %-14s again, once: %v\n", round, s.Gate, s.Err)
				}
				s = runSPA(o, so, gen, gates()[(i+round)%n], round)
			}
			if o.Log != nil {
				status := "ok"
				if s.Err != nil {
					status = "error: " + s.Err.Error()
				}
				fmt.Fprintf(o.Log, "[spa] round %d %-14s %8.1f rx ns/pkt (napi %.1f + process %.1f)  %7.3f Mpps handled  opened %d/%d  %s\n",
					round, s.Gate, s.TotalNs, s.NapiNs, s.DaemonNs, s.HandledPPS/1e6, s.Opened, s.Attempts, status)
			}
			res.Samples = append(res.Samples, s)
		}
	}
	res.Took = time.Since(start)
	return res, nil
}

func runSPA(o Options, so SPAOptions, gen Generator, gate SPAGate, round int) (s SPASample) {
	s = SPASample{Gate: gate.Name(), Round: round, Attempts: so.Attempts}
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
	// Shut before anything: a connect from txAddr goes unanswered.
	if err := topo.TX.Do(func() error { return dial(txAddr, 300*time.Millisecond) }); err == nil {
		s.Err = errors.New("the protected port is open before any SPA packet")
		return s
	}

	forged, err := gate.Forged()
	if err != nil {
		s.Err = fmt.Errorf("make a forged packet: %w", err)
		return s
	}
	f := Flood{Name: "forged spa", Sources: o.Spoofed, Payload: forged}
	stop := make(chan struct{})
	resc := make(chan error, 1)
	var fr FloodResult
	go func() {
		var err error
		fr, err = gen.Run(topo, f, SPAPort, o.SenderCPU, o.Batch, stop)
		resc <- err
	}()
	stopped := false
	stopFlood := func() error {
		if stopped {
			return nil
		}
		stopped = true
		close(stop)
		return <-resc
	}
	defer stopFlood()

	time.Sleep(o.Warmup)
	schedA, errA := napi.Sched()
	lsA, errB := linkStats(topo.RX, RxIface)
	cpuA, errC := gate.DaemonCPU()
	procA, errD := gate.Processed()
	tA := time.Now()
	time.Sleep(o.Duration)
	schedB, errE := napi.Sched()
	lsB, errF := linkStats(topo.RX, RxIface)
	cpuB, errG := gate.DaemonCPU()
	procB, errH := gate.Processed()
	window := time.Since(tA)
	if err := errors.Join(errA, errB, errC, errD, errE, errF, errG, errH); err != nil {
		s.Err = err
		return s
	}
	handled := lsB.RxPackets - lsA.RxPackets
	if handled == 0 {
		s.Err = fmt.Errorf("%w (%d lost to a full ring; in the window its NAPI thread ran %s and waited %s for a CPU)",
			errNoFrames, lsB.RxDropped-lsA.RxDropped, time.Duration(schedB.CPU-schedA.CPU), time.Duration(schedB.Wait-schedA.Wait))
		return s
	}
	s.HandledPPS = float64(handled) / window.Seconds()
	s.NapiNs = float64(schedB.CPU-schedA.CPU) / float64(handled)
	s.DaemonNs = float64(cpuB-cpuA) / float64(handled)
	s.TotalNs = s.NapiNs + s.DaemonNs
	s.ProcessedPS = float64(procB-procA) / window.Seconds()
	if procB > procA {
		s.PerExamined = float64(cpuB-cpuA) / float64(procB-procA)
	}

	// Still under the flood: valid packets, each from a shut start, and
	// the port tried every 100 ms for a second after each.
	for range so.Attempts {
		if err := gate.Revoke(topo); err != nil {
			s.Err = err
			return s
		}
		time.Sleep(50 * time.Millisecond)
		t0 := time.Now()
		if err := gate.Open(topo); err != nil {
			s.Err = fmt.Errorf("send a valid SPA packet: %w", err)
			return s
		}
		for time.Since(t0) < time.Second {
			err := topo.TX.Do(func() error { return dial(txAddr, 100*time.Millisecond) })
			if err == nil {
				s.Opened++
				s.Latency = append(s.Latency, time.Since(t0))
				break
			}
		}
	}
	ring0 := lsB.RxDropped
	if err := stopFlood(); err != nil {
		s.Err = err
		return s
	}
	if ls, err := linkStats(topo.RX, RxIface); err == nil && fr.Sent > 0 {
		s.RingFull = float64(ls.RxDropped-ring0) / float64(fr.Sent)
	}
	for addr := range ln.Accepted() {
		if addr != txAddr {
			s.Err = fmt.Errorf("%s got in without a valid SPA packet", addr)
		}
	}
	return s
}

// KnockgateSPA is knockgate with SPA only (--sequence none), attached with
// the knockgate command; its valid packets come from `knockgate knock
// --spa-key`.
type KnockgateSPA struct {
	Binary   string // "": in-process (loader.Create; the client's Go code)
	key      spa.Key
	dir      string
	attached bool
}

func NewKnockgateSPA(binary string) *KnockgateSPA { return &KnockgateSPA{Binary: binary} }

func (g *KnockgateSPA) Name() string { return nameKnockgateSPA }

func (g *KnockgateSPA) Setup(topo *Topology) error {
	var err error
	if g.key, err = spa.NewKey(1, "bench"); err != nil {
		return err
	}
	if g.dir, err = os.MkdirTemp("", "kgb-spa"); err != nil {
		return err
	}
	keys := filepath.Join(g.dir, "spa.keys")
	if err := os.WriteFile(keys, []byte(g.key.Line()+"\n"), 0o600); err != nil {
		return err
	}
	if g.Binary != "" {
		_, err := topo.RX.Run(g.Binary, "attach", RxIface, "--sequence", "none", "--spa-keys", keys,
			"--open", Open.String(), "--protect", strconv.Itoa(ProtectedPort), "--mode", "native", "--no-grant-self")
		g.attached = err == nil
		return err
	}
	return topo.RX.Do(func() error {
		gate, err := loader.Create(loader.Options{
			Interfaces: []string{RxIface},
			Mode:       loader.ModeNative,
			MaxSources: loader.DefaultMaxSources,
			SPAKeys:    []spa.Key{g.key},
			Config: maps.Config{Policy: policy.Policy{
				Services: []policy.Service{{
					Name:        policy.DefaultService,
					StepTimeout: StepTimeout, Open: Open,
					Protect: []policy.Port{{Num: ProtectedPort, Proto: policy.TCP}},
				}},
				SPAPort: SPAPort, SPAWindow: spa.DefaultWindow,
				Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute,
			}},
		})
		if err != nil {
			return err
		}
		g.attached = true
		return gate.Close()
	})
}

func (g *KnockgateSPA) Forged() ([]byte, error) {
	p, err := spa.New(g.key.ID, netip.Addr{})
	if err != nil {
		return nil, err
	}
	b := p.Marshal(g.key.Secret)
	b[spa.Len-1] ^= 0x80 // the tag's top bit
	return b, nil
}

func (g *KnockgateSPA) Open(topo *Topology) error {
	if g.Binary != "" {
		keyFile := filepath.Join(g.dir, "client.key")
		if err := os.WriteFile(keyFile, []byte(g.key.Line()+"\n"), 0o600); err != nil {
			return err
		}
		_, err := topo.TX.Run(g.Binary, "knock", rxAddr.String(), "--spa-key", keyFile)
		return err
	}
	return topo.TX.Do(func() error {
		p, err := spa.New(g.key.ID, netip.Addr{})
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(rxAddr, SPAPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(p.Marshal(g.key.Secret))
		return err
	})
}

func (g *KnockgateSPA) Revoke(*Topology) error { return revokeClient() }

// Processed counts every SPA outcome the program counted.
func (g *KnockgateSPA) Processed() (uint64, error) { return droppedSPA() }

// revokeClient revokes every service of the client's grant, through the
// measured gate (under its lock).
func revokeClient() error {
	gate, err := loader.Open(RxIface)
	if err != nil {
		return err
	}
	defer gate.Close()
	_, err = gate.Revoke(txAddr, "")
	return err
}

// droppedSPA is how many datagrams to the SPA port the measured gate
// dropped: every one it judged, in either format.
func droppedSPA() (uint64, error) {
	gate, err := loader.Open(RxIface)
	if err != nil {
		return 0, err
	}
	defer gate.Close()
	c, err := gate.Maps.ReadCounters()
	return c.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_SPA), err
}

func (g *KnockgateSPA) DaemonCPU() (uint64, error) { return 0, nil }

func (g *KnockgateSPA) Close() error {
	defer os.RemoveAll(g.dir)
	if !g.attached {
		return nil
	}
	g.attached = false
	return loader.Detach(RxIface)
}

// Fwknopd is fwknop's server from Debian (fwknop-server), sniffing the
// receiving veth with libpcap and opening the protected port with its
// iptables back end; the receiver's iptables drops the SPA port and the
// protected port, as fwknop's documentation says a default-drop policy
// should. Its valid packets come from the fwknop client.
type Fwknopd struct {
	Dispatch, Sleep int // PCAP_DISPATCH_COUNT, PCAP_LOOP_SLEEP (µs)
	AvoidCPU        int // the receiver's core: fwknopd runs on the others
	napi            stackNAPI
	dir             string
	key, hmac       string // base64
	cmd             *exec.Cmd
	exited          chan struct{}
	processed       atomic.Uint64
}

func NewFwknopd(mode PeerNAPI, dispatch, sleep, avoidCPU int) *Fwknopd {
	return &Fwknopd{Dispatch: dispatch, Sleep: sleep, AvoidCPU: avoidCPU, napi: stackNAPI{mode: mode}}
}

func (g *Fwknopd) Name() string { return nameFwknopd }

func randomBase64(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func (g *Fwknopd) Setup(topo *Topology) error {
	var err error
	if g.dir, err = os.MkdirTemp("", "kgb-fwknop"); err != nil {
		return err
	}
	if g.key, err = randomBase64(32); err != nil {
		return err
	}
	if g.hmac, err = randomBase64(64); err != nil {
		return err
	}
	files := map[string]string{
		"fwknopd.conf": fmt.Sprintf("PCAP_INTF %s\nPCAP_FILTER udp port %d\nPCAP_DISPATCH_COUNT %d\nPCAP_LOOP_SLEEP %d\nFWKNOP_RUN_DIR %s\n",
			RxIface, SPAPort, g.Dispatch, g.Sleep, g.dir),
		"access.conf": fmt.Sprintf("SOURCE ANY\nREQUIRE_SOURCE_ADDRESS Y\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nFW_ACCESS_TIMEOUT %d\n",
			g.key, g.hmac, int(Open.Seconds())),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(g.dir, name), []byte(text), 0o600); err != nil {
			return err
		}
	}
	for _, rule := range [][]string{
		{"-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(SPAPort), "-j", "DROP"},
		{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(ProtectedPort), "-j", "DROP"},
	} {
		if _, err := topo.RX.Run("iptables", rule...); err != nil {
			return err
		}
	}
	if err := g.napi.enable(topo); err != nil {
		return err
	}
	g.cmd = topo.RX.Cmd("fwknopd", "-f", "-i", RxIface,
		"-c", filepath.Join(g.dir, "fwknopd.conf"), "-a", filepath.Join(g.dir, "access.conf"),
		"-d", filepath.Join(g.dir, "digest.cache"), "-p", filepath.Join(g.dir, "fwknopd.pid"), "-r", g.dir)
	// nsenter execs fwknopd in its place: the pid is fwknopd's.
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		return err
	}
	g.cmd.Stdout = io.Discard
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("start fwknopd: %w", err)
	}
	g.exited = make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, "main event loop") && !once:
				once = true
				close(ready)
			case strings.Contains(line, "Error creating fko context"), strings.Contains(line, "Added access rule"),
				strings.Contains(line, "Replay detected"):
				g.processed.Add(1)
			}
		}
	}()
	go func() { g.cmd.Wait(); close(g.exited) }()
	select {
	case <-ready:
	case <-g.exited:
		return errors.New("fwknopd exited at start")
	case <-time.After(10 * time.Second):
		return errors.New("fwknopd did not start within 10s")
	}
	// Off the receiver's core, where the NAPI thread runs: its CPU time
	// is counted apart.
	var set unix.CPUSet
	for c := range runtime.NumCPU() {
		if c != g.AvoidCPU {
			set.Set(c)
		}
	}
	if set.Count() > 0 {
		if err := unix.SchedSetaffinity(g.cmd.Process.Pid, &set); err != nil {
			return fmt.Errorf("pin fwknopd off cpu %d: %w", g.AvoidCPU, err)
		}
	}
	return nil
}

// Forged is a real fwknop packet with one character of its HMAC changed.
func (g *Fwknopd) Forged() ([]byte, error) {
	path := filepath.Join(g.dir, "forged.spa")
	if out, err := exec.Command("fwknop", g.clientArgs("-T", "--save-packet", path)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fwknop -T: %w: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := []byte(strings.TrimSpace(string(b)))
	if len(p) == 0 {
		return nil, errors.New("fwknop -T saved no packet")
	}
	return forgeTag(p)
}

// forgeTag changes the first character of an fwknop datagram's tag (its
// last 43) to another base64 character: the tag still decodes (the
// last character's spare bits, which knockgate checks before any hash,
// are left as they were), so a gate must compute the HMAC to refuse it.
func forgeTag(p []byte) ([]byte, error) {
	const tagLen = 43
	if len(p) <= tagLen {
		return nil, fmt.Errorf("a datagram of %d bytes has no tag", len(p))
	}
	i := len(p) - tagLen
	if p[i] == 'A' {
		p[i] = 'B'
	} else {
		p[i] = 'A'
	}
	return p, nil
}

func (g *Fwknopd) clientArgs(extra ...string) []string {
	return append([]string{"--rc-file", filepath.Join(g.dir, "fwknoprc"), "-A", fmt.Sprintf("tcp/%d", ProtectedPort),
		"-a", txAddr.String(), "-D", rxAddr.String(), "-p", strconv.Itoa(SPAPort),
		"--key-base64-rijndael", g.key, "--key-base64-hmac", g.hmac, "--use-hmac"}, extra...)
}

func (g *Fwknopd) Open(topo *Topology) error {
	_, err := topo.TX.Run("fwknop", g.clientArgs()...)
	return err
}

func (g *Fwknopd) Revoke(topo *Topology) error {
	_, err := topo.RX.Run("iptables", "-F", "FWKNOP_INPUT")
	return err
}

func (g *Fwknopd) Processed() (uint64, error) { return g.processed.Load(), nil }

func (g *Fwknopd) DaemonCPU() (uint64, error) {
	st, err := schedstat(fmt.Sprintf("/proc/%d/schedstat", g.cmd.Process.Pid))
	return st.CPU, err
}

func (g *Fwknopd) Close() error {
	var errs []error
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(5 * time.Second):
			g.cmd.Process.Kill()
			<-g.exited
		}
		g.cmd = nil
	}
	errs = append(errs, g.napi.close())
	if g.dir != "" {
		errs = append(errs, os.RemoveAll(g.dir))
		g.dir = ""
	}
	return errors.Join(errs...)
}

// SPAGates are fresh instances of the SPA gates: knockgate, and fwknopd
// tuned for throughput.
func SPAGates(o Options, so SPAOptions) func() []SPAGate {
	return func() []SPAGate {
		var out []SPAGate
		for _, g := range []SPAGate{NewKnockgateSPA(o.Knockgate), NewFwknopd(o.PeerNAPI, so.FwknopdDispatch, so.FwknopdSleep, o.CPU),
			NewKnockgateFwknop(o.Knockgate, 1), NewKnockgateFwknop(o.Knockgate, 16)} {
			if len(so.Only) == 0 || slices.Contains(so.Only, g.Name()) {
				out = append(out, g)
			}
		}
		return out
	}
}

// spaRow summarises one SPA gate over the rounds.
type spaRow struct {
	gate                         string
	handled, napi, daemon, total Stat
	processed, ring, perExamined Stat
	opened, attempts             int
	latency                      []time.Duration
	errors                       []string
}

func (res *SPAResult) rows() []spaRow {
	var out []spaRow
	for _, name := range SPAGateNames() {
		r := spaRow{gate: name}
		var h, n, d, t, p, rf, pe []float64
		for _, s := range res.Samples {
			if s.Gate != name {
				continue
			}
			if s.Err != nil {
				r.errors = append(r.errors, s.Err.Error())
				continue
			}
			h, n, d, t = append(h, s.HandledPPS/1e6), append(n, s.NapiNs), append(d, s.DaemonNs), append(t, s.TotalNs)
			p, rf, pe = append(p, s.ProcessedPS/1e6), append(rf, s.RingFull), append(pe, s.PerExamined)
			r.opened += s.Opened
			r.attempts += s.Attempts
			r.latency = append(r.latency, s.Latency...)
		}
		if len(h) == 0 && len(r.errors) == 0 {
			continue
		}
		r.handled, r.napi, r.daemon, r.total = Summarise(h), Summarise(n), Summarise(d), Summarise(t)
		r.processed, r.ring, r.perExamined = Summarise(p), Summarise(rf), Summarise(pe)
		out = append(out, r)
	}
	return out
}

// Failed names the SPA gates whose runs broke.
func (res *SPAResult) Failed() []string {
	var bad []string
	for _, r := range res.rows() {
		if len(r.errors) > 0 {
			bad = append(bad, r.gate)
		}
	}
	return bad
}

// WriteTable prints the SPA report.
func (res *SPAResult) WriteTable(w io.Writer) {
	o, so := res.Base, res.Opts
	fmt.Fprintf(w, "\nsingle-packet authorization under a flood of forged SPA packets to port %d/udp\n", SPAPort)
	fmt.Fprintf(w, "%d round(s), %d spoofed sources, flood %s after %s warm-up; took %s\n",
		so.Rounds, o.Spoofed, o.Duration, o.Warmup, res.Took.Round(time.Second))
	fmt.Fprintf(w, "generator: %s on CPU %d; the receiver's NAPI on CPU %d", res.Generator, o.SenderCPU, o.CPU)
	if o.NAPIDefer > 0 {
		fmt.Fprintf(w, ", once idle polling again after %s", o.NAPIDefer)
	}
	fmt.Fprintln(w, ";")
	fmt.Fprintf(w, "each gate's flood is its own format refused by its full check: knockgate spa %d-byte packets with a wrong tag;\n", spa.Len)
	fmt.Fprintln(w, "knockgate fwknop (run reading an access.conf of 1 or 16 stanzas, the client's last) the same forged fwknop packets as fwknopd;")
	fmt.Fprintf(w, "fwknopd (Debian fwknop-server, libpcap, iptables back end, PCAP_DISPATCH_COUNT %d, PCAP_LOOP_SLEEP %d µs,\n",
		so.FwknopdDispatch, so.FwknopdSleep)
	fmt.Fprintf(w, "pinned off CPU %d) real fwknop packets (Rijndael + HMAC-SHA256) with one HMAC character changed.\n", o.CPU)
	fmt.Fprintf(w, "then, still under the flood, %d valid packets a round from the gate's own client, each from a shut start:\n", so.Attempts)
	fmt.Fprintln(w, "opened: the port answered a connect (tried every 100 ms) within 1 s of the packet.")
	fmt.Fprintln(w)
	var t table
	t.add("gate", "receiver ns/pkt (min–max)", "NAPI ns/pkt", "process ns/pkt", "handled Mpps (min–max)", "examined Mpps", "process ns/examined", "ring full",
		"opened ≤1 s", "open p50")
	for _, r := range res.rows() {
		if len(r.errors) > 0 && r.handled.N == 0 {
			t.add(r.gate, "error: "+r.errors[0])
			continue
		}
		p50 := "—"
		if len(r.latency) > 0 {
			p50 = fmt.Sprintf("%.1f ms", float64(Percentile(r.latency, 50))/1e6)
		}
		t.add(r.gate, fmtStat(r.total, 1), fmt.Sprintf("%.1f", r.napi.Median), fmt.Sprintf("%.1f", r.daemon.Median),
			fmtStat(r.handled, 3), fmt.Sprintf("%.3f", r.processed.Median), fmt.Sprintf("%.0f", r.perExamined.Median),
			fmt.Sprintf("%.0f%%", 100*r.ring.Median),
			fmt.Sprintf("%d/%d", r.opened, r.attempts), p50)
	}
	t.write(w)
	fmt.Fprintln(w, "  receiver ns/pkt: the receiver's CPU per frame handled, the figure to compare: NAPI ns/pkt (the receiving")
	fmt.Fprintln(w, "  NAPI thread) plus process ns/pkt (the gate's user-space process, fwknopd); handled: frames the NAPI took per")
	fmt.Fprintln(w, "  second, at most the sender's rate; examined: SPA packets")
	fmt.Fprintln(w, "  the gate itself judged per second (knockgate: its dropped_spa counter; fwknopd: its log lines per packet), and")
	fmt.Fprintln(w, "  the process's CPU per packet it judged; ring full: frames the sender lost to the full veth ring, which the valid")
	fmt.Fprintln(w, "  packets and connects share with the flood (a lost valid packet is not resent: each client sends one).")
	var f *spaRow
	rows := res.rows()
	for i := range rows {
		if rows[i].gate == nameFwknopd && rows[i].handled.N > 0 {
			f = &rows[i]
		}
	}
	if f == nil {
		return
	}
	fmt.Fprintf(w, "\nheadline (medians; generator: %s), each gate beside fwknopd (%d/%d valid packets opened within 1 s):\n",
		res.Generator, f.opened, f.attempts)
	for _, k := range rows {
		if k.gate == nameFwknopd || k.handled.N == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s: %.2f× less receiver CPU per packet than fwknopd, %.2f× packets/s handled, %.2f× SPA packets examined/s; opened within 1 s %d/%d\n",
			k.gate, f.total.Median/k.total.Median, k.handled.Median/f.handled.Median, k.processed.Median/f.processed.Median, k.opened, k.attempts)
	}
}
