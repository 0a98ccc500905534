//go:build linux

package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

func grantCommand() *command {
	var forFlag, service string
	fs := newFlags("grant")
	fs.StringVar(&forFlag, "for", "", "grant for `DURATION` (default: the service's open window)")
	fs.StringVar(&service, "service", policy.DefaultService, "grant the service `NAME`")
	return &command{
		name:     "grant",
		synopsis: "GATE|IFACE ADDR [--service NAME] [--for DURATION]",
		summary:  "let an address through as if it had knocked",
		help: "Grant ADDR (IPv4 or IPv6) access to the ports of one service of the gate (named, or by one\n" +
			"of its interfaces; default: the service default), replacing any grant of it ADDR had.",
		minArgs: 2, maxArgs: 2,
		flags: fs,
		run: func(e *env, args []string) error {
			iface := args[0]
			addr, err := parseAddr(args[1])
			if err != nil {
				return err
			}
			var d time.Duration
			if fs.Changed("for") {
				if d, err = parseDuration("for", forFlag); err != nil {
					return err
				}
			}
			g, err := openGate(iface)
			if err != nil {
				return err
			}
			defer g.Close()
			var p *policy.Policy
			if d == 0 {
				// The service's open window.
				held, err := g.Policy()
				if err != nil {
					return err
				}
				p = &held
				svc := p.Service(service)
				if svc == nil {
					return noService(g, p, service, maps.ErrNoService)
				}
				d = svc.Open
			}
			until := maps.BootAfter(d)
			err = g.Grant(addr, service, until)
			if errors.Is(err, maps.ErrNoService) {
				return noService(g, p, service, err)
			}
			if err != nil {
				return err
			}
			tellRun(e, g.Name, "grant", addr, service, until)
			what := ""
			if service != policy.DefaultService {
				what = " " + service
			}
			fmt.Fprintf(e.stdout, "granted %s%s on %s until %s\n", addr, what, iface, stamp(maps.BootToTime(until)))
			return nil
		},
	}
}
