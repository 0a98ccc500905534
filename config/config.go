// Package config is a gate's settings, defined once: each option gives both
// a command-line flag (--step-timeout) and a config-file key (step_timeout),
// parsed by the same code, so `attach`, `set`, `run --check`, `run` and a
// reload of `run` all accept and refuse the same values with the same words.
// The table of options (Options) drives everything done with them: parsing,
// the policy the settings make (Settings.Config), set's merge of the flags
// given (Merge), attach's comparison with an existing gate (Compare), a
// reload's refusals (ReloadCheck) and the summaries commands print (Summary,
// Lines). Adding a setting is one entry there (and, for a setting of the
// policy, one in policy's tables). The top-level keys and the flags
// configure the service default and the gate; the options In Named are also
// the keys of a [services.NAME] table and, after --service NAME, the flags
// that configure that service (ServiceSummaries, ServiceLines show them).
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// DefaultPath is where `run` reads its configuration.
const DefaultPath = "/etc/knockgate/knockgate.toml"

// Settings are everything a gate is made of, and how `run` serves it.
type Settings struct {
	Gate       string // default: the first interface (attach), the file's base name (run)
	Interfaces []string
	// Policy is the gate's policy as the options give it: the top-level
	// options configure the service default and the gate's settings. The
	// SPA port is as given (0: none, or the default port once keys are
	// given): Config is the policy in full.
	Policy     policy.Policy
	MaxSources uint32
	Mode       loader.Mode
	MaxFlows   uint32
	// SPA keys as read from SPAKeysFile (the port and the clock window are
	// the policy's).
	SPAKeysFile string
	SPAKeys     []spa.Key
	// Service only (the file's keys; run has no flags for them).
	Metrics   string // host:port to serve Prometheus metrics on; "": none
	LogFormat string // "text" or "json"
	Fleet     Fleet  // the [fleet] table; zero: one host, no fleet
	// fwknop's clients (fwknop.go): fwknopd's access.conf as read from
	// FwknopAccessFile (nil: none), and how far a datagram's timestamp may
	// be from the gate's clock.
	FwknopAccessFile string
	Fwknop           *fwknop.Access
	FwknopWindow     time.Duration
	// Hooks are each service's commands on its grants, by service name
	// (the top level's are default's); run's alone, not the gate's.
	Hooks map[string]*Hooks
	// HookUser runs the hooks; HookTimeout ends each that runs longer;
	// at most HookMaxRunning run at once and HookMaxWaiting wait for
	// their turn (the rest are dropped, logged and counted).
	HookUser       string
	HookTimeout    time.Duration
	HookMaxRunning uint32
	HookMaxWaiting uint32
}

// service is the service the top-level options configure, default; made
// when missing (set's settings start empty).
func (s *Settings) service() *policy.Service {
	if d := s.Policy.Default(); d != nil {
		return d
	}
	s.Policy.Services = append([]policy.Service{{Name: policy.DefaultService}}, s.Policy.Services...)
	return &s.Policy.Services[0]
}

// Service is the service called name, made with a named service's
// defaults (NewService) when s has none of that name.
func (s *Settings) Service(name string) *policy.Service {
	s.service()
	if svc := s.Policy.Service(name); svc != nil {
		return svc
	}
	s.Policy.Services = append(s.Policy.Services, NewService(name))
	return &s.Policy.Services[len(s.Policy.Services)-1]
}

// NewService is a service called name as a [services.NAME] table or
// --service makes it before its options are given: each option of a
// named service at its service default (sequence none, step timeout 1m,
// open 30m), the rest empty.
func NewService(name string) policy.Service {
	svc := policy.Service{Name: name}
	for i := range Options {
		if o := &Options[i]; o.In&Named != 0 && o.ServiceDefault != "" {
			if err := o.own(nil, &svc).Set(o.ServiceDefault); err != nil {
				panic(fmt.Sprintf("service default of --%s: %v", o.Name, err))
			}
		}
	}
	return svc
}

// Where says which commands take an option.
type Where uint8

