package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/netns"
)

// The policy every gate enforces: knock TCP 9000 then 8000, each step within
// StepTimeout of the one before; the source may then reach TCP 22 for Open.
const (
	StepTimeout = time.Minute
	Open        = 30 * time.Minute
)

// Gate is one configuration under test, set up inside a fresh receiving
// namespace.
type Gate interface {
	// Name is the label in the table and the chart.
	Name() string
	// Floor gates are references, not knock gates: no correctness check.
	Floor() bool
	// Setup installs the gate on RxIface and turns NAPI on for it.
	Setup(topo *Topology) error
	// Seen is the gate's own count of flood packets so far (its drop
	// counter, or for no filter the TCP segments received), to cross-check
	// the interface counters.
	Seen() (uint64, error)
	// Close removes what Setup installed outside the namespace (pins);
	// the rest goes with the namespace.
	Close() error
}

// PeerNAPI is how a gate without an XDP program of its own gets NAPI on the
// receiving veth, which it needs to take frames sent with XDP_TX at all.
type PeerNAPI string

const (
	// NAPIGRO enables GRO on the veth: frames go straight to the stack.
	NAPIGRO PeerNAPI = "gro"
	// NAPIXDPPass attaches a two-instruction XDP_PASS program.
	NAPIXDPPass PeerNAPI = "xdp-pass"
)

// ParsePeerNAPI validates a PeerNAPI name.
func ParsePeerNAPI(s string) (PeerNAPI, error) {
	switch p := PeerNAPI(s); p {
	case NAPIGRO, NAPIXDPPass:
		return p, nil
	}
	return "", fmt.Errorf("unknown peer NAPI mode %q (want gro or xdp-pass)", s)
}

// stackNAPI turns NAPI on for a gate that lives in the network stack.
type stackNAPI struct {
	mode PeerNAPI
	prog *ebpf.Program
	link link.Link
}

func (s *stackNAPI) enable(topo *Topology) error {
	switch s.mode {
	case NAPIGRO:
		_, err := topo.RX.Run("ethtool", "-K", RxIface, "gro", "on")
		return err
	case NAPIXDPPass:
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "kgb_pass",
			Type: ebpf.XDP,
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, 2), // XDP_PASS
				asm.Return(),
			},
			License: "Dual BSD/GPL",
		})
		if err != nil {
			return fmt.Errorf("load XDP_PASS program: %w", err)
		}
		s.prog = prog
		return topo.RX.Do(func() error {
			s.link, err = attachXDP(prog)
			return err
		})
	}
	return fmt.Errorf("unknown peer NAPI mode %q", s.mode)
}

func (s *stackNAPI) close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	s.link, s.prog = nil, nil
	return errors.Join(errs...)
}

// attachXDP attaches prog natively to RxIface; call it inside the receiving
// namespace.
func attachXDP(prog *ebpf.Program) (link.Link, error) {
	ifc, err := loader.Interface(RxIface)
	if err != nil {
		return nil, err
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to %s: %w", RxIface, err)
	}
	return l, nil
}

// NoFilter is the first floor: nothing but the kernel. Flood SYNs reach the
// listener on the protected port, which answers with SYN cookies (whose
// SYN-ACKs find no route back to the spoofed sources).
type NoFilter struct {
	napi stackNAPI
	rx   *netns.NS
}

func NewNoFilter(mode PeerNAPI) *NoFilter { return &NoFilter{napi: stackNAPI{mode: mode}} }

func (g *NoFilter) Name() string { return "no filter" }
func (g *NoFilter) Floor() bool  { return true }
func (g *NoFilter) Setup(topo *Topology) error {
	g.rx = topo.RX
	return g.napi.enable(topo)
}
func (g *NoFilter) Seen() (uint64, error) { return tcpInSegs(g.rx) }
func (g *NoFilter) Close() error          { return g.napi.close() }

// XDPDrop is the second floor: knockgate's parser, then XDP_DROP. The
// physical limit of this path.
type XDPDrop struct {
	objs floorObjects
	link link.Link
}

func NewXDPDrop() *XDPDrop { return &XDPDrop{} }

func (g *XDPDrop) Name() string { return "XDP_DROP floor" }
func (g *XDPDrop) Floor() bool  { return true }
func (g *XDPDrop) Setup(topo *Topology) error {
	if err := loadFloorObjects(&g.objs, nil); err != nil {
		return fmt.Errorf("load floor program: %w", err)
	}
	return topo.RX.Do(func() (err error) {
		g.link, err = attachXDP(g.objs.FloorDrop)
		return err
	})
}

