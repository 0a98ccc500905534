//go:build linux

package main

import (
	"errors"
	"fmt"

	"github.com/knockgate/knockgate/maps"
)

func revokeCommand() *command {
	var service string
	fs := newFlags("revoke")
	fs.StringVar(&service, "service", "", "revoke the service `NAME` only (default: every service)")
	return &command{
		name:     "revoke",
		synopsis: "GATE|IFACE ADDR [--service NAME]",
		summary:  "remove an address's grants and knock progress",
		help: "Remove the grants and any knock progress of ADDR on the gate (named, or by one of its\n" +
			"interfaces): of every service, or with --service of that one. An address with\n" +
			"neither is an error.",
		minArgs: 2, maxArgs: 2,
		flags: fs,
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
			found, err := g.Revoke(addr, service)
			if errors.Is(err, maps.ErrNoService) {
				return noService(g, nil, service, err)
			}
			if err != nil {
				return err
			}
			if found {
				tellRun(e, g.Name, "revoke", addr, service, 0)
			}
			what := ""
			if service != "" {
				what = " " + service
			}
			if !found {
				return fmt.Errorf("%s has no%s grant or knock progress on %s", addr, what, iface)
			}
			fmt.Fprintf(e.stdout, "revoked %s%s on %s\n", addr, what, iface)
			return nil
		},
	}
}