const (
	Attach Where = 1 << iota // knockgate attach flags
	Set                      // knockgate set flags
	File                     // config-file keys (run, run --check)
	// Named: an option of each named service too: a key of its
	// [services.NAME] table, and with --service NAME a flag of attach and
	// set that configures that service.
	Named
)

// Reload is what a reload of `run` does with a changed option.
type Reload uint8

const (
	// Live: applied at once (the policy in one configuration write; the
	// allow list, keys and interfaces in their maps and links; run's own
	// settings by run).
	Live Reload = iota
	// Kept: applies when the gate is made or an interface attached; the
	// running gate keeps what it has (a reload says so).
	Kept
	// Restart: a reload refuses the change; only a new run makes it.
	Restart
)

// scope is which of the policy's settings an option is, by its name.
type scope uint8

const (
	noScope      scope = iota // not the policy's
	gateScope                 // policy.GateSettings: the gate's
	serviceScope              // policy.ServiceSettings: each service's
)

// Option is one setting: its flag and key name, help and default, and what
// every use of the table does with it.
type Option struct {
	// Name is the flag's name; the file's key is Name with '-' as '_'.
	Name string
	// Usage is the flag's help; a `QUOTED` word names its argument.
	Usage string
	// Arg is the argument as the commands' synopses show it ("PORTS|all";
	// a switch's "BOOL" reads --flows=BOOL).
	Arg     string
	Default string // parsed like any value; "": none
	// ServiceDefault is the option's value in a named service that does
	// not give it ("": none); ServiceRequired: a named service must give it.
	ServiceDefault  string
	ServiceRequired bool
	In              Where
	Reload          Reload
	// scope: the option sets the policy's setting of its name, of the
	// gate or of the service it configures (resolved into gate or svc).
	scope scope
	gate  *policy.Setting[policy.Policy]
	svc   *policy.Setting[policy.Service]
	// value binds the option's parser to its place in s, or in svc, the
	// service it configures.
	value func(s *Settings, svc *policy.Service) value
	// own binds the parser of an option In Named to its place in a named
	// service (set by init from value for the service's own options and
	// run's options of a service, the hooks; allow sets it: in a service it
	// is the service's own list, not the gate's), and ownSetting is the
	// policy's setting it sets there (nil for run's options).
	own        func(s *Settings, svc *policy.Service) value
	ownSetting *policy.Setting[policy.Service]
	// repeat: as a flag, the option may be given again, each value adding
	// to the list.
	repeat bool
	// derive sets what else giving the option decides in the policy
	// (spa-keys: the SPA port, when there is none); derives names that
	// setting, which attach then compares too.
	derive  func(s *Settings, p *policy.Policy)
	derives string
	// differs says how an existing gate differs from s in an option the
	// policy does not hold, as what would ask for what the gate has
	// ("--max-flows 65536"); "": not at all. nil: attach does not compare
	// the option.
	differs func(s *Settings, have *Held) string
	// show is how the summaries show the option; nil: they do not.
	show *show
}

// show is how the summaries show an option: attach's and set's one line
// ("protecting 22") and status's lines ("protecting:  22").
type show struct {
	label string
	// text is the value; "" leaves the option out of the one line, and
	// reads "none" in status.
	text func(p *policy.Policy, svc *policy.Service) string
	// status: the option has a line in status (flows and SPA have none:
	// status shows them with what it reads besides); statusText, if set,
	// is the value there.
	status     bool
	statusText func(p *policy.Policy, svc *policy.Service) string
	// own is the value in a named service, if not text's (allow: the
	// service's own list).
	own func(svc *policy.Service) string
}

// Key is the option's config-file key.
func (o *Option) Key() string { return strings.ReplaceAll(o.Name, "-", "_") }

// bind is the option's parser for s, configuring its service default.
func (o *Option) bind(s *Settings) value { return o.value(s, s.service()) }

