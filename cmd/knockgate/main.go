// Command knockgate attaches, configures, watches and detaches the knockgate
// XDP port-knocking gate, and knocks on one as a client.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// env is everything a command touches outside its arguments, so that every
// subcommand runs in-process in tests (the cloudflare/tubular tubectl pattern).
type env struct {
	stdout, stderr io.Writer
	// getenv stands in for os.Getenv: tests stub $SSH_CONNECTION with it.
	getenv func(key string) string
	// ctx ends long-running commands (events, knock); events also stops on
	// SIGINT or SIGTERM.
	ctx context.Context
}

func main() {
	e := env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, ctx: context.Background()}
	os.Exit(exitCode(run(e, os.Args[1:])))
}

// command is one subcommand. Each run builds fresh commands, so flag values
// never leak from one invocation to the next (tests call run many times).
type command struct {
	name     string
	synopsis string // arguments and flags after the name, for the usage line
	summary  string // one line for the command list
	help     string // a paragraph for "knockgate NAME -h"
	minArgs  int
	maxArgs  int // -1: no limit
	flags    *pflag.FlagSet
	run      func(e *env, args []string) error
}

// usage is the one-line synopsis: "knockgate NAME ARGS".
func (c *command) usage() string {
	return strings.TrimSpace("knockgate " + c.name + " " + c.synopsis)
}

// commands is the command table: the gate's commands, which exist on Linux
// only (server_linux.go), then the client's, which build everywhere.
func commands() []*command {
	return append(serverCommands(), clientCommands()...)
}

func clientCommands() []*command {
	return []*command{
		knockCommand(),
		keygenCommand(),
		versionCommand(),
	}
}

// serverNames names the gate's commands on every system, so that a build
// without them can say where they are (a test on Linux keeps the list in
// step with serverCommands).
var serverNames = []string{"attach", "set", "confirm", "status", "events", "grant", "revoke", "detach", "run", "import"}

// linuxOnly is the error for a gate's command in a build without them.
func linuxOnly(name string) error {
	return usagef("%s works on the gate, which runs on Linux only (this is knockgate for %s/%s, a client: knock, keygen, version)",
		name, runtime.GOOS, runtime.GOARCH)
}

// newFlags makes a flag set that neither prints nor exits: run reports
// errors and prints help itself, to the right stream with the right status.
func newFlags(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	return fs
}

// usageError is a mistake in the command line: exit status 2, and the
// command's usage line is printed after the message.
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// inputError is bad input that is not on the command line (a config
// file's): exit status 2 like a usage error, without the usage line.
type inputError struct{ err error }

func (i *inputError) Error() string { return i.err.Error() }
func (i *inputError) Unwrap() error { return i.err }

func exitCode(err error) int {
	var u *usageError
	var in *inputError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &u), errors.As(err, &in):
		return 2
	}
	return 1
}

const topUsage = "knockgate COMMAND [ARGS] [FLAGS]"

// run executes one knockgate command line (without the program name) and
// reports any error on stderr; main turns the error into the exit status.
func run(e env, args []string) (err error) {
	var cmd *command
	defer func() {
		if err == nil {
			return
		}
		fmt.Fprintf(e.stderr, "knockgate: %s\n", err)
		var u *usageError
		if errors.As(err, &u) {
			if cmd != nil {
				fmt.Fprintf(e.stderr, "usage: %s\n", cmd.usage())
			} else {
				fmt.Fprintf(e.stderr, "usage: %s (run \"knockgate help\" for the list)\n", topUsage)
			}
		}
	}()
	if e.ctx == nil {
		e.ctx = context.Background()
	}
	if e.getenv == nil {
		e.getenv = func(string) string { return "" }
	}

	cmds := commands()
	if len(args) == 0 {
		return usagef("no command given")
	}
	switch args[0] {
	case "help", "-h", "--help":
		if len(args) > 1 && args[0] == "help" {
			if cmd = find(cmds, args[1]); cmd == nil {
				if slices.Contains(serverNames, args[1]) {
					return linuxOnly(args[1])
				}
				return usagef("unknown command %q", args[1])
			}
			printHelp(e.stdout, cmd)
			return nil
		}
		printTopHelp(e.stdout, cmds)
		return nil
	}
	if cmd = find(cmds, args[0]); cmd == nil {
		if slices.Contains(serverNames, args[0]) {
			return linuxOnly(args[0])
		}
		return usagef("unknown command %q", args[0])
	}
	if err := cmd.flags.Parse(args[1:]); errors.Is(err, pflag.ErrHelp) {
		printHelp(e.stdout, cmd)
		return nil
	} else if err != nil {
		return &usageError{err}
	}
	rest := cmd.flags.Args()
	if len(rest) < cmd.minArgs || (cmd.maxArgs >= 0 && len(rest) > cmd.maxArgs) {
		return usagef("%s: %s", cmd.name, argCountMessage(cmd, len(rest)))
	}
	return cmd.run(&e, rest)
}

func argCountMessage(cmd *command, n int) string {
	switch {
	case cmd.minArgs == cmd.maxArgs && cmd.maxArgs == 0:
		return fmt.Sprintf("takes no arguments, got %d", n)
	case cmd.minArgs == cmd.maxArgs:
		return fmt.Sprintf("takes %d argument%s, got %d", cmd.minArgs, plural(cmd.minArgs), n)
	case cmd.maxArgs < 0:
		return fmt.Sprintf("takes at least %d argument%s, got %d", cmd.minArgs, plural(cmd.minArgs), n)
	case cmd.minArgs == 0:
		return fmt.Sprintf("takes at most %d argument%s, got %d", cmd.maxArgs, plural(cmd.maxArgs), n)
	}
	return fmt.Sprintf("takes %d to %d arguments, got %d", cmd.minArgs, cmd.maxArgs, n)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func find(cmds []*command, name string) *command {
	for _, c := range cmds {
		if c.name == name {
			return c
		}
	}
	return nil
}

func printTopHelp(w io.Writer, cmds []*command) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n", topUsage)
	b.WriteString("knockgate keeps protected ports closed to everyone except sources that\n")
	b.WriteString("knock a secret sequence of ports first, or send one signed SPA packet; an XDP\nprogram does the work.\n\n")
	b.WriteString("Commands:\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.summary)
	}
	if len(serverCommands()) == 0 {
		fmt.Fprintf(&b, "\nOn Linux, where the gate runs, also: %s.\n", strings.Join(serverNames, ", "))
	}
	b.WriteString("\nRun \"knockgate COMMAND -h\" for a command's arguments and flags.\n")
	io.WriteString(w, b.String())
}

func printHelp(w io.Writer, cmd *command) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n%s\n", cmd.usage(), cmd.help)
	if cmd.flags.HasFlags() {
		fmt.Fprintf(&b, "\nFlags:\n%s", cmd.flags.FlagUsages())
	}
	io.WriteString(w, b.String())
}
