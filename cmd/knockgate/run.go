//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/service"
)

func runCommand() *command {
	var (
		path    string
		check   bool
		confirm string
	)
	fs := newFlags("run")
	fs.StringVar(&path, "config", config.DefaultPath, "read the gate's settings from `FILE`")
	fs.BoolVar(&check, "check", false, "check the config file and exit, changing nothing")
	fs.StringVar(&confirm, "confirm", "", "safe mode for reloads: undo each unless \"knockgate confirm\" runs within `DURATION`")
	return &command{
		name:     "run",
		synopsis: "[--config FILE] [--check] [--confirm D]",
		summary:  "serve the gate a config file describes (the service)",
		help: "Make the gate the config file describes, or adopt the one pinned under its\n" +
			"name (grants, knock progress and counters kept; an older build's program is\n" +
			"replaced in place), and stay in the foreground: interfaces are attached as\n" +
			"they appear, SIGHUP applies the file again (a broken file changes nothing),\n" +
			"events are logged to stdout, metrics served. SIGTERM and SIGINT stop the\n" +
			"service and leave the gate pinned and enforcing: \"knockgate detach\" removes\n" +
			"it. With --check, only check the file (and that hook_user exists, if a\n" +
			"service has a hook).",
		minArgs: 0, maxArgs: 0,
		flags: fs,
		run: func(e *env, args []string) error {
			var within time.Duration
			if fs.Changed("confirm") {
				d, err := parseDuration("confirm", confirm)
				if err != nil {
					return err
				}
				within = d
			}
			if check {
				s, err := config.Load(path)
				if err != nil {
					return configError(err)
				}
				p := s.Config()
				fmt.Fprintf(e.stdout, "%s: gate %s on %s: %s\n", path, s.Gate, strings.Join(s.Interfaces, ", "), config.Summary(&p))
				printServices(e, &p)
				printHooks(e, s, &p)
				// The file is good; a hook's user must be there too, or
				// run would refuse to start.
				return service.CheckHookUser(s)
			}
			if err := checkPinAccess(); err != nil {
				return err
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			ctx, stop := signal.NotifyContext(e.ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := service.Run(ctx, service.Options{ConfigPath: path, Confirm: within, Log: e.stdout, Reload: hup})
			return configError(err)
		},
	}
}

// configError makes a mistake in the config file a bad-input error (exit
// status 2), without the usage line: the file, not the command line, is
// wrong.
func configError(err error) error {
	var fe *config.FileError
	if errors.As(err, &fe) {
		return &inputError{err}
	}
	return err
}

// printHooks prints, for run --check, each service's hooks and who runs
// them.
func printHooks(e *env, s *config.Settings, p *policy.Policy) {
	if !s.AnyHooks() {
		return
	}
	for _, svc := range p.Services {
		h := s.HooksOf(svc.Name)
		if h == nil {
			continue
		}
		var parts []string
		for _, c := range []struct {
			name string
			argv []string
		}{{"on_open", h.OnOpen}, {"on_close", h.OnClose}} {
			if len(c.argv) > 0 {
				var b strings.Builder
				enc := json.NewEncoder(&b)
				enc.SetEscapeHTML(false)
				enc.Encode(c.argv)
				parts = append(parts, c.name+" "+strings.TrimSpace(b.String()))
			}
		}
		if h.Fleet {
			parts = append(parts, "fleet grants too")
		}
		fmt.Fprintf(e.stdout, "  hooks of %s: %s\n", svc.Name, strings.Join(parts, ", "))
	}
	fmt.Fprintf(e.stdout, "  hooks run as %s, killed after %s, at most %d at once and %d waiting\n",
		s.HookUser, s.HookTimeout, s.HookMaxRunning, s.HookMaxWaiting)
}
