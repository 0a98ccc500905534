package main

import "fmt"

func revokeCommand() *command {
	return &command{
		name:     "revoke",
		synopsis: "GATE|IFACE ADDR",
		summary:  "remove an address's grant and knock progress",
		help: "Remove the grant and any knock progress of ADDR on the gate (named, or by one of its\n" +
			"interfaces). An\n" +
			"address with neither is an error.",
		minArgs: 2, maxArgs: 2,
		flags: newFlags("revoke"),
		run: func(e *env, args []string) error {
			iface := args[0]
			addr, err := parseAddr(args[1])
			if err != nil {
				return err
			}
			g, err := openGate(iface)
			if err != nil {
				return err
			}
			defer g.Close()
			found, err := g.Revoke(addr)
			if err != nil {
				return err
			}
			if !found {
				return fmt.Errorf("%s has no grant or knock progress on %s", addr, iface)
			}
			fmt.Fprintf(e.stdout, "revoked %s on %s\n", addr, iface)
			return nil
		},
	}
}
