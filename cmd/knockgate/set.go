package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
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
		name: "set",
		synopsis: "GATE|IFACE [--sequence PORTS|none] [--step-timeout D] [--open D] [--protect PORTS|all] [--flows=BOOL] [--flow-idle-tcp D] [--flow-idle-udp D] " +
			"[--spa-port PORT] [--spa-keys FILE] [--spa-window D] [--confirm D]",
		summary: "change the configuration of a gate",
		help: "Change the configuration of the gate (named, or by one of its interfaces) in\n" +
			"place; flags not given keep their value. The program stays attached and grants\n" +
			"stay, and so do the host's flows, but every change voids knock sequences in\n" +
			"progress. With --confirm, the gate goes back to the configuration before the\n" +
			"change after DURATION unless \"knockgate confirm\" runs in time; the program\n" +
			"does that itself, so it works even when the session that ran set is cut off by\n" +
			"the change. --spa-keys replaces the gate's SPA keys with the file's at once (a\n" +
			"removed key stops working), keeping each kept key's replay state; given alone,\n" +
			"it leaves the configuration and knock progress as they are.",
		minArgs: 1, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			changed := flags.Changed()
			if len(changed) == 0 {
				return usagef("set: nothing to change (give %s)", config.FlagList(config.Set))
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
			if changed["spa-keys"] && len(changed) == 1 && within == 0 {
				// Keys alone: a live map change, not a configuration write.
				cur, err := g.Config()
				if err != nil {
					return err
				}
				if cur.Policy.SPAPort != 0 {
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
				config.Merge(&cfg.Policy, &upd, changed)
				// A combination the program cannot run (a step that is
				// also protected) is the user's mistake: nothing is written.
				if err := cfg.Policy.Validate(); err != nil {
					return &usageError{err}
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
