//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/service"
)

// statusJSON is the --json form of status: one object per gate.
type statusJSON struct {
	Gate string `json:"gate"`
	// Interface and Mode are the gate's first interface and how it is
	// attached ("missing" or "waiting" when it is not): the whole answer
	// for a gate on one interface.
	Interface  string            `json:"interface"`
	Mode       string            `json:"mode"`
	Interfaces []ifaceJSON       `json:"interfaces"`
	Config     configJSON        `json:"config"`
	SafeMode   *safeModeJSON     `json:"safe_mode,omitempty"`
	Flows      flowsJSON         `json:"flows"`
	SPA        spaJSON           `json:"spa"`
	Fwknop     *fwknopJSON       `json:"fwknop,omitempty"` // with fwknop_access only
	Fleet      json.RawMessage   `json:"fleet,omitempty"`  // as run writes it: with [fleet] only
	Counters   map[string]uint64 `json:"counters"`
	// Services are the gate's services, default first; Config is
	// default's too, as status showed it before services.
	Services []serviceJSON `json:"services"`
	Sources  []sourceJSON  `json:"sources"`
}

// serviceJSON is one service: its settings (Allow is its own list; the
// gate's is config's), its grants live now, and the program's counters of
// grants made and found expired.
type serviceJSON struct {
	Name        string   `json:"name"`
	Sequence    []string `json:"sequence"` // empty: none (SPA only)
	StepTimeout string   `json:"step_timeout"`
	Open        string   `json:"open"`
	Protect     []string `json:"protect"`
	Allow       []string `json:"allow"`
	GrantsOpen  int      `json:"grants_open"`
	Granted     uint64   `json:"granted"`
	Expired     uint64   `json:"expired"`
}

type ifaceJSON struct {
	Name    string `json:"name"`
	State   string `json:"state"`          // attached, missing or waiting
	Mode    string `json:"mode,omitempty"` // native or generic (attached, missing)
	Ifindex int    `json:"ifindex,omitempty"`
	// Counters are the verdicts of packets that came in on this interface
	// (attached); SharedWith names interfaces of the gate counted together
	// with it (their ifindexes share a counter slot).
	Counters   map[string]uint64 `json:"counters,omitempty"`
	SharedWith []string          `json:"shared_with,omitempty"`
}

// flowsJSON is the flow table: how many flows of the host's it holds (live
// ones), of how many slots, and with --flows the flows themselves.
type flowsJSON struct {
	Enabled bool       `json:"enabled"`
	Count   int        `json:"count"`
	Max     int        `json:"max"`
	IdleTCP string     `json:"idle_tcp"`
	IdleUDP string     `json:"idle_udp"`
	Entries []flowJSON `json:"entries,omitempty"`
}

type flowJSON struct {
	Proto    string `json:"proto"`
	Local    string `json:"local"`
	Remote   string `json:"remote"`
	LastSeen string `json:"last_seen"` // RFC 3339
	Answered bool   `json:"answered"`
	Closing  bool   `json:"closing"`
}

// spaJSON is single-packet authorization: the port (0: off), the window,
// the gate's clock as the program reads it, and the keys (never their
// secrets).
type spaJSON struct {
	Port   uint16 `json:"port"`
	Window string `json:"window"`
	// Clock is the Unix time the program judges timestamps by, and
	// ClockSkewMs how far it is from this host's clock (non-zero only when
	// the kernel's TAI offset changed since the configuration was written).
	Clock       string       `json:"clock"`
	ClockSkewMs int64        `json:"clock_skew_ms"`
	Keys        []spaKeyJSON `json:"keys"`
}

type spaKeyJSON struct {
	ID           uint32 `json:"id"`
	Name         string `json:"name"`
	AnyAddress   bool   `json:"any_address"`
	Open         string `json:"open,omitempty"`          // the key's own window; absent: the gate's
	LastAccepted string `json:"last_accepted,omitempty"` // RFC 3339; absent: never
	// Services are those the key may open (its scope).
	Services []string `json:"services"`
}

// fwknopJSON is fwknop's clients: the HMAC keys the program tries, each
// named by the access.conf stanzas that use it ("1,3"), and how many
// datagrams the gate remembers against replays.
type fwknopJSON struct {
	Keys       []string `json:"keys"`
	Remembered int      `json:"remembered"`
}

type configJSON struct {
	Sequence    []string `json:"sequence"`     // "9000/tcp": protocol always given
	StepTimeout string   `json:"step_timeout"` // Go duration syntax
	Open        string   `json:"open"`
	Protect     []string `json:"protect"`
	Allow       []string `json:"allow"`
	Generation  uint32   `json:"generation"`
}

