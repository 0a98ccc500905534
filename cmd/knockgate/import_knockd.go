//go:build linux

package main

import (
	"fmt"
	"github.com/knockgate/knockgate/config"
	"io"
	"os"
)

// knockdConf is where knockd keeps its configuration.
const knockdConf = "/etc/knockd.conf"

func importCommand() *command {
	var iface, hookUser string
	fs := newFlags("import")
	fs.StringVarP(&iface, "interface", "i", "", "the gate's interface `IFACE` (default: knockd's Interface, else eth0)")
	fs.StringVar(&hookUser, "hook-user", "", "run the imported commands as `USER` (hook_user; default: the system user knockgate)")
	return &command{
		name:     "import",
		synopsis: "knockd [FILE] [--interface IFACE] [--hook-user USER]",
		summary:  "print a config file that does what a knockd.conf does",
		help: "Read knockd's configuration (FILE, default " + knockdConf + "; - for stdin) and print the\n" +
			"config file of a gate that does the same job: one service per section (the\n" +
			"first at the top level: the service default), its sequence with its UDP steps,\n" +
			"seq_timeout as step_timeout, cmd_timeout as the open window. A command that\n" +
			"is a plain iptables, nftables or knock_helper_ipt.sh accept of %IP% to a port\n" +
			"becomes that port in protect; any other runs as on_open (stop_command as\n" +
			"on_close), %IP% as {source}. What cannot be translated (one_time_sequences,\n" +
			"%IP% in an unusual place, a tcpflags rule the gate does not model, a section\n" +
			"whose command only undoes another's) is said on stderr with its section and\n" +
			"line; the exit status is 1 only when no section could be imported.",
		minArgs: 1, maxArgs: 2,
		flags: fs,
		run: func(e *env, args []string) error {
			if args[0] != "knockd" {
				return usagef("import: %q: the only format is knockd", args[0])
			}
			path := knockdConf
			if len(args) == 2 {
				path = args[1]
			}
			var r io.Reader = os.Stdin
			source := "stdin"
			if path != "-" {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				r, source = f, path
			}
			if fs.Changed("interface") {
				if err := config.CheckInterfaceName(iface); err != nil {
					return usagef("--interface: %w", err)
				}
			}
			out, notes, err := importKnockd(source, r, iface, hookUser)
			for _, n := range notes {
				fmt.Fprintf(e.stderr, "knockgate: %s: %s\n", source, n)
			}
			if err != nil {
				return err
			}
			_, err = io.WriteString(e.stdout, out)
			return err
		},
	}
}