// Options is the table of every setting. Adding a setting here gives it its
// flag, its key, its parsing and its validation at once, and a place in
// set, attach, a reload and the summaries.
var Options = []Option{
	{Name: "gate", Arg: "NAME", In: Attach | File, Reload: Restart, Usage: "name the gate `NAME` (default: the first interface's name; run: the config file's base name)",
		value: func(s *Settings, _ *policy.Service) value { return &nameValue{&s.Gate} }},
	{Name: "interfaces", In: File, Usage: "interfaces to attach to",
		value: func(s *Settings, _ *policy.Service) value { return &ifacesValue{&s.Interfaces} }},
	{Name: "sequence", Arg: "PORTS|none", In: Attach | Set | File | Named, Default: "9000,8000", ServiceDefault: "none", Usage: "knock `PORTS` in this order (PORT[/tcp|/udp],...; none: SPA only)",
		scope: serviceScope,
		value: func(_ *Settings, svc *policy.Service) value { return &sequenceValue{&svc.Sequence} },
		show: &show{label: "sequence", status: true,
			text: func(_ *policy.Policy, svc *policy.Service) string { return policy.FormatSequence(svc.Sequence) },
			statusText: func(_ *policy.Policy, svc *policy.Service) string {
				if len(svc.Sequence) == 0 {
					return "none (SPA only)"
				}
				return policy.FormatPorts(svc.Sequence)
			}}},
	{Name: "step-timeout", Arg: "D", In: Attach | Set | File | Named, Default: "1m", ServiceDefault: "1m", Usage: "each step must follow the previous one within `DURATION`",
		scope: serviceScope,
		value: func(_ *Settings, svc *policy.Service) value { return &durationValue{&svc.StepTimeout} },
		show: &show{label: "step timeout", status: true,
			text: func(_ *policy.Policy, svc *policy.Service) string { return svc.StepTimeout.String() }}},
	{Name: "open", Arg: "D", In: Attach | Set | File | Named, Default: "30m", ServiceDefault: "30m", Usage: "a completed sequence opens the protected ports for `DURATION`",
		scope: serviceScope,
		value: func(_ *Settings, svc *policy.Service) value { return &durationValue{&svc.Open} },
		show: &show{label: "open", status: true,
			text: func(_ *policy.Policy, svc *policy.Service) string { return svc.Open.String() }}},
	{Name: "protect", Arg: "PORTS|all", In: Attach | Set | File | Named, Default: "22", ServiceRequired: true, Usage: "`PORTS` closed to sources without a grant (all: every TCP and UDP port; none: no port, the grants only run the service's hooks)",
		scope: serviceScope,
		value: func(_ *Settings, svc *policy.Service) value { return &protectValue{&svc.Protect, &svc.ProtectAll} },
		show: &show{label: "protecting", status: true,
			text: func(_ *policy.Policy, svc *policy.Service) string {
				return formatProtect(svc.Protect, svc.ProtectAll)
			}}},
	{Name: "allow", Arg: "CIDR,...", In: Attach | Set | File | Named, Usage: "`CIDRS` that may always reach protected ports, of every service (repeatable; with --service: of that service only)",
		scope: gateScope, repeat: true,
		value: func(s *Settings, _ *policy.Service) value { return &prefixesValue{&s.Policy.Allow} },
		own:   func(_ *Settings, svc *policy.Service) value { return &prefixesValue{&svc.Allow} },
		show: &show{label: "allowing", status: true,
			text: func(p *policy.Policy, _ *policy.Service) string { return policy.FormatCIDRs(p.Allow) },
			own:  func(svc *policy.Service) string { return policy.FormatCIDRs(svc.Allow) }}},
	{Name: "max-sources", Arg: "N", In: Attach | File, Reload: Kept, Default: fmt.Sprint(loader.DefaultMaxSources), Usage: "track at most `N` knocking and N granted sources",
		value: func(s *Settings, _ *policy.Service) value {
			return &countValue{&s.MaxSources, 1, loader.MaxSourcesLimit}
		},
		differs: func(s *Settings, have *Held) string {
			if s.MaxSources != have.Sizes.MaxSources {
				return fmt.Sprintf("--max-sources %d", have.Sizes.MaxSources)
			}
			return ""
		}},
	{Name: "flows", Arg: "BOOL", In: Attach | Set | File, Default: "true", Usage: "let replies in the host's own flows (and the rest of a session a grant let in) through protected ports",
		scope: gateScope,
		value: func(s *Settings, _ *policy.Service) value { return &boolValue{&s.Policy.Flows} },
		show: &show{label: "flows", text: func(p *policy.Policy, _ *policy.Service) string {
			if p.Flows {
				return ""
			}
			return "off"
		}}},
	{Name: "flow-idle-tcp", Arg: "D", In: Attach | Set | File, Default: "24h", Usage: "a TCP flow idle for `DURATION` ends",
		scope: gateScope,
		value: func(s *Settings, _ *policy.Service) value { return &durationValue{&s.Policy.FlowIdleTCP} }},
	{Name: "flow-idle-udp", Arg: "D", In: Attach | Set | File, Default: "3m", Usage: "a UDP flow idle for `DURATION` ends",
		scope: gateScope,
		value: func(s *Settings, _ *policy.Service) value { return &durationValue{&s.Policy.FlowIdleUDP} }},
	{Name: "max-flows", Arg: "N", In: Attach | File, Reload: Kept, Default: fmt.Sprint(loader.DefaultMaxFlows), Usage: "remember at most `N` flows of the host's",
		value: func(s *Settings, _ *policy.Service) value { return &countValue{&s.MaxFlows, 4, loader.MaxFlowsLimit} },
		differs: func(s *Settings, have *Held) string {
			if loader.FlowSlots(s.MaxFlows) != have.Sizes.MaxFlows {
				return fmt.Sprintf("--max-flows %d", have.Sizes.MaxFlows)
			}
			return ""
		}},
	{Name: "spa-port", Arg: "PORT", In: Attach | Set | File, Usage: fmt.Sprintf("take single-packet authorization datagrams on UDP `PORT` (0: none; default %d once --spa-keys is given)", spa.DefaultPort),
		scope: gateScope,
		value: func(s *Settings, _ *policy.Service) value { return &spaPortValue{&s.Policy.SPAPort} },
		show: &show{label: "SPA", text: func(p *policy.Policy, _ *policy.Service) string {
			if p.SPAPort == 0 {
				return ""
			}
			return fmt.Sprintf("on %d/udp (window ±%s)", p.SPAPort, p.SPAWindow)
		}}},
	{Name: "spa-keys", Arg: "FILE", In: Attach | Set | File, Usage: "SPA keys from `FILE`, one \"ID HEX NAME [any-address] [open=DURATION] [services=NAME,...]\" per line (root's, mode 600); a change is live",
		value: func(s *Settings, _ *policy.Service) value { return &keyFileValue{&s.SPAKeysFile, &s.SPAKeys} },
		// Keys without a port take the default one: the only place
		// that rule is written.
		derive: func(s *Settings, p *policy.Policy) {
			if s.SPAKeysFile != "" && p.SPAPort == 0 {
				p.SPAPort = spa.DefaultPort
			}
		},
		derives: "spa-port",
		differs: func(s *Settings, have *Held) string {
			if !sameKeys(have.SPAKeys, s.SPAKeys) {
				return fmt.Sprintf("other SPA keys (%d)", len(have.SPAKeys))
			}
			return ""
		}},
	{Name: "spa-window", Arg: "D", In: Attach | Set | File, Default: "30s", Usage: "an SPA datagram's timestamp may be `DURATION` off the gate's clock, either way",
		scope: gateScope,
		value: func(s *Settings, _ *policy.Service) value { return &durationValue{&s.Policy.SPAWindow} }},
	{Name: "fwknop-access", In: File, Usage: "take fwknop clients' datagrams on the SPA port as fwknopd would with `FILE`, its access.conf (root's, mode 600; default SPA port once given); a change applies on reload",
		value: func(s *Settings, _ *policy.Service) value { return &accessFileValue{&s.FwknopAccessFile, &s.Fwknop} },
		derive: func(s *Settings, p *policy.Policy) {
			if s.FwknopAccessFile != "" && p.SPAPort == 0 {
				p.SPAPort = spa.DefaultPort
			}
		},
		derives: "spa-port"},
	{Name: "fwknop-window", In: File, Default: DefaultFwknopWindow, Usage: "an fwknop datagram's timestamp may be `DURATION` off the gate's clock, either way (fwknopd's MAX_SPA_PACKET_AGE)",
		value: func(s *Settings, _ *policy.Service) value { return &durationValue{&s.FwknopWindow} }},
	{Name: "mode", Arg: "auto|native|generic", In: Attach | File, Reload: Kept, Default: string(loader.ModeAuto), Usage: "XDP `MODE`: auto (native, else generic), native or generic",
		value: func(s *Settings, _ *policy.Service) value { return &modeValue{&s.Mode} }},
	{Name: "metrics", In: File, Usage: "serve Prometheus metrics on `HOST:PORT` (empty: off)",
		value: func(s *Settings, _ *policy.Service) value { return &addrValue{&s.Metrics} }},
	{Name: "log-format", In: File, Default: "text", Usage: "log events as `text` or json",
		value: func(s *Settings, _ *policy.Service) value {
			return &choiceValue{&s.LogFormat, []string{"text", "json"}}
		}},
	{Name: "on-open", In: File | Named, Usage: "run `ARGV` (an array: the command, then its arguments; no shell) when a grant of the service is made",
		value: func(s *Settings, svc *policy.Service) value { return &argvValue{&s.hooksOf(svc.Name).OnOpen} }},
	{Name: "on-close", In: File | Named, Usage: "run `ARGV` when a grant of the service ends (it expired, or was revoked)",
		value: func(s *Settings, svc *policy.Service) value { return &argvValue{&s.hooksOf(svc.Name).OnClose} }},
	{Name: "fleet-hooks", In: File | Named, Usage: "run on_open and on_close for the grants other hosts of the fleet make too",
		value: func(s *Settings, svc *policy.Service) value { return &boolValue{&s.hooksOf(svc.Name).Fleet} }},
	{Name: "hook-user", In: File, Default: DefaultHookUser, Usage: "run the hooks as `USER` (the package makes the system user knockgate)",
		value: func(s *Settings, _ *policy.Service) value { return &userValue{&s.HookUser} }},
	{Name: "hook-timeout", In: File, Default: "30s", Usage: "kill a hook still running after `DURATION`",
		value: func(s *Settings, _ *policy.Service) value { return &durationValue{&s.HookTimeout} }},
	{Name: "hook-max-running", In: File, Default: "4", Usage: "run at most `N` hooks at once",
		value: func(s *Settings, _ *policy.Service) value { return &countValue{&s.HookMaxRunning, 1, 256} }},
	{Name: "hook-max-waiting", In: File, Default: "256", Usage: "let at most `N` hooks wait for their turn; more are dropped (logged, counted)",
		value: func(s *Settings, _ *policy.Service) value { return &countValue{&s.HookMaxWaiting, 0, 100000} }},
}