// safeModeJSON is a change made with --confirm: pending until its deadline,
// or lapsed (rolled back by the program, the previous configuration ruling).
type safeModeJSON struct {
	State    string     `json:"state"` // pending or lapsed
	Deadline string     `json:"deadline"`
	Previous configJSON `json:"previous"`
}

// sourceJSON is one source's grant of one service, or its progress through
// one service's sequence: a source granted two services is listed twice.
type sourceJSON struct {
	Addr    string `json:"addr"`
	Service string `json:"service"`
	State   string `json:"state"` // "open" or "knocking"
	Stage   int    `json:"stage"`
	Expires string `json:"expires"` // RFC 3339
}

// gateStatus is everything status shows about one gate.
type gateStatus struct {
	gate      string
	ifaces    []loader.Iface
	verdicts  [maps.IfaceSlots]maps.VerdictCounts
	cfg       maps.Config
	safe      maps.SafeMode
	counters  maps.Counters
	svcCounts map[string]maps.ServiceCounters
	sources   []maps.SourceState
	flows     []maps.Flow // live ones
	maxFlows  int
	listFlows bool
	spaKeys   []maps.SPAKey
	// fwknopKeys name the program's fwknop HMAC keys by their stanzas;
	// fwknopSeen is how many datagrams it remembers.
	fwknopKeys []string
	fwknopSeen int
	clock      time.Time // the gate's Unix time, read with now
	now        time.Time
	fleet      json.RawMessage // run's fleet figures, if it serves a fleet
}

func statusCommand() *command {
	var asJSON, listFlows bool
	fs := newFlags("status")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object")
	fs.BoolVar(&listFlows, "flows", false, "list the live flows too")
	return &command{
		name:     "status",
		synopsis: "[GATE|IFACE] [--json] [--flows]",
		summary:  "show a gate's interfaces, configuration, counters and sources",
		help: "Show the gate (named, or by one of its interfaces): each interface attached,\n" +
			"missing (gone: nothing is enforced there) or waiting (not there yet), the\n" +
			"configuration, its services (when it has more than default) with the grants\n" +
			"each has open, counters (per interface too) and tracked sources (a grant of one\n" +
			"service, or progress through one service's sequence). Without an argument:\n" +
			"the only gate, or every one (not with --json).",
		minArgs: 0, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			names, err := pickGates(args, listGates, !asJSON)
			if err != nil {
				return err
			}
			for i, name := range names {
				st, err := readStatus(name)
				if err != nil {
					return err
				}
				st.listFlows = listFlows
				if asJSON {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(st.json()); err != nil {
						return fmt.Errorf("write status: %w", err)
					}
					continue
				}
				if i > 0 {
					fmt.Fprintln(e.stdout)
				}
				st.print(e.stdout, time.Now())
			}
			return nil
		},
	}
}

func readStatus(arg string) (*gateStatus, error) {
	g, err := openGate(arg)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	st := &gateStatus{gate: g.Name}
	if st.ifaces, err = g.Interfaces(); err != nil {
		return nil, err
	}
	if st.cfg, err = g.Config(); err != nil {
		return nil, err
	}
	if st.safe, err = g.SafeMode(); err != nil {
		return nil, err
	}
	if st.counters, err = g.Counters(); err != nil {
		return nil, err
	}
	if st.verdicts, err = g.Verdicts(); err != nil {
		return nil, err
	}
	if st.svcCounts, err = g.ServiceCounters(); err != nil {
		return nil, err
	}
	if st.sources, err = g.Sources(); err != nil {
		return nil, err
	}
	flows, err := g.Flows()
	if err != nil {
		return nil, err
	}
	for _, f := range flows {
		if f.Live {
			st.flows = append(st.flows, f)
		}
	}
	st.maxFlows = int(g.Sizes().MaxFlows)
	if st.spaKeys, err = g.SPAKeys(); err != nil {
		return nil, err
	}
	if st.fwknopKeys, err = g.FwknopKeyNames(); err != nil {
		return nil, err
	}
	seen, err := g.FwknopSeen()
	if err != nil {
		return nil, err
	}
	st.fwknopSeen = len(seen)
	st.clock, st.now = maps.GateUnixTime(&st.cfg), time.Now()
	if b, err := os.ReadFile(service.FleetStatusFile(g.Name)); err == nil && json.Valid(b) {
		st.fleet = b
	}
	return st, nil
}

