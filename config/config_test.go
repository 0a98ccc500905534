package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
)

func tcp(n uint16) policy.Port { return policy.Port{Num: n, Proto: policy.TCP} }
func udp(n uint16) policy.Port { return policy.Port{Num: n, Proto: policy.UDP} }

// def is the service the top-level options configure.
func def(s Settings) policy.Service { return s.Policy.Services[0] }

// flags parses a command line of attach flags into the defaults.
func flags(t *testing.T, where Where, args ...string) (Settings, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f := AddFlags(fs, where)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	s := Defaults()
	return s, f.Apply(&s)
}

func TestDefaults(t *testing.T) {
	s := Defaults()
	want := Settings{Policy: policy.Policy{
		Services: []policy.Service{{Name: policy.DefaultService, Sequence: []policy.Port{tcp(9000), tcp(8000)},
			StepTimeout: time.Minute, Open: 30 * time.Minute, Protect: []policy.Port{tcp(22)}}},
		Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute, SPAWindow: 30 * time.Second},
		MaxSources: loader.DefaultMaxSources, Mode: loader.ModeAuto, LogFormat: "text", MaxFlows: loader.DefaultMaxFlows,
		FwknopWindow: 2 * time.Minute,
		HookUser:     "knockgate", HookTimeout: 30 * time.Second, HookMaxRunning: 4, HookMaxWaiting: 256}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("defaults %+v, want %+v", s, want)
	}
}

// A value means the same as a flag and as a file key, and is refused with
// the same words.
func TestFlagsAndFileAgree(t *testing.T) {
	for _, tc := range []struct {
		flag, text, toml string
		check            func(Settings) bool
		err              string
	}{
		{flag: "sequence", text: "7000/udp,7001,7002:udp", toml: `"7000/udp,7001,7002:udp"`,
			check: func(s Settings) bool {
				return reflect.DeepEqual(def(s).Sequence, []policy.Port{udp(7000), tcp(7001), udp(7002)})
			}},
		{flag: "protect", text: "22,443,53/udp", toml: `"22,443,53/udp"`,
			check: func(s Settings) bool {
				return reflect.DeepEqual(def(s).Protect, []policy.Port{tcp(22), tcp(443), udp(53)})
			}},
		{flag: "step-timeout", text: "45s", toml: `"45s"`, check: func(s Settings) bool { return def(s).StepTimeout == 45*time.Second }},
		{flag: "open", text: "1h30m", toml: `"1h30m"`, check: func(s Settings) bool { return def(s).Open == 90*time.Minute }},
		{flag: "max-sources", text: "1024", toml: `1024`, check: func(s Settings) bool { return s.MaxSources == 1024 }},
		{flag: "mode", text: "generic", toml: `"generic"`, check: func(s Settings) bool { return s.Mode == loader.ModeGeneric }},
		{flag: "allow", text: "10.0.0.0/8,2001:db8::1", toml: `["10.0.0.0/8", "2001:db8::1"]`,
			check: func(s Settings) bool {
				return reflect.DeepEqual(s.Policy.Allow, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::1/128")})
			}},
		{flag: "protect", text: "0", toml: `"0"`, err: "port 0 out of range (1-65535)"},
		{flag: "protect", text: "65536", toml: `"65536"`, err: "port 65536 out of range (1-65535)"},
		{flag: "protect", text: "22,", toml: `"22,"`, err: `empty item 2 in port list "22,"`},
		{flag: "protect", text: "22/icmp", toml: `"22/icmp"`, err: `port "22/icmp": unknown protocol "icmp" (want tcp or udp)`},
		{flag: "protect", text: "", toml: `""`, err: "empty port list"},
		{flag: "open", text: "0", toml: `"0"`, err: `duration "0" must be positive`},
		{flag: "open", text: "1d", toml: `"1d"`, err: `bad duration "1d"`},
		{flag: "allow", text: "10.0.0.0/33", toml: `"10.0.0.0/33"`, err: `bad CIDR "10.0.0.0/33"`},
		{flag: "allow", text: "fe80::1%eth0", toml: `["fe80::1%eth0"]`, err: `bad CIDR "fe80::1%eth0"`},
		{flag: "max-sources", text: "0", toml: `0`, err: "0 out of range (1-16777216)"},
		{flag: "max-sources", text: "lots", toml: `"lots"`, err: `"lots" is not a number`},
		{flag: "max-sources", text: "99999999999", toml: `99999999999`, err: "99999999999 out of range (1-16777216)"},
		{flag: "mode", text: "turbo", toml: `"turbo"`, err: `unknown mode "turbo"`},
		{flag: "gate", text: "a/b", toml: `"a/b"`, err: `gate name "a/b"`},
	} {
		s, err := flags(t, Attach, "--"+tc.flag, tc.text)
		file := "interfaces = [\"eth0\"]\n" + strings.ReplaceAll(tc.flag, "-", "_") + " = " + tc.toml + "\n"
		fs, ferr := Parse("t.toml", []byte(file))
		if tc.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), "--"+tc.flag+": "+tc.err) {
				t.Errorf("--%s %q: %v, want --%s: %s", tc.flag, tc.text, err, tc.flag, tc.err)
			}
			want := "t.toml:2: " + strings.ReplaceAll(tc.flag, "-", "_") + ": " + tc.err
			if ferr == nil || !strings.HasPrefix(ferr.Error(), want) {
				t.Errorf("file %q: %v, want %s", file, ferr, want)
			}
			continue
		}
		if err != nil || !tc.check(s) {
			t.Errorf("--%s %q: %+v, %v", tc.flag, tc.text, s, err)
		}
		if ferr != nil || !tc.check(*fs) {
			t.Errorf("file %q: %+v, %v", file, fs, ferr)
		}
	}
}

