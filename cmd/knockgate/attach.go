//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

func attachCommand() *command {
	s := config.Defaults()
	var (
		noGrantSelf bool
		confirm     string
	)
	fs := newFlags("attach")
	flags := config.AddFlags(fs, config.Attach)
	fs.BoolVar(&noGrantSelf, "no-grant-self", false, "do not grant the address of this SSH session ($SSH_CONNECTION)")
	fs.StringVar(&confirm, "confirm", "", "safe mode: undo the attach unless \"knockgate confirm\" runs within `DURATION`")

	return &command{
		name:     "attach",
		synopsis: "IFACE... " + config.Synopsis(config.Attach) + " [--no-grant-self] [--confirm D]",
		summary:  "attach the gate to interfaces",
		help: "Attach one gate to every IFACE: one program and one set of maps, so a knock on\n" +
			"any of them opens all of them. The gate is pinned under " + loader.PinRoot + "/NAME\n" +
			"(NAME: --gate, default the first interface), so it keeps running after this\n" +
			"command exits. When the gate exists already, attach puts it on those of the\n" +
			"interfaces it is not on (an interface that was deleted and made again, say),\n" +
			"keeping its grants; its configuration is changed with set. When run over SSH,\n" +
			"the client address of the session is granted for the open window, so\n" +
			"attaching does not cut the session off, and the session itself (like every\n" +
			"connection open when the gate attaches) goes on as a flow after the window.\n" +
			"With --protect all every TCP and UDP port is closed, but replies to the host's\n" +
			"own connections still pass. With --confirm, the new gate passes everything again\n" +
			"after DURATION unless \"knockgate confirm\" runs in time: no process has to\n" +
			"survive for that. The flags configure the service default (and --allow the\n" +
			"gate's allow list, for every service); with --service NAME, --sequence,\n" +
			"--step-timeout, --open, --protect and --allow configure the service NAME instead\n" +
			"(--protect needed; sequence none, step timeout 1m and open 30m unless given):\n" +
			"add more services with set.",
		minArgs: 1, maxArgs: -1,
		flags: fs,
		run: func(e *env, args []string) error {
			if err := flags.Apply(&s); err != nil {
				return &usageError{err}
			}
			if svc := flags.Service(); svc != "" && svc != policy.DefaultService && !flags.Changed()["protect"] {
				return usagef("--service %s: give --protect, the ports the service protects", svc)
			}
			s.Interfaces = args
			for _, n := range args {
				if err := config.CheckInterfaceName(n); err != nil {
					return &usageError{err}
				}
			}
			// Everything is checked before anything is loaded. Whether the
			// keys fit the services the flags give matters to a new gate
			// only: an existing one compares the keys with its own.
			var scopeErr error
			if err := s.Check(); errors.As(err, new(*config.ScopeError)) {
				scopeErr = &usageError{err}
			} else if err != nil {
				return &usageError{err}
			}
			var confirmWithin time.Duration
			if fs.Changed("confirm") {
				d, err := parseDuration("confirm", confirm)
				if err != nil {
					return err
				}
				confirmWithin = d
			}
			var self netip.Addr
			if !noGrantSelf {
				addr, ok, err := sshClient(e.getenv)
				if err != nil {
					return err
				}
				if ok {
					self = addr
				}
			}
			return attach(e, &s, flags.Changed(), flags.Service(), self, confirmWithin, scopeErr)
		},
	}
}

// attach makes the gate s describes, or puts the existing one on the
// interfaces it is missing from. self (when valid) is granted for the open
// window before the program sees its first packet. scopeErr is s's keys
// not fitting its services (Settings.Check): the refusal of a new gate.
func attach(e *env, s *config.Settings, explicit map[string]bool, service string, self netip.Addr, confirm time.Duration, scopeErr error) error {
	if err := checkPinAccess(); err != nil {
		return err
	}
	name, exists, upgraded, err := attachTarget(s)
	if err != nil {
		return err
	}
	if upgraded != "" {
		fmt.Fprintf(e.stdout, "gate %s %s\n", name, upgraded)
	}
	if exists {
		if confirm > 0 {
			return usagef("--confirm undoes the making of a gate; gate %s exists already (use set --confirm to change it safely)", name)
		}
		return reattach(e, name, s, explicit, service, upgraded != "")
	}
	// The keys must fit the services, before anything is made.
	if scopeErr != nil {
		return scopeErr
	}

	opts, err := s.LoaderOptions()
	if err != nil {
		return err
	}
	opts.Name = name
	if self.IsValid() {
		opts.Grants = append(opts.Grants, self)
	}
	if confirm > 0 {
		opts.Config.ConfirmBy = maps.BootAfter(confirm)
	}
	g, err := loader.Create(opts)
	if err != nil {
		return err
	}
	defer g.Close()
	cfg, err := g.Config()
	if err != nil {
		return err
	}
	ifaces, err := g.Interfaces()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "knockgate attached to %s: %s\n", describeIfaces(name, ifaces), config.Summary(&cfg.Policy))
	printServices(e, &cfg.Policy)
	if self.IsValid() {
		gr, _, err := g.LookupGrant(self, policy.DefaultService)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "granted %s (this SSH session) until %s\n", self, stamp(maps.BootToTime(gr.ExpiresNs)))
	}
	if confirm > 0 {
		fmt.Fprintf(e.stdout, "safe mode: unless \"knockgate confirm %s\" runs by %s, the gate lets everything through again\n",
			name, stamp(maps.BootToTime(opts.Config.ConfirmBy)))
	}
	return nil
}