// encodeServices is every service of cfg, with its grants open and its
// counters.
func (st *gateStatus) encodeServices() []serviceJSON {
	open := maps.GrantsOpen(st.sources)
	out := []serviceJSON{}
	for i := range st.cfg.Policy.Services {
		svc := &st.cfg.Policy.Services[i]
		allow := prefixList(svc.Allow)
		out = append(out, serviceJSON{
			Name:        svc.Name,
			Sequence:    portsList(svc.Sequence),
			StepTimeout: svc.StepTimeout.String(),
			Open:        svc.Open.String(),
			Protect:     protectList(svc),
			Allow:       allow,
			GrantsOpen:  open[svc.Name],
			Granted:     st.svcCounts[svc.Name].Granted,
			Expired:     st.svcCounts[svc.Name].Expired,
		})
	}
	return out
}

func protectList(svc *policy.Service) []string {
	if svc.ProtectAll {
		return []string{"all"}
	}
	return portsList(svc.Protect)
}

// encodeConfig is the service default's settings and the gate's allow
// list, as status has always shown them.
func encodeConfig(cfg maps.Config) configJSON {
	d := cfg.Policy.Default()
	if d == nil {
		d = &policy.Service{}
	}
	allow := prefixList(cfg.Policy.Allow)
	if allow == nil {
		allow = []string{}
	}
	return configJSON{
		Sequence:    portsList(d.Sequence),
		StepTimeout: d.StepTimeout.String(),
		Open:        d.Open.String(),
		Protect:     protectList(d),
		Allow:       allow,
		Generation:  cfg.Generation,
	}
}

// ifaceHow is how an interface is doing in one word: its attach mode, or
// missing or waiting.
func ifaceHow(ifc loader.Iface) string {
	if ifc.State == loader.Attached {
		return string(ifc.Mode)
	}
	return string(ifc.State)
}

// sharedSlot names the other attached interfaces of the gate whose
// verdicts are counted in ifc's slot.
func (st *gateStatus) sharedSlot(ifc loader.Iface) []string {
	var out []string
	for _, o := range st.ifaces {
		if o.Name != ifc.Name && o.State == loader.Attached && maps.IfaceSlot(o.Ifindex) == maps.IfaceSlot(ifc.Ifindex) {
			out = append(out, o.Name)
		}
	}
	return out
}

func (st *gateStatus) json() statusJSON {
	out := statusJSON{
		Gate:       st.gate,
		Interfaces: []ifaceJSON{},
		Config:     encodeConfig(st.cfg),
		Counters:   make(map[string]uint64, len(maps.CounterNames)),
		Services:   st.encodeServices(),
		Sources:    []sourceJSON{},
	}
	for i, ifc := range st.ifaces {
		j := ifaceJSON{Name: ifc.Name, State: string(ifc.State), Mode: string(ifc.Mode)}
		if ifc.State == loader.Attached {
			j.Ifindex = ifc.Ifindex
			j.Counters = make(map[string]uint64, maps.Verdicts)
			for v, n := range st.verdicts[maps.IfaceSlot(ifc.Ifindex)] {
				j.Counters[maps.CounterNames[v]] = n
			}
			j.SharedWith = st.sharedSlot(ifc)
		}
		out.Interfaces = append(out.Interfaces, j)
		if i == 0 {
			out.Interface, out.Mode = ifc.Name, ifaceHow(ifc)
		}
	}
	if st.safe.Pending || st.safe.Lapsed {
		state := "pending"
		if st.safe.Lapsed {
			state = "lapsed"
		}
		out.SafeMode = &safeModeJSON{State: state, Deadline: stamp(maps.BootToTime(st.safe.Deadline)),
			Previous: encodeConfig(st.safe.Previous)}
	}
	for i, name := range maps.CounterNames {
		out.Counters[name] = st.counters[i]
	}
	out.Flows = flowsJSON{Enabled: st.cfg.Policy.Flows, Count: len(st.flows), Max: st.maxFlows,
		IdleTCP: st.cfg.Policy.FlowIdleTCP.String(), IdleUDP: st.cfg.Policy.FlowIdleUDP.String()}
	if st.listFlows {
		out.Flows.Entries = []flowJSON{}
		for _, f := range st.flows {
			out.Flows.Entries = append(out.Flows.Entries, flowJSON{Proto: f.Proto.String(), Local: f.Local.String(),
				Remote: f.Remote.String(), LastSeen: stamp(f.LastSeen), Answered: f.Answered, Closing: f.Closing})
		}
	}
	out.Fleet = st.fleet
	out.SPA = spaJSON{Port: st.cfg.Policy.SPAPort, Window: st.cfg.Policy.SPAWindow.String(), Clock: stamp(st.clock),
		ClockSkewMs: st.clock.Sub(st.now).Milliseconds(), Keys: []spaKeyJSON{}}
	for _, k := range st.spaKeys {
		j := spaKeyJSON{ID: k.ID, Name: k.Name, AnyAddress: k.AnyAddress, Services: k.Opens}
		if k.Open > 0 {
			j.Open = k.Open.String()
		}
		if !k.LastAccepted.IsZero() {
			j.LastAccepted = stamp(k.LastAccepted)
		}
		out.SPA.Keys = append(out.SPA.Keys, j)
	}
	if len(st.fwknopKeys) > 0 || st.fwknopSeen > 0 {
		out.Fwknop = &fwknopJSON{Keys: append([]string{}, st.fwknopKeys...), Remembered: st.fwknopSeen}
	}
	for _, s := range st.sources {
		out.Sources = append(out.Sources, sourceJSON{
			Addr: s.Addr.String(), Service: s.Service, State: s.State, Stage: s.Stage, Expires: stamp(s.Expires),
		})
	}
	return out
}

