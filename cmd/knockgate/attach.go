package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
)

func attachCommand() *command {
	var o struct {
		sequence, stepTimeout, open, protect, maxSources, mode string
		allow                                                  []string
		noGrantSelf                                            bool
	}
	fs := newFlags("attach")
	fs.StringVar(&o.sequence, "sequence", defaultSequence, "knock `PORTS` in this order (PORT[/tcp|/udp],...)")
	fs.StringVar(&o.stepTimeout, "step-timeout", defaultStepTimeout, "each step must follow the previous one within `DURATION`")
	fs.StringVar(&o.open, "open", defaultOpen, "a completed sequence opens the protected ports for `DURATION`")
	fs.StringVar(&o.protect, "protect", defaultProtect, "`PORTS` closed to sources without a grant")
	fs.StringArrayVar(&o.allow, "allow", nil, "`CIDRS` that may always reach protected ports (repeatable)")
	fs.StringVar(&o.maxSources, "max-sources", fmt.Sprint(loader.DefaultMaxSources), "track at most `N` knocking and N granted sources")
	fs.StringVar(&o.mode, "mode", string(loader.ModeAuto), "XDP `MODE`: auto (native, else generic), native or generic")
	fs.BoolVar(&o.noGrantSelf, "no-grant-self", false, "do not grant the address of this SSH session ($SSH_CONNECTION)")

	return &command{
		name: "attach",
		synopsis: "IFACE [--sequence PORTS] [--step-timeout D] [--open D] [--protect PORTS] " +
			"[--allow CIDR,...] [--max-sources N] [--mode auto|native|generic] [--no-grant-self]",
		summary: "attach the gate to an interface",
		help: "Attach the gate to IFACE and pin it under " + loader.PinRoot + "/IFACE, so it keeps\n" +
			"running after this command exits. When run over SSH, the client address of the\n" +
			"session is granted for the open window, so attaching does not cut the session\n" +
			"off; knock again before the window ends (or use --allow) to keep it.",
		minArgs: 1, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			iface := args[0]
			var (
				opts = loader.Options{Iface: iface}
				cfg  maps.Config
				err  error
			)
			// Everything is checked before anything is loaded.
			if cfg.Sequence, err = parsePortsFlag("sequence", o.sequence); err != nil {
				return err
			}
			if cfg.StepTimeout, err = parseDuration("step-timeout", o.stepTimeout); err != nil {
				return err
			}
			if cfg.Open, err = parseDuration("open", o.open); err != nil {
				return err
			}
			if cfg.Protected, err = parsePortsFlag("protect", o.protect); err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return &usageError{err}
			}
			if opts.Allow, err = parseCIDRs(o.allow); err != nil {
				return err
			}
			if opts.MaxSources, err = parseMaxSources(o.maxSources); err != nil {
				return err
			}
			if opts.Mode, err = loader.ParseMode(o.mode); err != nil {
				return usagef("--mode: %w", err)
			}
			var self netip.Addr
			if !o.noGrantSelf {
				addr, ok, err := sshClient(e.getenv)
				if err != nil {
					return err
				}
				if ok {
					self = addr
				}
			}
			opts.Config = cfg
			return attach(e, opts, self)
		},
	}
}

// attach attaches the gate, with self (when valid) granted for the open
// window before the program sees its first packet.
func attach(e *env, opts loader.Options, self netip.Addr) error {
	if err := checkPinAccess(); err != nil {
		return err
	}
	if self.IsValid() {
		opts.Grants = append(opts.Grants, self)
	}
	g, err := loader.Attach(opts)
	if errors.Is(err, loader.ErrAttached) {
		return &messageError{fmt.Sprintf("knockgate is already attached to %s (run \"knockgate detach %s\" first)",
			opts.Iface, opts.Iface), err}
	}
	if err != nil {
		return err
	}
	defer g.Close()

	cfg, err := g.Maps.ReadConfig()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "knockgate attached to %s (%s): %s\n", opts.Iface, cfg.Mode, describe(cfg, opts.Allow))
	if self.IsValid() {
		g, _, err := g.Maps.LookupGrant(self)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "granted %s (this SSH session) until %s\n", self, stamp(maps.BootToTime(g.ExpiresNs)))
	}
	return nil
}
