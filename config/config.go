// Package config is a gate's settings, defined once: each option gives both
// a command-line flag (--step-timeout) and a config-file key (step_timeout),
// parsed by the same code, so `attach`, `set`, `run --check`, `run` and a
// reload of `run` all accept and refuse the same values with the same words.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// DefaultPath is where `run` reads its configuration.
const DefaultPath = "/etc/knockgate/knockgate.toml"

// Settings are everything a gate is made of, and how `run` serves it.
type Settings struct {
	Gate        string // default: the first interface (attach), the file's base name (run)
	Interfaces  []string
	Sequence    []maps.Port
	StepTimeout time.Duration
	Open        time.Duration
	Protect     []maps.Port
	ProtectAll  bool // protect = "all"
	Allow       []netip.Prefix
	MaxSources  uint32
	Mode        loader.Mode
	Flows       bool
	FlowIdleTCP time.Duration
	FlowIdleUDP time.Duration
	MaxFlows    uint32
	// SPA: the port (0: none; the default port once keys are given), the
	// keys as read from SPAKeysFile, and the clock window.
	SPAPort     uint16
	SPAKeysFile string
	SPAKeys     []spa.Key
	SPAWindow   time.Duration
	// Service only (the file's keys; run has no flags for them).
	Metrics   string // host:port to serve Prometheus metrics on; "": none
	LogFormat string // "text" or "json"
	Fleet     Fleet  // the [fleet] table; zero: one host, no fleet
}

// Where says which commands take an option.
type Where uint8

const (
	Attach Where = 1 << iota // knockgate attach flags
	Set                      // knockgate set flags
	File                     // config-file keys (run, run --check)
)

// Option is one setting: its flag and key name, help and default.
type Option struct {
	// Name is the flag's name; the file's key is Name with '-' as '_'.
	Name string
	// Usage is the flag's help; a `QUOTED` word names its argument.
	Usage   string
	Default string // parsed like any value; "": none
	In      Where
	value   func(*Settings) value
}

// Key is the option's config-file key.
func (o *Option) Key() string { return strings.ReplaceAll(o.Name, "-", "_") }

