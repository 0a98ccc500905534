package main

import (
	"fmt"

	"github.com/knockgate/knockgate/maps"
)

func setCommand() *command {
	var sequence, stepTimeout, open, protect string
	fs := newFlags("set")
	fs.StringVar(&sequence, "sequence", "", "knock `PORTS` in this order (PORT[/tcp|/udp],...)")
	fs.StringVar(&stepTimeout, "step-timeout", "", "each step must follow the previous one within `DURATION`")
	fs.StringVar(&open, "open", "", "a completed sequence opens the protected ports for `DURATION`")
	fs.StringVar(&protect, "protect", "", "`PORTS` closed to sources without a grant")

	return &command{
		name:     "set",
		synopsis: "IFACE [--sequence PORTS] [--step-timeout D] [--open D] [--protect PORTS]",
		summary:  "change the configuration of an attached gate",
		help: "Change the configuration of the gate on IFACE in place; flags not given keep\n" +
			"their value. The program stays attached and grants stay, but every change\n" +
			"voids knock sequences in progress.",
		minArgs: 1, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			iface := args[0]
			if fs.NFlag() == 0 {
				return usagef("set: nothing to change (give --sequence, --step-timeout, --open or --protect)")
			}
			// Parse every flag before touching the gate.
			var upd maps.Config
			var err error
			if fs.Changed("sequence") {
				if upd.Sequence, err = parsePortsFlag("sequence", sequence); err != nil {
					return err
				}
			}
			if fs.Changed("step-timeout") {
				if upd.StepTimeout, err = parseDuration("step-timeout", stepTimeout); err != nil {
					return err
				}
			}
			if fs.Changed("open") {
				if upd.Open, err = parseDuration("open", open); err != nil {
					return err
				}
			}
			if fs.Changed("protect") {
				if upd.Protected, err = parsePortsFlag("protect", protect); err != nil {
					return err
				}
			}

			g, err := openGate(iface)
			if err != nil {
				return err
			}
			defer g.Close()
			cfg, err := g.UpdateConfig(func(cfg *maps.Config) error {
				if upd.Sequence != nil {
					cfg.Sequence = upd.Sequence
				}
				if upd.StepTimeout != 0 {
					cfg.StepTimeout = upd.StepTimeout
				}
				if upd.Open != 0 {
					cfg.Open = upd.Open
				}
				if upd.Protected != nil {
					cfg.Protected = upd.Protected
				}
				// A combination the program cannot run (a step that is
				// also protected) is the user's mistake: nothing is written.
				if err := cfg.Validate(); err != nil {
					return &usageError{err}
				}
				return nil
			})
			if err != nil {
				return err
			}
			allow, err := g.Maps.AllowList()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "knockgate on %s updated (%s, generation %d): %s\n",
				iface, cfg.Mode, cfg.Generation, describe(cfg, allow))
			return nil
		},
	}
}