func TestAllowRepeats(t *testing.T) {
	s, err := flags(t, Attach, "--allow", "10.0.0.0/8", "--allow", "192.0.2.1,2001:db8::/32")
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/32")}
	if err != nil || !reflect.DeepEqual(s.Policy.Allow, want) {
		t.Errorf("repeated --allow: %v, %v; want %v", s.Policy.Allow, err, want)
	}
}

func TestSetFlagsHaveNoDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("set", pflag.ContinueOnError)
	f := AddFlags(fs, Set)
	if err := fs.Parse([]string{"--open", "5m"}); err != nil {
		t.Fatal(err)
	}
	var s Settings
	if err := f.Apply(&s); err != nil || def(s).Open != 5*time.Minute || def(s).Sequence != nil {
		t.Errorf("set --open 5m: %+v, %v; want only open", s, err)
	}
	if got := f.Changed(); !reflect.DeepEqual(got, map[string]bool{"open": true}) {
		t.Errorf("changed %v", got)
	}
	for _, name := range []string{"max-sources", "mode", "gate", "metrics", "interfaces"} {
		if fs.Lookup(name) != nil {
			t.Errorf("set has --%s", name)
		}
	}
}

func TestParseFile(t *testing.T) {
	file := `# the example, whole
gate = "edge"
interfaces = ["eth0", "wg0"]
sequence = "9000,8000"
step_timeout = "1m"
open = "30m"
protect = "22,8291"
allow = ["192.0.2.0/24"]
max_sources = 65536
mode = "auto"
metrics = "127.0.0.1:9746"
log_format = "json"
`
	s, err := Parse("/etc/knockgate/knockgate.toml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := &Settings{Gate: "edge", Interfaces: []string{"eth0", "wg0"}, Policy: policy.Policy{
		Services: []policy.Service{{Name: policy.DefaultService, Sequence: []policy.Port{tcp(9000), tcp(8000)},
			StepTimeout: time.Minute, Open: 30 * time.Minute, Protect: []policy.Port{tcp(22), tcp(8291)}}},
		Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		Flows: true, FlowIdleTCP: 24 * time.Hour, FlowIdleUDP: 3 * time.Minute, SPAWindow: 30 * time.Second},
		MaxSources: 65536, Mode: loader.ModeAuto, Metrics: "127.0.0.1:9746", LogFormat: "json", MaxFlows: loader.DefaultMaxFlows,
		FwknopWindow: 2 * time.Minute,
		HookUser:     "knockgate", HookTimeout: 30 * time.Second, HookMaxRunning: 4, HookMaxWaiting: 256}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("parsed %+v\nwant %+v", s, want)
	}
	// What is not given keeps its default; the gate is named after the file.
	s, err = Parse("/etc/knockgate/office.toml", []byte(`interfaces = ["eth1"]`))
	if err != nil || s.Gate != "office" || def(*s).Open != 30*time.Minute || s.Metrics != "" || s.LogFormat != "text" {
		t.Errorf("minimal file: %+v, %v", s, err)
	}
}

func TestFileErrorsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"interfaces = [\"eth0\"]\n\nprotect = \"70000\"\n", "t.toml:3: protect: port 70000 out of range (1-65535)"},
		{"interfaces = [\"eth0\"]\nsequnce = \"1,2\"\n", "t.toml:2: sequnce: unknown key (did you mean sequence?)"},
		{"interfaces = [\"eth0\"]\nwhatever = 1\n", "t.toml:2: whatever: unknown key (known: allow, fleet_hooks, flow_idle_tcp, flow_idle_udp, flows, fwknop_access, fwknop_window, gate, hook_max_running"},
		{"interfaces = [\"eth0\"]\nstep-timeout = \"1m\"\n", "t.toml:2: step-timeout: unknown key (did you mean step_timeout?)"},
		{"interfaces = [\"eth0\"]\nno_grant_self = true\n", "t.toml:2: no_grant_self: unknown key"},
		{"interfaces = [\"eth0\"]\nmax_sources = -3\n", "t.toml:2: max_sources: -3 out of range"},
		{"interfaces = [\"eth0\"]\nopen = 5\n", "t.toml:2: open: bad duration \"5\""},
		{"interfaces = [\"eth0\"]\nopen = true\n", "t.toml:2: open: want a string, not a boolean"},
		{"interfaces = [\"eth0\"]\nsequence = \"22,23\"\n", "t.toml:2: sequence: port 22 is both a knock step and protected"},
		{"interfaces = [\"eth0\"\n", "t.toml:1: expected a comma"},
		{"interfaces = [\"eth0\"]\nopen = \"1m\"\nopen = \"2m\"\n", "t.toml:3: Key 'open' has already been defined"},
		{"sequence = \"1,2\"\n", "t.toml: interfaces: missing: name at least one interface"},
		{"interfaces = []\n", "t.toml:1: interfaces: no interface given"},
		{"interfaces = [\"eth0\", \"eth0\"]\n", "t.toml:1: interfaces: interface \"eth0\" named twice"},
		{"interfaces = [\"a/b\"]\n", "t.toml:1: interfaces: bad interface name \"a/b\""},
		{"interfaces = [\"eth0\"]\nmetrics = \"localhost\"\n", "t.toml:2: metrics: bad address \"localhost\""},
		{"interfaces = [\"eth0\"]\nlog_format = \"xml\"\n", "t.toml:2: log_format: \"xml\" is not one of text, json"},
		{"interfaces = [\"eth0\"]\n[fleet]\npeers = []\n", "t.toml:2: fleet: give peers (the embedded servers' route addresses) or url"},
		{"interfaces = [\"eth0\"]\n[fleet]\npeer = [\"a:1\"]\n", "t.toml:2: fleet: unknown key peer"},
		// Tables and keys the schema does not have, at any depth.
		{"interfaces = [\"eth0\"]\n\n[services.web.x]\nprotect = \"443\"\n", "t.toml:3: services.web.x: unknown table (a service's keys: sequence, step_timeout, open, protect, allow, on_open, on_close, fleet_hooks)"},
		{"interfaces = [\"eth0\"]\n[foo.bar]\n", "t.toml:2: foo.bar: unknown table (the tables are [services.NAME] and [fleet])"},
		{"interfaces = [\"eth0\"]\nfoo.bar = 1\n", "t.toml:2: foo.bar: unknown key"},
		{"interfaces = [\"eth0\"]\n[foo]\nbar = 1\n", "t.toml:2: foo: unknown key"},
		{"interfaces = [\"eth0\"]\n[[services]]\nname = \"web\"\n", "t.toml:2: services: want a table [services.NAME] for each service"},
		{"interfaces = [\"eth0\"]\n[sequence.x]\n", "t.toml:2: sequence.x: sequence is a setting, not a table"},
		{"interfaces = [\"eth0\"]\n[fleet]\nurl = \"nats://a:4222\"\n\n[fleet.tls]\ncert = \"x\"\n", "t.toml:5: fleet: unknown table tls (known: name, gate, peers"},
		{"interfaces = [\"eth0\"]\n[fleet.tls]\ncert = \"x\"\n", "t.toml:2: fleet: unknown table tls"},
		{"interfaces = [\"eth0\"]\n[fleet]\nurl = \"nats://a:4222\"\nx.y = 1\n", "t.toml:2: fleet: unknown key x.y"},
	} {
		_, err := Parse("t.toml", []byte(tc.file))
		var fe *FileError
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !errors.As(err, &fe) {
			t.Errorf("%q: %v, want %q...", tc.file, err, tc.want)
		}
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(%s): %v, want an error naming it", missing, err)
	}
	path := filepath.Join(t.TempDir(), "gate.toml")
	os.WriteFile(path, []byte("interfaces = [\"eth0\"]\nopen = \"x\"\n"), 0o644)
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), path+":2: open:") {
		t.Errorf("Load(%s): %v", path, err)
	}
}