// Options is the table of every setting. Adding a setting here gives it its
// flag, its key, its parsing and its validation at once.
var Options = []Option{
	{Name: "gate", In: Attach | File, Usage: "name the gate `NAME` (default: the first interface's name; run: the config file's base name)",
		value: func(s *Settings) value { return &nameValue{&s.Gate} }},
	{Name: "interfaces", In: File, Usage: "interfaces to attach to",
		value: func(s *Settings) value { return &ifacesValue{&s.Interfaces} }},
	{Name: "sequence", In: Attach | Set | File, Default: "9000,8000", Usage: "knock `PORTS` in this order (PORT[/tcp|/udp],...; none: SPA only)",
		value: func(s *Settings) value { return &sequenceValue{&s.Sequence} }},
	{Name: "step-timeout", In: Attach | Set | File, Default: "1m", Usage: "each step must follow the previous one within `DURATION`",
		value: func(s *Settings) value { return &durationValue{&s.StepTimeout} }},
	{Name: "open", In: Attach | Set | File, Default: "30m", Usage: "a completed sequence opens the protected ports for `DURATION`",
		value: func(s *Settings) value { return &durationValue{&s.Open} }},
	{Name: "protect", In: Attach | Set | File, Default: "22", Usage: "`PORTS` closed to sources without a grant (all: every TCP and UDP port)",
		value: func(s *Settings) value { return &protectValue{&s.Protect, &s.ProtectAll} }},
	{Name: "allow", In: Attach | File, Usage: "`CIDRS` that may always reach protected ports (repeatable)",
		value: func(s *Settings) value { return &prefixesValue{&s.Allow} }},
	{Name: "max-sources", In: Attach | File, Default: fmt.Sprint(loader.DefaultMaxSources), Usage: "track at most `N` knocking and N granted sources",
		value: func(s *Settings) value { return &countValue{&s.MaxSources, 1, loader.MaxSourcesLimit} }},
	{Name: "flows", In: Attach | Set | File, Default: "true", Usage: "let replies in the host's own flows (and the rest of a session a grant let in) through protected ports",
		value: func(s *Settings) value { return &boolValue{&s.Flows} }},
	{Name: "flow-idle-tcp", In: Attach | Set | File, Default: "24h", Usage: "a TCP flow idle for `DURATION` ends",
		value: func(s *Settings) value { return &durationValue{&s.FlowIdleTCP} }},
	{Name: "flow-idle-udp", In: Attach | Set | File, Default: "3m", Usage: "a UDP flow idle for `DURATION` ends",
		value: func(s *Settings) value { return &durationValue{&s.FlowIdleUDP} }},
	{Name: "max-flows", In: Attach | File, Default: fmt.Sprint(loader.DefaultMaxFlows), Usage: "remember at most `N` flows of the host's",
		value: func(s *Settings) value { return &countValue{&s.MaxFlows, 4, loader.MaxFlowsLimit} }},
	{Name: "spa-port", In: Attach | Set | File, Usage: fmt.Sprintf("take single-packet authorization datagrams on UDP `PORT` (0: none; default %d once --spa-keys is given)", spa.DefaultPort),
		value: func(s *Settings) value { return &spaPortValue{&s.SPAPort} }},
	{Name: "spa-keys", In: Attach | Set | File, Usage: "SPA keys from `FILE`, one \"ID HEX NAME [any-address] [open=DURATION]\" per line (root's, mode 600); a change is live",
		value: func(s *Settings) value { return &keyFileValue{&s.SPAKeysFile, &s.SPAKeys} }},
	{Name: "spa-window", In: Attach | Set | File, Default: "30s", Usage: "an SPA datagram's timestamp may be `DURATION` off the gate's clock, either way",
		value: func(s *Settings) value { return &durationValue{&s.SPAWindow} }},
	{Name: "mode", In: Attach | File, Default: string(loader.ModeAuto), Usage: "XDP `MODE`: auto (native, else generic), native or generic",
		value: func(s *Settings) value { return &modeValue{&s.Mode} }},
	{Name: "metrics", In: File, Usage: "serve Prometheus metrics on `HOST:PORT` (empty: off)",
		value: func(s *Settings) value { return &addrValue{&s.Metrics} }},
	{Name: "log-format", In: File, Default: "text", Usage: "log events as `text` or json",
		value: func(s *Settings) value { return &choiceValue{&s.LogFormat, []string{"text", "json"}} }},
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
	for i := range Options {
		if o := &Options[i]; o.Default != "" {
			if err := o.value(&s).Set(o.Default); err != nil {
				panic(fmt.Sprintf("default of --%s: %v", o.Name, err))
			}
		}
	}
	return s
}

// Flags are the options of one command, bound to its flag set as text and
// parsed only by Apply, so that every bad value is reported the same way
// ("--protect: port 70000 out of range (1-65535)"), in the table's order.
type Flags struct {
	fs     *pflag.FlagSet
	text   map[string]*string
	arrays map[string]*[]string
}

// AddFlags registers, on fs, a flag for every option that where takes.
// attach shows the defaults; set has none (it changes only what it is
// given).
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
		if o.Name == "allow" {
			f.arrays[o.Name] = fs.StringArray(o.Name, nil, o.Usage)
			continue
		}
		text := new(string)
		*text = def
		f.text[o.Name] = text
		fs.Var(&textFlag{text, o.value(&Settings{}).Type()}, o.Name, o.Usage)
		fs.Lookup(o.Name).DefValue = def
		if _, ok := o.value(&Settings{}).(*boolValue); ok {
			fs.Lookup(o.Name).NoOptDefVal = "true" // --flows alone, or --flows=false
		}
	}
	return f
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

