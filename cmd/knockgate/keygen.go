package main

import (
	"fmt"

	"github.com/knockgate/knockgate/spa"
)

func keygenCommand() *command {
	var (
		id, name, open string
		anyAddress     bool
	)
	fs := newFlags("keygen")
	fs.StringVar(&id, "id", "", "key `ID` (1-4294967295; default: random)")
	fs.StringVar(&name, "name", "key", "key `NAME`, as status and events show it")
	fs.BoolVar(&anyAddress, "any-address", false, "let the key's packets open another address than their source (clients behind NAT)")
	fs.StringVar(&open, "open", "", "grants by this key last `DURATION` (default: the gate's --open)")
	return &command{
		name:     "keygen",
		synopsis: "[--id N] [--name NAME] [--any-address] [--open D]",
		summary:  "print a new SPA key line",
		help: "Print a new single-packet authorization key: one line for the gate's --spa-keys\n" +
			"file (ID HEX NAME [any-address] [open=DURATION]) and the client's --spa-key\n" +
			"file alike. 16 random bytes from the system's random source. Keep both files\n" +
			"readable by their owner only: the key is all it takes to open the gate.",
		flags: fs,
		run: func(e *env, args []string) error {
			var n uint32
			if id != "" {
				v, err := spa.ParseID(id)
				if err != nil {
					return usagef("--id: %w", err)
				}
				n = v
			}
			k, err := spa.NewKey(n, name)
			if err != nil {
				return usagef("--name: %w", err)
			}
			k.AnyAddress = anyAddress
			if open != "" {
				d, err := parseDuration("open", open)
				if err != nil {
					return err
				}
				k.Open = d
			}
			fmt.Fprintln(e.stdout, k.Line())
			return nil
		},
	}
}
