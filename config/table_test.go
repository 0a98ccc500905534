package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// Every setting of the policy has its option, and every option that says
// it is the policy's has its setting (the init check), so no use of the
// table misses a setting.
func TestEverySettingHasAnOption(t *testing.T) {
	for _, st := range policy.GateSettings {
		if o := Lookup(st.Name); o == nil || o.gate == nil {
			t.Errorf("the gate's setting %s has no option", st.Name)
		}
	}
	for _, st := range policy.ServiceSettings {
		// (The top-level allow is the gate's, a named service's its own.)
		if o := Lookup(st.Name); o == nil || o.ownSetting == nil || (o.svc == nil && st.Name != "allow") {
			t.Errorf("the service setting %s has no option", st.Name)
		}
	}
}

// withKeys gives s keys as --spa-keys would (without a file to read: only
// root's are read).
func withKeys(t *testing.T, s *Settings, given map[string]bool) []spa.Key {
	t.Helper()
	k, err := spa.NewKey(7, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	s.SPAKeysFile, s.SPAKeys = "/etc/knockgate/spa.keys", []spa.Key{k}
	given["spa-keys"] = true
	return s.SPAKeys
}

// flagSet parses a command line of where's flags, without applying them.
func flagSet(t *testing.T, where Where, args ...string) (*pflag.FlagSet, *Flags) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f := AddFlags(fs, where)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs, f
}

// parse parses a command line of where's flags into s.
func parse(t *testing.T, where Where, s *Settings, args ...string) map[string]bool {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f := AddFlags(fs, where)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(s); err != nil {
		t.Fatal(err)
	}
	return f.Changed()
}

// Keys given without a port bring the default port, wherever they are
// given; a port given, or one the gate has, stays.
func TestSPADefaultPort(t *testing.T) {
	s := Defaults()
	withKeys(t, &s, parse(t, Attach, &s))
	if p := s.Config(); p.SPAPort != spa.DefaultPort || s.Policy.SPAPort != 0 {
		t.Errorf("attach --spa-keys: port %d (settings %d), want %d", p.SPAPort, s.Policy.SPAPort, spa.DefaultPort)
	}
	s = Defaults()
	withKeys(t, &s, parse(t, Attach, &s, "--spa-port", "5000"))
	if p := s.Config(); p.SPAPort != 5000 {
		t.Errorf("attach --spa-keys --spa-port 5000: port %d", p.SPAPort)
	}

	gate := func(port uint16) policy.Policy {
		d := Defaults()
		p := d.Config()
		p.SPAPort = port
		return p
	}
	for _, tc := range []struct {
		args      []string
		keys      bool
		have, now uint16
	}{
		{nil, true, 0, spa.DefaultPort},
		{nil, true, 5000, 5000},
		{[]string{"--spa-port", "6000"}, true, 5000, 6000},
		{[]string{"--spa-port", "0"}, false, 5000, 0},
		{[]string{"--open", "5m"}, false, 0, 0},
	} {
		var upd Settings
		given := parse(t, Set, &upd, tc.args...)
		if tc.keys {
			withKeys(t, &upd, given)
		}
		p := gate(tc.have)
		Merge(&p, &upd, given, "")
		if p.SPAPort != tc.now {
			t.Errorf("set %q (keys %v) on a gate with SPA port %d: port %d, want %d", tc.args, tc.keys, tc.have, p.SPAPort, tc.now)
		}
	}
}

// set changes what it is given and nothing else.
func TestMerge(t *testing.T) {
	d := Defaults()
	have := d.Config()
	have.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	want := have.Clone()

	var upd Settings
	given := parse(t, Set, &upd, "--open", "5m", "--protect", "all", "--flows=false", "--sequence", "none")
	Merge(&have, &upd, given, "")
	want.Services[0].Open = 5 * time.Minute
	want.Services[0].Protect, want.Services[0].ProtectAll = nil, true
	want.Services[0].Sequence = nil
	want.Flows = false
	if !reflect.DeepEqual(have, want) {
		t.Errorf("merged\n %+v\nwant\n %+v", have, want)
	}
	// What was merged shares nothing with the flags' settings.
	upd = Settings{}
	given = parse(t, Set, &upd, "--sequence", "1,2")
	Merge(&have, &upd, given, "")
	upd.Policy.Services[0].Sequence[0].Num = 9
	if have.Services[0].Sequence[0].Num != 1 {
		t.Error("the merged policy shares the flags' memory")
	}
}