// Apply parses the options given on the command line into s.
func (f *Flags) Apply(s *Settings) error {
	for i := range Options {
		o := &Options[i]
		if f.fs.Lookup(o.Name) == nil || !f.fs.Changed(o.Name) {
			continue
		}
		v := o.value(s)
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

// Check validates settings as a whole, naming what is wrong.
func (s *Settings) Check() error {
	if s.Gate != "" {
		if err := loader.ValidateName(s.Gate); err != nil {
			return err
		}
	}
	cfg := s.Config()
	return cfg.Validate()
}

// Config is the runtime configuration the settings give the program.
func (s *Settings) Config() maps.Config {
	return maps.Config{
		Sequence:    s.Sequence,
		StepTimeout: s.StepTimeout,
		Open:        s.Open,
		Protected:   s.Protect,
		ProtectAll:  s.ProtectAll,
		Flows:       s.Flows,
		FlowIdleTCP: s.FlowIdleTCP,
		FlowIdleUDP: s.FlowIdleUDP,
		SPAPort:     s.spaPort(),
		SPAWindow:   s.SPAWindow,
	}
}

// spaPort is the SPA port the settings ask for: given, or the default one
// when keys are given without a port.
func (s *Settings) spaPort() uint16 {
	if s.SPAPort == 0 && s.SPAKeysFile != "" {
		return spa.DefaultPort
	}
	return s.SPAPort
}

// LoaderOptions are what loader.Create makes of the settings.
func (s *Settings) LoaderOptions() loader.Options {
	return loader.Options{
		Name:       s.Gate,
		Interfaces: s.Interfaces,
		Mode:       s.Mode,
		MaxSources: s.MaxSources,
		MaxFlows:   s.MaxFlows,
		Config:     s.Config(),
		Allow:      s.Allow,
		SPAKeys:    s.SPAKeys,
	}
}

// GateFromPath is run's default gate name: the config file's base name
// without its extension (/etc/knockgate/knockgate.toml: "knockgate").
func GateFromPath(path string) string {
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}

// value is one option's parser: flag text through Set, file values
// (strings, integers, arrays) through setTOML.
type value interface {
	Set(string) error
	Type() string
	setTOML(any) error
}

// text turns a file value into the flag text Set parses: strings as they
// are, integers in decimal, arrays joined by commas.
func text(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return fmt.Sprint(v), nil
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, err := text(e)
			if err != nil {
				return "", err
			}
			if strings.Contains(s, ",") && len(v) > 1 {
				return "", fmt.Errorf("array element %q holds a comma: give one item per element", s)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("want a string, not %s", tomlType(v))
}

func tomlType(v any) string {
	switch v.(type) {
	case bool:
		return "a boolean"
	case float64:
		return "a float"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date"
	}
	return fmt.Sprintf("%T", v)
}

type portsValue struct{ p *[]maps.Port }

func (v *portsValue) Type() string { return "ports" }
func (v *portsValue) Set(s string) (err error) {
	*v.p, err = policy.ParsePorts(s)
	return err
}
func (v *portsValue) setTOML(x any) error { return setText(v, x) }

// sequenceValue is a port list, or "none" (SPA only).
type sequenceValue struct{ p *[]maps.Port }

func (v *sequenceValue) Type() string { return "ports" }
func (v *sequenceValue) Set(s string) (err error) {
	if strings.EqualFold(strings.TrimSpace(s), "none") {
		*v.p = nil
		return nil
	}
	*v.p, err = policy.ParsePorts(s)
	return err
}
func (v *sequenceValue) setTOML(x any) error { return setText(v, x) }

// spaPortValue is a UDP port number, or 0 (none).
type spaPortValue struct{ p *uint16 }

func (v *spaPortValue) Type() string { return "port" }
func (v *spaPortValue) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil {
		return fmt.Errorf("bad SPA port %q (1-65535, or 0 for none)", s)
	}
	*v.p = uint16(n)
	return nil
}
func (v *spaPortValue) setTOML(x any) error { return setText(v, x) }

// keyFileValue reads an SPA key file when it is given, so a bad file is
// refused with the rest of the settings, before anything changes.
type keyFileValue struct {
	path *string
	keys *[]spa.Key
}

func (v *keyFileValue) Type() string { return "file" }
func (v *keyFileValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("no key file given")
	}
	keys, err := spa.ReadKeyFile(s, spa.RootOnly)
	if err != nil {
		return err
	}
	*v.path, *v.keys = s, keys
	return nil
}
func (v *keyFileValue) setTOML(x any) error { return setText(v, x) }

// protectValue is a port list, or "all".
type protectValue struct {
	p   *[]maps.Port
	all *bool
}

func (v *protectValue) Type() string { return "ports" }
func (v *protectValue) Set(s string) (err error) {
	if strings.EqualFold(strings.TrimSpace(s), "all") {
		*v.p, *v.all = nil, true
		return nil
	}
	*v.all = false
	*v.p, err = policy.ParsePorts(s)
	return err
}
func (v *protectValue) setTOML(x any) error { return setText(v, x) }

type boolValue struct{ b *bool }

func (v *boolValue) Type() string { return "bool" }
func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not true or false", s)
	}
	*v.b = b
	return nil
}
func (v *boolValue) setTOML(x any) error {
	if b, ok := x.(bool); ok {
		*v.b = b
		return nil
	}
	return fmt.Errorf("want true or false, not %s", tomlType(x))
}

