//go:build linux

package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/knockgate/knockgate/loader"
)

func detachCommand() *command {
	return &command{
		name:     "detach",
		synopsis: "GATE|IFACE",
		summary:  "remove a gate from all its interfaces",
		help: "Take the gate (named, or by one of its interfaces) off every interface it is\n" +
			"on and remove its pins: every port is reachable again and all grants and knock\n" +
			"progress are gone.",
		minArgs: 1, maxArgs: 1,
		flags: newFlags("detach"),
		run: func(e *env, args []string) error {
			arg := args[0]
			if err := checkPinAccess(); err != nil {
				return err
			}
			// No interface lookup first: the pins of a gate whose
			// interface is gone must still be removable.
			name, err := loader.Resolve(arg)
			if errors.Is(err, loader.ErrNotAttached) {
				return notAttached(arg, err)
			}
			if err != nil {
				return err
			}
			what := name
			if g, err := loader.Open(name); err == nil {
				if ifaces, err := g.Interfaces(); err == nil && !(len(ifaces) == 1 && ifaces[0].Name == name) {
					var names []string
					for _, ifc := range ifaces {
						names = append(names, ifc.Name)
					}
					what = fmt.Sprintf("%s (gate %s)", strings.Join(names, ", "), name)
				}
				g.Close()
			}
			err = loader.Detach(name)
			if errors.Is(err, loader.ErrNotAttached) {
				return notAttached(arg, err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "knockgate detached from %s\n", what)
			return nil
		},
	}
}