// Every key is in README's table and in the example config, and the
// example parses.
func TestKeysDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../service/knockgate.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range Options {
		if o.In&File == 0 {
			continue
		}
		if !strings.Contains(string(readme), "| `"+o.Key()+"` |") {
			t.Errorf("key %s is not in README's table", o.Key())
		}
		if !strings.Contains(string(example), o.Key()+" = ") {
			t.Errorf("key %s is not in the example config", o.Key())
		}
	}
	if _, err := Parse("knockgate.toml", example); err != nil {
		t.Errorf("the example config: %v", err)
	}
}

// A [fleet] table without state_dir keeps its state where the unit's
// StateDirectory makes room for it, with peers or with url.
func TestFleetStateDirDefault(t *testing.T) {
	for _, table := range []string{
		"[fleet]\nname = \"a\"\npeers = [\"192.0.2.1:6222\", \"192.0.2.2:6222\"]\n",
		"[fleet]\nname = \"a\"\nurl = \"nats://192.0.2.9:4222\"\n",
	} {
		s, err := Parse("t.toml", []byte("interfaces = [\"eth0\"]\n"+table))
		if err != nil {
			t.Errorf("%q: %v", table, err)
			continue
		}
		if s.Fleet.StateDir != DefaultFleetStateDir || DefaultFleetStateDir != "/var/lib/knockgate/fleet" {
			t.Errorf("%q: state_dir %q, want %q", table, s.Fleet.StateDir, "/var/lib/knockgate/fleet")
		}
	}
	// The unit makes /var/lib/knockgate, writable under ProtectSystem=strict.
	unit, err := os.ReadFile("../service/knockgate.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nStateDirectory=knockgate\n") || !strings.HasPrefix(DefaultFleetStateDir, "/var/lib/knockgate/") {
		t.Errorf("the unit has no StateDirectory=knockgate for %s", DefaultFleetStateDir)
	}
	s, err := Parse("t.toml", []byte("interfaces = [\"eth0\"]\n[fleet]\nname = \"a\"\npeers = [\"192.0.2.1:6222\"]\nstate_dir = \"/srv/kg\"\n"))
	if err != nil || s.Fleet.StateDir != "/srv/kg" {
		t.Errorf("state_dir given: %q, %v", s.Fleet.StateDir, err)
	}
}