// attachTarget is the gate an attach is about: --gate; else the gate the
// named interfaces already belong to (one that lost an interface gets it
// back); else a new gate named after the first interface. A lapsed
// safe-mode attach is removed on the way, so attaching again starts afresh;
// a gate of the previous release is upgraded (upgraded).
func attachTarget(s *config.Settings) (name string, exists bool, upgraded loader.Upgraded, err error) {
	name = s.Gate
	if name == "" {
		name = s.Interfaces[0]
		owner := ""
		for _, ifc := range s.Interfaces {
			g, err := loader.Resolve(ifc)
			if errors.Is(err, loader.ErrNotAttached) {
				continue
			}
			if err != nil {
				return "", false, "", err
			}
			if owner != "" && g != owner {
				return "", false, "", fmt.Errorf("interfaces %s belong to different gates (%s and %s)",
					strings.Join(s.Interfaces, ", "), owner, g)
			}
			owner = g
		}
		if owner != "" {
			name = owner
		}
	}
	g, upgraded, err := loader.Adopt(name)
	if errors.Is(err, loader.ErrNotAttached) {
		return name, false, "", nil
	}
	if err != nil {
		return "", false, "", err
	}
	defer g.Close()
	if undone, err := finishUndoneAttach(g); err != nil || undone {
		return name, false, upgraded, err
	}
	return name, true, upgraded, nil
}

// reattach puts the existing gate name on those of s's interfaces it is not
// on. A configuration given on the command line must be the gate's own: it
// is changed with set, never by an attach. After an upgrade (upgraded), a
// gate already on every interface is what was asked.
func reattach(e *env, name string, s *config.Settings, explicit map[string]bool, service string, upgraded bool) error {
	g, err := loader.Open(name)
	if err != nil {
		return err
	}
	defer g.Close()
	have, err := held(g)
	if err != nil {
		return err
	}
	if diff := config.Compare(s, &have, explicit, service); len(diff) > 0 {
		return &messageError{fmt.Sprintf("gate %s exists with %s: change it with \"knockgate set\", or detach it first",
			g.Name, strings.Join(diff, ", ")), loader.ErrAttached}
	}
	if _, err := g.Upgrade(); err != nil {
		return err
	}
	// Flows opened while an interface had no gate are not lost.
	if _, err := g.SeedFlows(); err != nil {
		return err
	}
	var attached []string
	already := 0
	for _, ifc := range s.Interfaces {
		mode, err := g.AttachInterface(ifc, s.Mode)
		if errors.Is(err, loader.ErrAttached) {
			already++
			continue
		}
		if err != nil {
			return err
		}
		attached = append(attached, fmt.Sprintf("%s (%s)", ifc, mode))
	}
	if already == len(s.Interfaces) && upgraded {
		fmt.Fprintf(e.stdout, "knockgate attached to %s (gate %s, kept with its grants): %s\n",
			strings.Join(s.Interfaces, ", "), name, config.Summary(&have.Policy))
		return nil
	}
	if already == len(s.Interfaces) {
		return &messageError{fmt.Sprintf("knockgate is already attached to %s (run \"knockgate detach %s\" first)",
			strings.Join(s.Interfaces, ", "), name), loader.ErrAttached}
	}
	fmt.Fprintf(e.stdout, "knockgate attached to %s (gate %s, kept with its grants): %s\n",
		strings.Join(attached, ", "), name, config.Summary(&have.Policy))
	printServices(e, &have.Policy)
	return nil
}

// printServices prints the one-line form of each service of p besides
// default, indented, below the summary of default and the gate.
func printServices(e *env, p *policy.Policy) {
	for _, l := range config.ServiceSummaries(p) {
		fmt.Fprintf(e.stdout, "  %s\n", l)
	}
}

// held is what the gate holds, for config.Compare.
func held(g *loader.Gate) (config.Held, error) {
	p, err := g.Policy()
	if err != nil {
		return config.Held{}, err
	}
	keys, err := g.SPAKeys()
	if err != nil {
		return config.Held{}, err
	}
	h := config.Held{Policy: p, Sizes: g.Sizes()}
	for _, k := range keys {
		h.SPAKeys = append(h.SPAKeys, k.Key)
	}
	return h, nil
}

// finishUndoneAttach removes a gate made by a safe-mode attach that was
// never confirmed: the program already lets everything through, and the
// pins go now. It reports whether it did.
func finishUndoneAttach(g *loader.Gate) (bool, error) {
	sm, err := g.SafeMode()
	if err != nil || !sm.Lapsed || sm.Previous.Generation != 0 {
		return false, err
	}
	if err := loader.Detach(g.Name); err != nil && !errors.Is(err, loader.ErrNotAttached) {
		return false, err
	}
	return true, nil
}