func (g *XDPDrop) Seen() (uint64, error) { return parsedL4(g.objs.Parsed) }

func (g *XDPDrop) Close() error { return detachXDP(&g.link, &g.objs) }

// parsedL4 is the frames a parse-then-verdict program (the floor, a probe:
// parsed.h) counted as TCP or UDP, over every CPU.
func parsedL4(parsed *ebpf.Map) (uint64, error) {
	var perCPU []uint64
	if err := parsed.Lookup(uint32(floorParseResultPARSE_L4), &perCPU); err != nil {
		return 0, fmt.Errorf("read parsed frames: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// detachXDP closes *l, if attached, and then objs.
func detachXDP(l *link.Link, objs io.Closer) error {
	var errs []error
	if *l != nil {
		errs = append(errs, (*l).Close())
		*l = nil
	}
	errs = append(errs, objs.Close())
	return errors.Join(errs...)
}

// Knockgate is the gate under test, attached the way a user attaches it:
// with the knockgate command (Binary), inside the receiving namespace. With
// no Binary it calls loader.Attach in-process, which is what the command
// does.
type Knockgate struct {
	Binary     string
	MaxSources uint32
	// All: --protect all (every port closed; the host's flows pass).
	All      bool
	rx       *netns.NS
	attached bool
}

func NewKnockgate(binary string) *Knockgate {
	return &Knockgate{Binary: binary, MaxSources: loader.DefaultMaxSources}
}

// NewKnockgateAll is knockgate with --protect all.
func NewKnockgateAll(binary string) *Knockgate {
	return &Knockgate{Binary: binary, MaxSources: loader.DefaultMaxSources, All: true}
}

func (g *Knockgate) Name() string {
	if g.All {
		return nameKnockgateAll
	}
	return nameKnockgate
}
func (g *Knockgate) Floor() bool       { return false }
func (g *Knockgate) ProtectsAll() bool { return g.All }

// attachArgs is the knockgate command line every knockgate gate here is
// made with: the policy every gate of the benchmark enforces (all: every
// port protected).
func attachArgs(maxSources uint32, all bool) []string {
	protect := strconv.Itoa(ProtectedPort)
	if all {
		protect = "all"
	}
	return []string{"attach", RxIface,
		"--sequence", fmt.Sprintf("%d,%d", KnockPort1, KnockPort2),
		"--step-timeout", StepTimeout.String(), "--open", Open.String(),
		"--protect", protect,
		"--max-sources", strconv.FormatUint(uint64(maxSources), 10),
		"--mode", "native", "--no-grant-self"}
}

func (g *Knockgate) Setup(topo *Topology) error {
	g.rx = topo.RX
	if g.Binary != "" {
		_, err := topo.RX.Run(g.Binary, attachArgs(g.MaxSources, g.All)...)
		g.attached = err == nil
		return err
	}
	return topo.RX.Do(func() error {
		gate, err := loader.Create(loader.Options{
			Interfaces: []string{RxIface},
			Mode:       loader.ModeNative,
			MaxSources: g.MaxSources,
			Config: maps.Config{Policy: policy.Policy{
				Services: []policy.Service{{
					Name:        policy.DefaultService,
					Sequence:    []policy.Port{{Num: KnockPort1, Proto: policy.TCP}, {Num: KnockPort2, Proto: policy.TCP}},
					StepTimeout: StepTimeout,
					Open:        Open,
					Protect:     []policy.Port{{Num: ProtectedPort, Proto: policy.TCP}},
					ProtectAll:  g.All,
				}},
				// As the command's defaults.
				Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute,
			}},
		})
		if err != nil {
			return err
		}
		g.attached = true
		return gate.Close() // the pinned gate keeps running
	})
}

// Seen is the gate's dropped_protected counter.
func (g *Knockgate) Seen() (uint64, error) {
	c, err := g.counters()
	return c.Verdict(bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED), err
}

func (g *Knockgate) counters() (maps.Counters, error) {
	gate, err := loader.Open(RxIface)
	if err != nil {
		return maps.Counters{}, err
	}
	defer gate.Close()
	return gate.Maps.ReadCounters()
}

// Tracked counts the sources with knock progress.
func (g *Knockgate) Tracked() (int, error) {
	gate, err := loader.Open(RxIface)
	if err != nil {
		return 0, err
	}
	defer gate.Close()
	return occupied(gate.Maps)
}

// Close detaches the gate, which removes its pins.
func (g *Knockgate) Close() error {
	if !g.attached {
		return nil
	}
	g.attached = false
	if g.Binary != "" {
		_, err := g.rx.Run(g.Binary, "detach", RxIface)
		return err
	}
	return loader.Detach(RxIface)
}

// KnockgateCLI is knockgate of another build (an earlier design, to
// measure against), driven only through its command line, which reads its
// own pins: attach, status --json, detach.
type KnockgateCLI struct {
	name, Binary string
	MaxSources   uint32
	rx           *netns.NS
	attached     bool
}

const nameBase = "knockgate-base"

func NewKnockgateCLI(name, binary string) *KnockgateCLI {
	return &KnockgateCLI{name: name, Binary: binary, MaxSources: loader.DefaultMaxSources}
}

func (g *KnockgateCLI) Name() string { return g.name }
func (g *KnockgateCLI) Floor() bool  { return false }

func (g *KnockgateCLI) Setup(topo *Topology) error {
	g.rx = topo.RX
	_, err := topo.RX.Run(g.Binary, attachArgs(g.MaxSources, false)...)
	g.attached = err == nil
	return err
}

// status is what the build's status --json says of the fields read here.
func (g *KnockgateCLI) status() (st struct {
	Counters map[string]uint64 `json:"counters"`
	Sources  []struct {
		State string `json:"state"`
	} `json:"sources"`
}, err error) {
	out, err := g.rx.Run(g.Binary, "status", RxIface, "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("%s status --json: %w", g.name, err)
	}
	return st, nil
}

// Seen is the gate's dropped_protected counter.
func (g *KnockgateCLI) Seen() (uint64, error) {
	st, err := g.status()
	return st.Counters["dropped_protected"], err
}

// Tracked counts the sources with knock progress.
func (g *KnockgateCLI) Tracked() (int, error) {
	st, err := g.status()
	n := 0
	for _, s := range st.Sources {
		if s.State == "knocking" {
			n++
		}
	}
	return n, err
}

func (g *KnockgateCLI) Close() error {
	if !g.attached {
		return nil
	}
	g.attached = false
	_, err := g.rx.Run(g.Binary, "detach", RxIface)
	return err
}

// sweepPins detaches knockgate gates a killed run left on our interfaces.
func sweepPins() error {
	names, err := loader.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if hasOurPrefix(n) {
			errs = append(errs, loader.Detach(n))
		}
	}
	// Half-made pin directories of an interrupted attach are swept by the
	// loader itself, at its next change.
	return errors.Join(errs...)
}

// nftSets are the knock gate's sets with timeouts, filled from the packet
// path, shared by both rulesets.
var nftSets = fmt.Sprintf(`	set knocked {
		type ipv4_addr
		flags timeout
		timeout %[1]s
		size 65536
	}
	set granted {
		type ipv4_addr
		flags timeout
		timeout %[2]s
		size 65536
	}`, nftDuration(StepTimeout), nftDuration(Open))

// nftKnocks are the knock rules: a first knock adds the source to knocked,
// a second from a knocked source grants it; knock packets are dropped like
// knockgate drops them.
var nftKnocks = fmt.Sprintf(`		tcp dport %[1]d tcp flags & (fin|syn|rst|ack) == syn add @knocked { ip saddr } drop
		tcp dport %[2]d tcp flags & (fin|syn|rst|ack) == syn ip saddr @knocked delete @knocked { ip saddr } update @granted { ip saddr } drop`,
	KnockPort1, KnockPort2)

// nftRuleset is the usual nftables knock gate (the nftables wiki's "Port
// knocking" recipe). Written for the flood's benefit, as a careful
// administrator would: the protected port's rules come first, so a flood
// packet takes one set lookup and a verdict, and there is no conntrack.
var nftRuleset = fmt.Sprintf(`table inet kgb {
%[1]s
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport %[3]d ip saddr @granted accept
		tcp dport %[3]d counter drop
%[2]s
		tcp dport { %[4]d, %[5]d } drop
	}
}
`, nftSets, nftKnocks, ProtectedPort, KnockPort1, KnockPort2)

// nftRulesetAll is the same gate protecting every port, as the recipe's
// "drop everything else" is written with conntrack: established and related
// traffic first (the host's own connections and the sessions a grant let
// in), loopback, granted sources, the knocks, then drop.
var nftRulesetAll = fmt.Sprintf(`table inet kgb {
%[1]s
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif lo accept
		ip saddr @granted accept
%[2]s
		tcp dport %[3]d counter drop
		counter drop
	}
}
`, nftSets, nftKnocks, ProtectedPort)

func nftDuration(d time.Duration) string { return fmt.Sprintf("%ds", int(d.Seconds())) }

// Nftables is the nftables knock gate.
type Nftables struct {
	napi stackNAPI
	all  bool
	rx   *netns.NS
}

func NewNftables(mode PeerNAPI) *Nftables { return &Nftables{napi: stackNAPI{mode: mode}} }

// NewNftablesAll is the nftables gate protecting every port (conntrack).
func NewNftablesAll(mode PeerNAPI) *Nftables {
	return &Nftables{napi: stackNAPI{mode: mode}, all: true}
}

func (g *Nftables) Name() string {
	if g.all {
		return nameNftAll
	}
	return nameNft
}
func (g *Nftables) Floor() bool       { return false }
func (g *Nftables) ProtectsAll() bool { return g.all }
func (g *Nftables) Setup(topo *Topology) error {
	g.rx = topo.RX
	cmd := topo.RX.Cmd("nft", "-f", "-")
	rules := nftRuleset
	if g.all {
		rules = nftRulesetAll
	}
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("load nftables ruleset: %w: %s", err, out)
	}
	return g.napi.enable(topo)
}

var nftCounter = regexp.MustCompile(fmt.Sprintf(`tcp dport %d counter packets (\d+)`, ProtectedPort))

func (g *Nftables) Seen() (uint64, error) {
	out, err := g.rx.Run("nft", "list", "chain", "inet", "kgb", "input")
	if err != nil {
		return 0, err
	}
	m := nftCounter.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no drop counter in:\n%s", out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

func (g *Nftables) Close() error { return g.napi.close() }

// iptablesRules is the classic iptables knock gate with the recent match,
// ordered like the nftables one.
var iptablesRules = [][]string{
	{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(ProtectedPort),
		"-m", "recent", "--name", "kgb_granted", "--rcheck", "--seconds", strconv.Itoa(int(Open.Seconds())), "-j", "ACCEPT"},
	{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(ProtectedPort), "-j", "DROP"},
	{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(KnockPort1), "--syn",
		"-m", "recent", "--name", "kgb_knocked", "--set", "-j", "DROP"},
	{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(KnockPort2), "--syn",
		"-m", "recent", "--name", "kgb_knocked", "--rcheck", "--seconds", strconv.Itoa(int(StepTimeout.Seconds())),
		"-m", "recent", "--name", "kgb_knocked", "--remove",
		"-m", "recent", "--name", "kgb_granted", "--set", "-j", "DROP"},
	{"-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", fmt.Sprintf("%d,%d", KnockPort1, KnockPort2), "-j", "DROP"},
}

// iptablesRulesAll is the same gate protecting every port, with
// conntrack's established,related first, like nftRulesetAll.
var iptablesRulesAll = [][]string{
	{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
	{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
	{"-A", "INPUT", "-m", "recent", "--name", "kgb_granted", "--rcheck", "--seconds", strconv.Itoa(int(Open.Seconds())), "-j", "ACCEPT"},
	iptablesRules[2],
	iptablesRules[3],
	{"-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(ProtectedPort), "-j", "DROP"},
	{"-A", "INPUT", "-j", "DROP"},
}

// Iptables is the iptables recent-match knock gate.
type Iptables struct {
	napi stackNAPI
	all  bool
	rx   *netns.NS
}

func NewIptables(mode PeerNAPI) *Iptables { return &Iptables{napi: stackNAPI{mode: mode}} }

// NewIptablesAll is the iptables gate protecting every port (conntrack).
func NewIptablesAll(mode PeerNAPI) *Iptables {
	return &Iptables{napi: stackNAPI{mode: mode}, all: true}
}

func (g *Iptables) Name() string {
	if g.all {
		return nameIptAll
	}
	return nameIpt
}
func (g *Iptables) Floor() bool       { return false }
func (g *Iptables) ProtectsAll() bool { return g.all }
func (g *Iptables) Setup(topo *Topology) error {
	g.rx = topo.RX
	rules := iptablesRules
	if g.all {
		rules = iptablesRulesAll
	}
	for _, r := range rules {
		if _, err := topo.RX.Run("iptables", append([]string{"-w"}, r...)...); err != nil {
			return err
		}
	}
	return g.napi.enable(topo)
}

var iptCounter = regexp.MustCompile(fmt.Sprintf(`(?m)^\s*(\d+)\s+\d+\s+DROP\s+.*tcp dpt:%d\s*$`, ProtectedPort))

func (g *Iptables) Seen() (uint64, error) {
	out, err := g.rx.Run("iptables", "-w", "-L", "INPUT", "-v", "-x", "-n")
	if err != nil {
		return 0, err
	}
	m := iptCounter.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no drop counter in:\n%s", out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

func (g *Iptables) Close() error { return g.napi.close() }