// Each option of the policy finds its setting there, by name: a name
// that does not match fails every command at once, not silently.
func init() {
	for i := range Options {
		o := &Options[i]
		switch o.scope {
		case gateScope:
			o.gate = policy.SettingOf(policy.GateSettings, o.Name)
		case serviceScope:
			o.svc = policy.SettingOf(policy.ServiceSettings, o.Name)
		}
		if o.scope != noScope && o.gate == nil && o.svc == nil {
			panic("config: option " + o.Name + " names no setting of the policy")
		}
		if o.In&Named != 0 {
			bind := o.value
			switch {
			case o.own == nil && o.scope == serviceScope:
				o.own = func(_ *Settings, svc *policy.Service) value { return bind(nil, svc) }
			case o.own == nil && o.scope == noScope:
				// run's own setting of each service (its hooks): kept
				// in the settings by the service's name.
				o.own = bind
			}
			o.ownSetting = policy.SettingOf(policy.ServiceSettings, o.Name)
			if o.own == nil || (o.scope != noScope && o.ownSetting == nil) {
				panic("config: option " + o.Name + " is a named service's, with no setting of a service")
			}
			if o.scope == noScope && (o.ownSetting != nil || o.In&(Attach|Set) != 0) {
				panic("config: option " + o.Name + " is run's, of each service: a file key only, no setting of the policy")
			}
		}
		if o.In&(Attach|Set) != 0 && o.Arg == "" {
			panic("config: option " + o.Name + " is a flag with no Arg for the synopses")
		}
		if o.derives != "" && policy.SettingOf(policy.GateSettings, o.derives) == nil {
			panic("config: option " + o.Name + " derives " + o.derives + ", no setting of the gate's")
		}
	}
}