// attach on an existing gate names what the gate has where the flags given
// ask for something else, as the flags that would ask for what it has.
func TestCompare(t *testing.T) {
	d := Defaults()
	have := Held{Policy: d.Config(), Sizes: loader.Sizes{MaxSources: loader.DefaultMaxSources, MaxFlows: loader.FlowSlots(loader.DefaultMaxFlows)}}
	have.Policy.Services[0].Protect = []policy.Port{{Num: 443, Proto: policy.TCP}, {Num: 22, Proto: policy.TCP}}
	have.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24")}
	have.Policy.SPAPort = 5000

	for _, tc := range []struct {
		args []string
		keys bool
		want []string
	}{
		{nil, false, nil},
		// The same in another order is the same.
		{[]string{"--protect", "22,443", "--allow", "192.0.2.0/24,10.0.0.0/8", "--open", "30m"}, false, nil},
		{[]string{"--sequence", "1,2", "--open", "1h", "--flows=false", "--max-flows", "8"}, false,
			[]string{"--sequence 9000,8000", "--open 30m0s", "--flows=true", "--max-flows 65536"}},
		{[]string{"--protect", "all", "--max-sources", "10", "--allow", "10.0.0.0/8"}, false,
			[]string{"--protect 22,443", "--allow 10.0.0.0/8,192.0.2.0/24", "--max-sources 65536"}},
		// Keys alone ask for the default port, which this gate has not.
		{nil, true, []string{"--spa-port 5000"}},
		{[]string{"--spa-port", "5000"}, true, nil},
		{[]string{"--spa-port", "5000", "--spa-window", "1m"}, false, []string{"--spa-window 30s"}},
	} {
		s := Defaults()
		given := parse(t, Attach, &s, tc.args...)
		if tc.keys {
			have.SPAKeys = withKeys(t, &s, given)
		}
		if got := Compare(&s, &have, given, ""); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("attach %q (keys %v): %q, want %q", tc.args, tc.keys, got, tc.want)
		}
	}
	s := Defaults()
	given := parse(t, Attach, &s, "--spa-port", "5000")
	withKeys(t, &s, given)
	have.SPAKeys = nil
	if got := Compare(&s, &have, given, ""); !reflect.DeepEqual(got, []string{"other SPA keys (0)"}) {
		t.Errorf("other keys: %q", got)
	}
}

// The summaries, from the table: attach's and set's line, status's lines.
func TestSummaries(t *testing.T) {
	d := Defaults()
	p := d.Config()
	p.Services[0].Sequence = []policy.Port{{Num: 9000, Proto: policy.TCP}, {Num: 8000, Proto: policy.UDP}}
	if got, want := Summary(&p), "sequence 9000,8000/udp, step timeout 1m0s, open 30m0s, protecting 22"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	p.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	p.Flows = false
	p.SPAPort = 62201
	p.Services[0].Sequence = nil
	p.Services[0].ProtectAll = true
	if got, want := Summary(&p), "sequence none, step timeout 1m0s, open 30m0s, protecting all, allowing 192.0.2.0/24, "+
		"flows off, SPA on 62201/udp (window ±30s)"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	want := []Line{{"sequence", "none (SPA only)"}, {"step timeout", "1m0s"}, {"open", "30m0s"}, {"protecting", "all"},
		{"allowing", "192.0.2.0/24"}}
	if got := Lines(&p); !reflect.DeepEqual(got, want) {
		t.Errorf("Lines = %q, want %q", got, want)
	}
	p.Allow = nil
	if got := Lines(&p)[4]; got != (Line{"allowing", "none"}) {
		t.Errorf("no allow list: %q", got)
	}
	if got, want := FlagList(Set), "--sequence, --step-timeout, --open, --protect, --allow, --flows, --flow-idle-tcp, --flow-idle-udp, "+
		"--spa-port, --spa-keys or --spa-window"; got != want {
		t.Errorf("FlagList(Set) = %q, want %q", got, want)
	}
}

// A reload refuses what only a new run can change and names what the
// running gate keeps.
func TestReloadCheck(t *testing.T) {
	cur := Defaults()
	cur.Gate = "edge"
	next := cur
	next.Policy = cur.Policy.Clone()
	next.Policy.Services[0].Open = time.Hour
	next.Metrics = "127.0.0.1:9746"
	if kept, err := ReloadCheck(&cur, &next); err != nil || kept != nil {
		t.Errorf("live changes: %v, %v", kept, err)
	}
	next.MaxSources, next.Mode = 10, loader.ModeGeneric
	if kept, err := ReloadCheck(&cur, &next); err != nil || strings.Join(kept, ",") != "max_sources,mode" {
		t.Errorf("kept changes: %v, %v", kept, err)
	}
	next.Gate = "core"
	if _, err := ReloadCheck(&cur, &next); err == nil || err.Error() != "gate changed from edge to core: a reload keeps it (restart run to change it)" {
		t.Errorf("gate renamed: %v", err)
	}
}