func (st *gateStatus) print(w io.Writer, now time.Time) {
	fmt.Fprintf(w, "knockgate on %s\n", describeIfaces(st.gate, st.ifaces))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, ifc := range st.ifaces {
		switch ifc.State {
		case loader.Attached:
			fmt.Fprintf(tw, "  %s:\tattached (%s), ifindex %d\n", ifc.Name, ifc.Mode, ifc.Ifindex)
		case loader.Missing:
			fmt.Fprintf(tw, "  %s:\tmissing: the interface is gone, nothing is enforced there (attach %s again when it is back)\n", ifc.Name, ifc.Name)
		case loader.Waiting:
			fmt.Fprintf(tw, "  %s:\twaiting: not attached yet (the interface was not there)\n", ifc.Name)
		}
	}
	p := st.cfg.Policy
	for _, l := range config.Lines(&p) {
		fmt.Fprintf(tw, "  %s:\t%s\n", l.Label, l.Value)
	}
	fmt.Fprintf(tw, "  generation:\t%d\n", st.cfg.Generation)
	if st.cfg.Policy.Flows {
		fmt.Fprintf(tw, "  flows:\t%d live of %d slots (idle: tcp %s, udp %s)\n", len(st.flows), st.maxFlows, st.cfg.Policy.FlowIdleTCP, st.cfg.Policy.FlowIdleUDP)
	} else {
		fmt.Fprintf(tw, "  flows:\toff\n")
	}
	if st.cfg.Policy.SPAPort != 0 {
		fmt.Fprintf(tw, "  spa:\tport %d/udp, window ±%s, %d keys; gate clock %s (%+dms from this host's)\n", st.cfg.Policy.SPAPort,
			st.cfg.Policy.SPAWindow, len(st.spaKeys), st.clock.UTC().Format("2006-01-02T15:04:05.000Z"), st.clock.Sub(st.now).Milliseconds())
		for _, k := range st.spaKeys {
			last := "never used"
			if !k.LastAccepted.IsZero() {
				last = "last accepted " + stamp(k.LastAccepted)
			}
			extra := ""
			if k.AnyAddress {
				extra += ", any address"
			}
			if k.Open > 0 {
				extra += ", open " + k.Open.String()
			}
			switch {
			case len(k.Opens) == 0:
				extra += ", opens no service (every one it named is gone)"
			case len(k.Opens) > 1 || k.Opens[0] != policy.DefaultService:
				extra += ", services " + strings.Join(k.Opens, ",")
			}
			fmt.Fprintf(tw, "  \tkey %d %s%s: %s\n", k.ID, k.Name, extra, last)
		}
	} else {
		fmt.Fprintf(tw, "  spa:\toff\n")
	}
	if len(st.fwknopKeys) > 0 || st.fwknopSeen > 0 {
		fmt.Fprintf(tw, "  fwknop:\t%d HMAC keys (access.conf stanzas %s), %d datagrams remembered against replays\n",
			len(st.fwknopKeys), strings.Join(st.fwknopKeys, "; "), st.fwknopSeen)
	}
	if st.fleet != nil {
		var f service.FleetStatus
		json.Unmarshal(st.fleet, &f)
		fmt.Fprintf(tw, "  fleet:\t%s, %d peers, published %d, received %d, watch restarts %d, pending %d, last sync %s\n",
			f.Name, f.Peers, f.Published, f.Received, f.WatchRestarts, f.Pending, f.LastSync)
		if f.LastError != "" {
			fmt.Fprintf(tw, "  \tlast error: %s\n", f.LastError)
		}
	}
	tw.Flush()
	if len(p.Services) > 1 {
		st.printServices(w)
	}
	if st.listFlows {
		fmt.Fprintln(w, "flows:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROTO\tLOCAL\tREMOTE\tLAST SEEN\tSTATE")
		for _, f := range st.flows {
			state := "open"
			if !f.Answered {
				state = "unanswered"
			}
			if f.Closing {
				state = "closing"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", f.Proto, f.Local, f.Remote, stamp(f.LastSeen), state)
		}
		tw.Flush()
	}
	switch {
	case st.safe.Pending:
		fmt.Fprintf(w, "safe mode: this configuration is undone at %s (in %s) unless \"knockgate confirm %s\" runs\n",
			stamp(maps.BootToTime(st.safe.Deadline)), maps.BootToTime(st.safe.Deadline).Sub(now).Round(time.Second), st.gate)
	case st.safe.Lapsed && st.safe.Previous.Generation == 0:
		fmt.Fprintf(w, "safe mode: the attach was not confirmed by %s: the gate lets everything through (the next attach or detach removes it)\n",
			stamp(maps.BootToTime(st.safe.Deadline)))
	case st.safe.Lapsed:
		fmt.Fprintf(w, "safe mode: a change was not confirmed by %s and has been rolled back\n", stamp(maps.BootToTime(st.safe.Deadline)))
	}

	fmt.Fprintln(w, "counters:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, name := range maps.CounterNames {
		fmt.Fprintf(tw, "  %s\t%d\n", name, st.counters[i])
	}
	tw.Flush()
	if attached := st.attached(); len(attached) > 1 {
		fmt.Fprintln(w, "per interface:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  VERDICT")
		for _, ifc := range attached {
			fmt.Fprintf(tw, "\t%s", ifc.Name)
		}
		fmt.Fprintln(tw)
		for v := range maps.Verdicts {
			fmt.Fprintf(tw, "  %s", maps.CounterNames[v])
			for _, ifc := range attached {
				fmt.Fprintf(tw, "\t%d", st.verdicts[maps.IfaceSlot(ifc.Ifindex)][v])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		for _, ifc := range attached {
			if shared := st.sharedSlot(ifc); len(shared) > 0 {
				fmt.Fprintf(w, "  (%s is counted together with %s: their ifindexes share a counter slot)\n", ifc.Name, strings.Join(shared, ", "))
			}
		}
	}

	if len(st.sources) == 0 {
		fmt.Fprintln(w, "sources: none")
		return
	}
	fmt.Fprintln(w, "sources:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ADDRESS\tSERVICE\tSTATE\tSTAGE\tEXPIRES")
	for _, s := range st.sources {
		stage := "-" // a service without a sequence
		if svc := st.cfg.Policy.Service(s.Service); svc != nil && len(svc.Sequence) > 0 {
			stage = fmt.Sprintf("%d/%d", s.Stage, len(svc.Sequence))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s (in %s)\n", s.Addr, s.Service, s.State, stage,
			stamp(s.Expires), s.Expires.Sub(now).Round(time.Second))
	}
	tw.Flush()
}

// printServices is the table of the gate's services: their settings (from
// the option table) and their grants open now.
func (st *gateStatus) printServices(w io.Writer) {
	p := st.cfg.Policy
	open := maps.GrantsOpen(st.sources)
	fmt.Fprintln(w, "services:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i := range p.Services {
		svc := &p.Services[i]
		lines := config.ServiceLines(&p, svc)
		if i == 0 {
			fmt.Fprint(tw, "  SERVICE")
			for _, l := range lines {
				fmt.Fprintf(tw, "\t%s", strings.ToUpper(l.Label))
			}
			fmt.Fprintln(tw, "\tGRANTS OPEN")
		}
		fmt.Fprintf(tw, "  %s", svc.Name)
		for _, l := range lines {
			fmt.Fprintf(tw, "\t%s", l.Value)
		}
		fmt.Fprintf(tw, "\t%d\n", open[svc.Name])
	}
	tw.Flush()
}

func (st *gateStatus) attached() []loader.Iface {
	var out []loader.Iface
	for _, ifc := range st.ifaces {
		if ifc.State == loader.Attached {
			out = append(out, ifc)
		}
	}
	return out
}