// Lookup finds the option called name (a flag name or a file key).
func Lookup(name string) *Option {
	name = strings.ReplaceAll(name, "_", "-")
	for i := range Options {
		if Options[i].Name == name {
			return &Options[i]
		}
	}
	return nil
}

// Defaults are the settings of a gate nobody configured: the MikroTik
// recipe's sequence 9000,8000, step timeout 1m, open 30m, protect 22.
func Defaults() Settings {
	var s Settings
	s.service()
	for i := range Options {
		if o := &Options[i]; o.Default != "" {
			if err := o.bind(&s).Set(o.Default); err != nil {
				panic(fmt.Sprintf("default of --%s: %v", o.Name, err))
			}
		}
	}
	return s
}

// Flags are the options of one command, bound to its flag set as text and
// parsed only by Apply, so that every bad value is reported the same way
// ("--protect: port 70000 out of range (1-65535)"), in the table's order.
// --service NAME points the options In Named at that service; set's
// --remove removes it.
type Flags struct {
	fs      *pflag.FlagSet
	text    map[string]*string
	arrays  map[string]*[]string
	service *string
	remove  *bool
}

// AddFlags registers, on fs, a flag for every option that where takes,
// and --service (and for set --remove). attach shows the defaults; set has
// none (it changes only what it is given).
func AddFlags(fs *pflag.FlagSet, where Where) *Flags {
	f := &Flags{fs: fs, text: map[string]*string{}, arrays: map[string]*[]string{}}
	for i := range Options {
		o := &Options[i]
		if o.In&where == 0 || o.In&(Attach|Set) == 0 {
			continue
		}
		def := o.Default
		if where == Set {
			def = ""
		}
		if o.repeat {
			f.arrays[o.Name] = fs.StringArray(o.Name, nil, o.Usage)
			continue
		}
		text := new(string)
		*text = def
		f.text[o.Name] = text
		fs.Var(&textFlag{text, o.bind(&Settings{}).Type()}, o.Name, o.Usage)
		fs.Lookup(o.Name).DefValue = def
		if o.isBool() {
			fs.Lookup(o.Name).NoOptDefVal = "true" // --flows alone, or --flows=false
		}
	}
	if where&(Attach|Set) != 0 {
		made := "made when the gate has none"
		if where == Attach {
			made = "made with the gate"
		}
		f.service = fs.String("service", "", fmt.Sprintf("%s configure the service `NAME` (%s; --protect then needed), not default", namedList(where), made))
	}
	if where == Set {
		f.remove = fs.Bool("remove", false, "remove the service --service names, its grants with it")
	}
	return f
}

