package main

import (
	"errors"
	"fmt"

	"github.com/knockgate/knockgate/loader"
)

func detachCommand() *command {
	return &command{
		name:     "detach",
		synopsis: "IFACE",
		summary:  "remove the gate from an interface",
		help: "Take the gate off IFACE and remove its pins: every port is reachable again\n" +
			"and all grants and knock progress are gone.",
		minArgs: 1, maxArgs: 1,
		flags: newFlags("detach"),
		run: func(e *env, args []string) error {
			iface := args[0]
			if err := checkPinAccess(); err != nil {
				return err
			}
			// No interface lookup first: the pins of a gate whose
			// interface is gone must still be removable.
			err := loader.Detach(iface)
			if errors.Is(err, loader.ErrNotAttached) {
				return notAttached(iface, err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "knockgate detached from %s\n", iface)
			return nil
		},
	}
}
