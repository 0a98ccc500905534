//go:build linux

package main

import (
	"errors"
	"fmt"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
)

func confirmCommand() *command {
	return &command{
		name:     "confirm",
		synopsis: "[GATE|IFACE]",
		summary:  "keep a change made with --confirm",
		help: "Keep the change that attach --confirm, set --confirm or a reload of\n" +
			"run --confirm made to the gate, before its deadline undoes it. Without an\n" +
			"argument: the only gate.",
		minArgs: 0, maxArgs: 1,
		flags: newFlags("confirm"),
		run: func(e *env, args []string) error {
			names, err := pickGates(args, listGates, false)
			if err != nil {
				return err
			}
			g, err := openGate(names[0])
			if err != nil {
				return err
			}
			defer g.Close()
			sm, err := g.SafeMode()
			if err != nil {
				return err
			}
			cfg, err := g.Confirm()
			switch {
			case errors.Is(err, maps.ErrNothingToConfirm):
				return &messageError{fmt.Sprintf("gate %s: nothing to confirm", g.Name), err}
			case errors.Is(err, maps.ErrRolledBack) && sm.Previous.Generation == 0:
				// What was undone is the attach itself: the gate goes.
				if derr := loader.Detach(g.Name); derr != nil && !errors.Is(derr, loader.ErrNotAttached) {
					return derr
				}
				return &messageError{fmt.Sprintf("gate %s: too late: the attach was not confirmed by %s and has been undone",
					g.Name, stamp(maps.BootToTime(sm.Deadline))), err}
			case errors.Is(err, maps.ErrRolledBack):
				return &messageError{fmt.Sprintf("gate %s: too late: the change was not confirmed by %s and has been rolled back",
					g.Name, stamp(maps.BootToTime(sm.Deadline))), err}
			case err != nil:
				return err
			}
			fmt.Fprintf(e.stdout, "knockgate on %s confirmed (generation %d)\n", g.Name, cfg.Generation)
			return nil
		},
	}
}