// namedList names the flags of where that --service points at a service:
// "--sequence, --step-timeout, --open, --protect and --allow".
func namedList(where Where) string { return joinOr(namedFlags(where), " and ") }

// NamedFlagList names the flags of where that --service points at a
// service, for a message: "--sequence, --step-timeout, --open, --protect
// or --allow".
func NamedFlagList(where Where) string { return joinOr(namedFlags(where), " or ") }

func namedFlags(where Where) []string {
	var names []string
	for _, o := range Options {
		if o.In&where != 0 && o.In&Named != 0 {
			names = append(names, "--"+o.Name)
		}
	}
	return names
}

// textFlag holds an option's text as given, parsed later by Apply (so a
// file and a flag are parsed by the same code); it names the option's type,
// so help shows a switch as one.
type textFlag struct {
	s   *string
	typ string
}

func (t *textFlag) String() string {
	if t.s == nil {
		return ""
	}
	return *t.s
}
func (t *textFlag) Set(s string) error { *t.s = s; return nil }
func (t *textFlag) Type() string       { return t.typ }

// isBool: the option is a switch (--flows alone, or --flows=false).
func (o *Option) isBool() bool {
	_, ok := o.bind(&Settings{}).(*boolValue)
	return ok
}

// Changed names the options given on the command line.
func (f *Flags) Changed() map[string]bool {
	out := map[string]bool{}
	for _, o := range Options {
		if f.fs.Lookup(o.Name) != nil && f.fs.Changed(o.Name) {
			out[o.Name] = true
		}
	}
	return out
}

