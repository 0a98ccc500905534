package main

import (
	"fmt"
	"time"

	"github.com/knockgate/knockgate/maps"
)

func grantCommand() *command {
	var forFlag string
	fs := newFlags("grant")
	fs.StringVar(&forFlag, "for", "", "grant for `DURATION` (default: the gate's open window)")
	return &command{
		name:     "grant",
		synopsis: "GATE|IFACE ADDR [--for DURATION]",
		summary:  "let an address through as if it had knocked",
		help: "Grant ADDR (IPv4 or IPv6) access to the protected ports of the gate (named, or by one of its interfaces),\n" +
			"replacing any grant it had.",
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
			if d == 0 {
				cfg, err := g.Config()
				if err != nil {
					return err
				}
				d = cfg.Open
			}
			until := maps.BootAfter(d)
			if err := g.Grant(addr, until); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "granted %s on %s until %s\n", addr, iface, stamp(maps.BootToTime(until)))
			return nil
		},
	}
}