type durationValue struct{ d *time.Duration }

func (v *durationValue) Type() string { return "duration" }

func (v *durationValue) Set(s string) (err error) {
	*v.d, err = policy.ParseDuration(s)
	return err
}

func (v *durationValue) setTOML(x any) error { return setText(v, x) }

// prefixesValue is a list of CIDRs; a bare address is a single host (/32
// or /128). As a flag it may be repeated, each value itself a list.
type prefixesValue struct{ p *[]netip.Prefix }

func (v *prefixesValue) Type() string { return "cidrs" }
func (v *prefixesValue) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := policy.ParseCIDR(f)
		if err != nil {
			return err
		}
		*v.p = append(*v.p, p)
	}
	return nil
}
func (v *prefixesValue) setTOML(x any) error {
	*v.p = nil
	return setText(v, x)
}

type countValue struct {
	n        *uint32
	min, max uint64
}

func (v *countValue) Type() string { return "N" }
func (v *countValue) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a number", s)
	}
	if n < v.min || n > v.max {
		return fmt.Errorf("%d out of range (%d-%d)", n, v.min, v.max)
	}
	*v.n = uint32(n)
	return nil
}
func (v *countValue) setTOML(x any) error {
	if n, ok := x.(int64); ok && n < 0 {
		return fmt.Errorf("%d out of range (%d-%d)", n, v.min, v.max)
	}
	return setText(v, x)
}

type modeValue struct{ m *loader.Mode }

func (v *modeValue) Type() string { return "mode" }
func (v *modeValue) Set(s string) (err error) {
	*v.m, err = loader.ParseMode(s)
	return err
}
func (v *modeValue) setTOML(x any) error { return setText(v, x) }

type nameValue struct{ s *string }

func (v *nameValue) Type() string { return "name" }
func (v *nameValue) Set(s string) error {
	if err := loader.ValidateName(s); err != nil {
		return err
	}
	*v.s = s
	return nil
}
func (v *nameValue) setTOML(x any) error { return setText(v, x) }

type ifacesValue struct{ s *[]string }

func (v *ifacesValue) Type() string { return "interfaces" }
func (v *ifacesValue) Set(s string) error {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if err := CheckInterfaceName(f); err != nil {
			return err
		}
		for _, seen := range out {
			if seen == f {
				return fmt.Errorf("interface %q named twice", f)
			}
		}
		out = append(out, f)
	}
	*v.s = out
	return nil
}
func (v *ifacesValue) setTOML(x any) error {
	if a, ok := x.([]any); ok && len(a) == 0 {
		return errors.New("no interface given")
	}
	return setText(v, x)
}

// CheckInterfaceName refuses what the kernel would never take as an
// interface name.
func CheckInterfaceName(s string) error {
	if s == "" || len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n") {
		return fmt.Errorf("bad interface name %q", s)
	}
	return nil
}

type addrValue struct{ s *string }

func (v *addrValue) Type() string { return "host:port" }
func (v *addrValue) Set(s string) error {
	if s != "" {
		if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
			return fmt.Errorf("bad address %q (want HOST:PORT, e.g. 127.0.0.1:9746)", s)
		}
	}
	*v.s = s
	return nil
}
func (v *addrValue) setTOML(x any) error { return setText(v, x) }

type choiceValue struct {
	s       *string
	choices []string
}

func (v *choiceValue) Type() string { return strings.Join(v.choices, "|") }
func (v *choiceValue) Set(s string) error {
	for _, c := range v.choices {
		if s == c {
			*v.s = s
			return nil
		}
	}
	return fmt.Errorf("%q is not one of %s", s, strings.Join(v.choices, ", "))
}
func (v *choiceValue) setTOML(x any) error { return setText(v, x) }

func setText(v value, x any) error {
	s, err := text(x)
	if err != nil {
		return err
	}
	return v.Set(s)
}