// Service is the service --service names; "" when it is not given (the
// options configure default, and allow is the gate's).
func (f *Flags) Service() string {
	if f.service == nil || !f.fs.Changed("service") {
		return ""
	}
	return *f.service
}

// Remove says whether set's --remove was given.
func (f *Flags) Remove() bool { return f.remove != nil && *f.remove }

// Apply parses the options given on the command line into s: those In
// Named into the service --service names (made in s with the service
// defaults when s has none), the rest as ever.
func (f *Flags) Apply(s *Settings) error {
	name := f.Service()
	if f.fs.Changed("service") {
		if err := policy.CheckServiceName(name); err != nil {
			return fmt.Errorf("--service: %w", err)
		}
	}
	if f.Remove() && name == "" {
		return errors.New("--remove removes the service --service names: give --service")
	}
	for i := range Options {
		o := &Options[i]
		if f.fs.Lookup(o.Name) == nil || !f.fs.Changed(o.Name) {
			continue
		}
		v := o.bind(s)
		if name != "" && o.In&Named != 0 {
			v = o.own(s, s.Service(name))
		}
		if vals, ok := f.arrays[o.Name]; ok {
			// Repeatable: each value adds to the list.
			for _, val := range *vals {
				if err := v.Set(val); err != nil {
					return fmt.Errorf("--%s: %w", o.Name, err)
				}
			}
			continue
		}
		if err := v.Set(*f.text[o.Name]); err != nil {
			return fmt.Errorf("--%s: %w", o.Name, err)
		}
	}
	return nil
}

// Check validates settings as a whole, naming what is wrong: the gate's
// name, then the policy with the SPA keys that serve it (Check).
func (s *Settings) Check() error {
	if s.Gate != "" {
		if err := loader.ValidateName(s.Gate); err != nil {
			return err
		}
	}
	p := s.Config()
	return CheckWith(&p, s.SPAKeys, func(service string) bool { return fwknopMayOpen(s.Fwknop, &p, service) })
}

// Config is the policy the settings give the gate: Policy, and what the
// options given derive (the SPA port keys imply).
func (s *Settings) Config() policy.Policy {
	p := s.Policy.Clone()
	if p.Default() == nil {
		p.Services = append([]policy.Service{{Name: policy.DefaultService}}, p.Services...)
	}
	for i := range Options {
		if o := &Options[i]; o.derive != nil {
			o.derive(s, &p)
		}
	}
	return p
}

// LoaderOptions are what loader.Create makes of the settings; a policy the
// program cannot run is refused.
func (s *Settings) LoaderOptions() (loader.Options, error) {
	p := s.Config()
	if err := p.Validate(); err != nil {
		return loader.Options{}, err
	}
	return loader.Options{
		Name:       s.Gate,
		Interfaces: s.Interfaces,
		Mode:       s.Mode,
		MaxSources: s.MaxSources,
		MaxFlows:   s.MaxFlows,
		Config:     maps.FromPolicy(&p),
		SPAKeys:    s.SPAKeys,
	}, nil
}

// GateFromPath is run's default gate name: the config file's base name
// without its extension (/etc/knockgate/knockgate.toml: "knockgate").
func GateFromPath(path string) string {
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}
