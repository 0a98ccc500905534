package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/knockgate/knockgate/maps"
)

// statusJSON is the --json form of status: one object per gate.
type statusJSON struct {
	Interface string            `json:"interface"`
	Mode      string            `json:"mode"`
	Config    configJSON        `json:"config"`
	Counters  map[string]uint64 `json:"counters"`
	Sources   []sourceJSON      `json:"sources"`
}

type configJSON struct {
	Sequence    []string `json:"sequence"`     // "9000/tcp": protocol always given
	StepTimeout string   `json:"step_timeout"` // Go duration syntax
	Open        string   `json:"open"`
	Protect     []string `json:"protect"`
	Allow       []string `json:"allow"`
	Generation  uint32   `json:"generation"`
}

type sourceJSON struct {
	Addr    string `json:"addr"`
	State   string `json:"state"` // "open" or "knocking"
	Stage   int    `json:"stage"`
	Expires string `json:"expires"` // RFC 3339
}

// gateStatus is everything status shows about one gate.
type gateStatus struct {
	iface    string
	cfg      maps.Config
	allow    []string
	counters maps.Counters
	sources  []maps.SourceState
}

func statusCommand() *command {
	var asJSON bool
	fs := newFlags("status")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object")
	return &command{
		name:     "status",
		synopsis: "[IFACE] [--json]",
		summary:  "show a gate's configuration, counters and sources",
		help: "Show the configuration, counters and tracked sources (granted, or part-way\n" +
			"through the sequence) of the gate on IFACE. Without IFACE: the only attached\n" +
			"gate, or every one (not with --json).",
		minArgs: 0, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			names, err := pickGates(args, listGates, !asJSON)
			if err != nil {
				return err
			}
			for i, iface := range names {
				st, err := readStatus(iface)
				if err != nil {
					return err
				}
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

func readStatus(iface string) (*gateStatus, error) {
	g, err := openGate(iface)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	st := &gateStatus{iface: iface}
	if st.cfg, err = g.Maps.ReadConfig(); err != nil {
		return nil, err
	}
	allow, err := g.Maps.AllowList()
	if err != nil {
		return nil, err
	}
	st.allow = prefixList(allow)
	if st.counters, err = g.Maps.ReadCounters(); err != nil {
		return nil, err
	}
	if st.sources, err = g.Maps.Sources(); err != nil {
		return nil, err
	}
	return st, nil
}

func encodeConfig(cfg maps.Config, allow []string) configJSON {
	if allow == nil {
		allow = []string{}
	}
	return configJSON{
		Sequence:    portsList(cfg.Sequence),
		StepTimeout: cfg.StepTimeout.String(),
		Open:        cfg.Open.String(),
		Protect:     portsList(cfg.Protected),
		Allow:       allow,
		Generation:  cfg.Generation,
	}
}

func (st *gateStatus) json() statusJSON {
	out := statusJSON{
		Interface: st.iface,
		Mode:      st.cfg.Mode.String(),
		Config:    encodeConfig(st.cfg, st.allow),
		Counters:  make(map[string]uint64, len(maps.CounterNames)),
		Sources:   []sourceJSON{},
	}
	for i, name := range maps.CounterNames {
		out.Counters[name] = st.counters[i]
	}
	for _, s := range st.sources {
		out.Sources = append(out.Sources, sourceJSON{
			Addr: s.Addr.String(), State: s.State, Stage: s.Stage, Expires: stamp(s.Expires),
		})
	}
	return out
}

func (st *gateStatus) print(w io.Writer, now time.Time) {
	allow := "none"
	if len(st.allow) > 0 {
		allow = strings.Join(st.allow, ",")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "knockgate on %s (%s)\n", st.iface, st.cfg.Mode)
	fmt.Fprintf(tw, "  sequence:\t%s\n", maps.FormatPorts(st.cfg.Sequence))
	fmt.Fprintf(tw, "  step timeout:\t%s\n", st.cfg.StepTimeout)
	fmt.Fprintf(tw, "  open:\t%s\n", st.cfg.Open)
	fmt.Fprintf(tw, "  protecting:\t%s\n", maps.FormatPorts(st.cfg.Protected))
	fmt.Fprintf(tw, "  allowing:\t%s\n", allow)
	fmt.Fprintf(tw, "  generation:\t%d\n", st.cfg.Generation)
	tw.Flush()

	fmt.Fprintln(w, "counters:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, name := range maps.CounterNames {
		fmt.Fprintf(tw, "  %s\t%d\n", name, st.counters[i])
	}
	tw.Flush()

	if len(st.sources) == 0 {
		fmt.Fprintln(w, "sources: none")
		return
	}
	fmt.Fprintln(w, "sources:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ADDRESS\tSTATE\tSTAGE\tEXPIRES")
	for _, s := range st.sources {
		fmt.Fprintf(tw, "  %s\t%s\t%d/%d\t%s (in %s)\n", s.Addr, s.State, s.Stage, len(st.cfg.Sequence),
			stamp(s.Expires), s.Expires.Sub(now).Round(time.Second))
	}
	tw.Flush()
}
