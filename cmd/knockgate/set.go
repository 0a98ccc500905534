//go:build linux

package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

func setCommand() *command {
	var (
		upd     config.Settings
		confirm string
	)
	fs := newFlags("set")
	flags := config.AddFlags(fs, config.Set)
	fs.StringVar(&confirm, "confirm", "", "safe mode: undo the change unless \"knockgate confirm\" runs within `DURATION`")

	return &command{
		name:     "set",
		synopsis: "GATE|IFACE " + config.Synopsis(config.Set) + " [--confirm D]",
		summary:  "change the configuration of a gate",
		help: "Change the configuration of the gate (named, or by one of its interfaces) in\n" +
			"place; flags not given keep their value. The program stays attached and grants\n" +
			"stay, and so do the host's flows, but every change voids knock sequences in\n" +
			"progress. With --confirm, the gate goes back to the configuration before the\n" +
			"change after DURATION unless \"knockgate confirm\" runs in time; the program\n" +
			"does that itself, so it works even when the session that ran set is cut off by\n" +
			"the change. --spa-keys replaces the gate's SPA keys with the file's at once (a\n" +
			"removed key stops working), keeping each kept key's replay state; given alone,\n" +
			"it leaves the configuration and knock progress as they are. The flags configure\n" +
			"the service default (--allow: the gate's allow list, for every service); with\n" +
			"--service NAME, --sequence, --step-timeout, --open, --protect and --allow\n" +
			"configure the service NAME, made when the gate has none (--protect needed;\n" +
			"sequence none, step timeout 1m and open 30m unless given). --service NAME\n" +
			"--remove removes it, and its grants with it. Every SPA key must name services\n" +
			"the gate has, and a service without a sequence needs a key that names it.",
		minArgs: 1, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			changed := flags.Changed()
			service, remove := flags.Service(), flags.Remove()
			named := false
			for name := range changed {
				named = named || config.Lookup(name).In&config.Named != 0
			}
			switch {
			case len(changed) == 0 && !remove && service == "":
				return usagef("set: nothing to change (give %s)", config.FlagList(config.Set))
			case remove && len(changed) > 0:
				return usagef("--remove removes the service %s: give no other flag but --confirm with it", service)
			case service != "" && !remove && !named:
				return usagef("--service %s: give the service's flags (%s), or --remove", service, config.NamedFlagList(config.Set))
			case remove && service == policy.DefaultService:
				return usagef("the service %s cannot be removed: every gate has it", service)
			}
			var within time.Duration
			if fs.Changed("confirm") {
				d, err := parseDuration("confirm", confirm)
				if err != nil {
					return err
				}
				within = d
			}
			// Parse every flag before touching the gate.
			if err := flags.Apply(&upd); err != nil {
				return &usageError{err}
			}

			g, err := openGate(args[0])
			if err != nil {
				return err
			}
			defer g.Close()
			// The keys the gate will have: those given, or those it has.
			keys := upd.SPAKeys
			if !changed["spa-keys"] {
				held, err := g.SPAKeys()
				if err != nil {
					return err
				}
				keys = nil
				for _, k := range held {
					keys = append(keys, k.Key)
				}
			}
			// check checks a policy with the keys: a combination the
			// program cannot run (a step that is also protected), or keys
			// that do not fit, is the user's mistake: nothing is written.
			check := func(p *policy.Policy) error {
				err := config.Check(p, keys)
				var se *config.ScopeError
				switch {
				case errors.As(err, &se) && !changed["spa-keys"]:
					return &usageError{fmt.Errorf("%w (give --spa-keys a key file that fits)", err)}
				case errors.As(err, &se):
					return &usageError{fmt.Errorf("--spa-keys: %w", err)}
				case err != nil:
					return &usageError{err}
				}
				return nil
			}
			if changed["spa-keys"] && len(changed) == 1 && within == 0 && service == "" {
				// Keys alone: a live map change, not a configuration write.
				cur, err := g.Config()
				if err != nil {
					return err
				}
				if cur.Policy.SPAPort != 0 {
					if err := check(&cur.Policy); err != nil {
						return err
					}
					if err := g.SetSPAKeys(upd.SPAKeys); err != nil {
						return err
					}
					// And the gate's clock, if the TAI offset moved (a
					// pending safe-mode change keeps it until decided).
					if _, err := g.RefreshClock(); err != nil && !errors.Is(err, maps.ErrAwaitingConfirm) {
						return err
					}
					fmt.Fprintf(e.stdout, "knockgate on %s: %d SPA keys from %s, live on port %d/udp\n", g.Name, len(upd.SPAKeys), upd.SPAKeysFile, cur.Policy.SPAPort)
					return nil
				}
			}
			cfg, err := g.UpdateConfig(func(cfg *maps.Config) error {
				// The flags given change the policy in force; the rest
				// of it stays.
				if remove {
					if err := config.RemoveService(&cfg.Policy, service); err != nil {
						return err
					}
				} else if err := config.Merge(&cfg.Policy, &upd, changed, service); err != nil {
					return &usageError{err}
				}
				if err := check(&cfg.Policy); err != nil {
					return err
				}
				cfg.ConfirmBy = 0
				if within > 0 {
					cfg.ConfirmBy = maps.BootAfter(within)
				}
				return nil
			})
			if errors.Is(err, maps.ErrAwaitingConfirm) {
				return pendingError(g, err)
			}
			if err != nil {
				return err
			}
			if changed["spa-keys"] {
				// After the configuration, which refuses what it cannot run:
				// a refused set changes no key either.
				if err := g.SetSPAKeys(upd.SPAKeys); err != nil {
					return err
				}
			}
			ifaces, err := g.Interfaces()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "knockgate on %s updated (%s, generation %d): %s\n", g.Name, modes(ifaces), cfg.Generation, config.Summary(&cfg.Policy))
			printServices(e, &cfg.Policy)
			if remove {
				fmt.Fprintf(e.stdout, "service %s removed, and its grants with it\n", service)
			}
			if within > 0 {
				fmt.Fprintf(e.stdout, "safe mode: unless \"knockgate confirm %s\" runs by %s, the previous configuration comes back\n",
					g.Name, stamp(maps.BootToTime(cfg.ConfirmBy)))
			}
			return nil
		},
	}
}

// pendingError explains why a change was refused while another awaits
// confirmation.
func pendingError(g *loader.Gate, cause error) error {
	gate := g.Name
	sm, err := g.SafeMode()
	if err != nil {
		return err
	}
	return &messageError{fmt.Sprintf("gate %s: a change awaits confirmation until %s: run \"knockgate confirm %s\" first, or wait for it to roll back",
		gate, stamp(maps.BootToTime(sm.Deadline)), gate), cause}
}
