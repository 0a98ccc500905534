//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// The config as attach parses it survives the C layout and the JSON of
// status: what status prints parses back to what was asked for.
func TestConfigRoundTrip(t *testing.T) {
	fs := newFlags("attach")
	flags := config.AddFlags(fs, config.Attach)
	if err := fs.Parse([]string{"--sequence", "7000/udp,7001,7002:udp,7003", "--step-timeout", "45s",
		"--open", "1h30m", "--protect", "22,443,53/udp", "--allow", "10.0.0.0/8,2001:db8::1"}); err != nil {
		t.Fatal(err)
	}
	s := config.Defaults()
	if err := flags.Apply(&s); err != nil {
		t.Fatal(err)
	}
	p := s.Config()
	cfg := maps.FromPolicy(&p)
	allow := p.Allow
	cfg.Generation = 7
	d := cfg.Policy.Default()

	text, err := json.Marshal(encodeConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var back configJSON
	if err := json.Unmarshal(text, &back); err != nil {
		t.Fatal(err)
	}
	parsePorts := func(list []string) []policy.Port {
		t.Helper()
		var out []policy.Port
		for _, s := range list {
			p, err := policy.ParsePort(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	if got := parsePorts(back.Sequence); !reflect.DeepEqual(got, d.Sequence) {
		t.Errorf("sequence %v (from %s), want %v", got, text, d.Sequence)
	}
	if got := parsePorts(back.Protect); !reflect.DeepEqual(got, d.Protect) {
		t.Errorf("protect %v (from %s), want %v", got, text, d.Protect)
	}
	if st, err := time.ParseDuration(back.StepTimeout); err != nil || st != d.StepTimeout {
		t.Errorf("step_timeout %q, want %s", back.StepTimeout, d.StepTimeout)
	}
	if o, err := time.ParseDuration(back.Open); err != nil || o != d.Open {
		t.Errorf("open %q, want %s", back.Open, d.Open)
	}
	var got []netip.Prefix
	for _, a := range back.Allow {
		p, err := policy.ParseCIDR(a)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	if !reflect.DeepEqual(got, allow) {
		t.Errorf("allow %v, want %v", got, allow)
	}
	if back.Generation != cfg.Generation {
		t.Errorf("generation %d, want %d", back.Generation, cfg.Generation)
	}
	// Every port carries its protocol, so a reader need not know the default.
	for _, p := range append(back.Sequence, back.Protect...) {
		if !strings.HasSuffix(p, "/tcp") && !strings.HasSuffix(p, "/udp") {
			t.Errorf("port %q has no protocol", p)
		}
	}
}

func TestStatusJSONShape(t *testing.T) {
	st := &gateStatus{
		gate:   "kgc0",
		ifaces: []loader.Iface{{Name: "kgc0", State: loader.Attached, Mode: loader.ModeNative, Ifindex: 7}},
		cfg: maps.Config{Policy: policy.Policy{Services: []policy.Service{{
			Name:        policy.DefaultService,
			Sequence:    []policy.Port{{Num: 9000, Proto: policy.TCP}, {Num: 8000, Proto: policy.TCP}},
			StepTimeout: time.Minute, Open: 30 * time.Minute,
			Protect: []policy.Port{{Num: 22, Proto: policy.TCP}},
		}}}, Generation: 1},
	}
	st.verdicts[7][0] = 5
	st.counters[0] = 5
	var empty map[string]any
	text, err := json.Marshal(st.json())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(text, &empty); err != nil {
		t.Fatal(err)
	}
	if src, ok := empty["sources"].([]any); !ok || len(src) != 0 {
		t.Errorf("sources = %#v, want [] (in %s)", empty["sources"], text)
	}
	cfg := empty["config"].(map[string]any)
	if a, ok := cfg["allow"].([]any); !ok || len(a) != 0 {
		t.Errorf("config.allow = %#v, want [] (in %s)", cfg["allow"], text)
	}
	counters := empty["counters"].(map[string]any)
	if len(counters) != len(maps.CounterNames) {
		t.Errorf("%d counters, want %d", len(counters), len(maps.CounterNames))
	}
	if counters[maps.CounterNames[0]] != float64(5) {
		t.Errorf("counter %s = %v, want 5", maps.CounterNames[0], counters[maps.CounterNames[0]])
	}
	ifaces := empty["interfaces"].([]any)
	if len(ifaces) != 1 {
		t.Fatalf("interfaces %v, want one", ifaces)
	}
	ifc := ifaces[0].(map[string]any)
	if ifc["name"] != "kgc0" || ifc["state"] != "attached" || ifc["mode"] != "native" || ifc["ifindex"] != float64(7) ||
		ifc["counters"].(map[string]any)["passed"] != float64(5) {
		t.Errorf("interface %v, want kgc0 attached natively on ifindex 7, 5 passed", ifc)
	}
	if empty["interface"] != "kgc0" || empty["mode"] != "native" || empty["gate"] != "kgc0" {
		t.Errorf("gate, interface, mode: %v, %v, %v", empty["gate"], empty["interface"], empty["mode"])
	}
	for _, k := range []string{"gate", "interface", "mode", "interfaces", "config", "counters", "sources"} {
		if _, ok := empty[k]; !ok {
			t.Errorf("no %q in %s", k, text)
		}
	}

	expires := time.Date(2026, 11, 26, 14, 10, 0, 0, time.UTC)
	st.sources = []maps.SourceState{{Addr: netip.MustParseAddr("10.0.0.2"), Service: "default", State: "open", Stage: 2, Expires: expires}}
	got := st.json().Sources
	want := []sourceJSON{{Addr: "10.0.0.2", Service: "default", State: "open", Stage: 2, Expires: "2026-11-26T14:10:00Z"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sources %+v, want %+v", got, want)
	}
	if svcs := st.json().Services; len(svcs) != 1 || svcs[0].Name != "default" || svcs[0].GrantsOpen != 1 {
		t.Errorf("services %+v, want default with 1 grant open", svcs)
	}

	// The plain form shows the same facts.
	var b bytes.Buffer
	st.print(&b, expires.Add(-time.Minute))
	for _, s := range []string{"knockgate on kgc0 (native)", "9000,8000", "1m0s", "30m0s",
		"10.0.0.2", "2/2", "2026-11-26T14:10:00Z (in 1m0s)", "allowing:      none"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("plain status lacks %q:\n%s", s, b.String())
		}
	}
	if strings.Contains(b.String(), "services:") {
		t.Errorf("plain status of a gate with default alone has a table of services:\n%s", b.String())
	}
}

// status lists each service with its settings, own allow list, grants open
// and counters, and each source's grant by service.
func TestStatusServices(t *testing.T) {
	d := config.Defaults()
	p := d.Config()
	p.SPAPort = 62201
	p.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	p.Services = append(p.Services,
		policy.Service{Name: "web", Sequence: []policy.Port{{Num: 7000, Proto: policy.TCP}, {Num: 7100, Proto: policy.UDP}},
			StepTimeout: 30 * time.Second, Open: 2 * time.Hour, Protect: []policy.Port{{Num: 443, Proto: policy.TCP}, {Num: 8443, Proto: policy.TCP}},
			Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		policy.Service{Name: "rdp", StepTimeout: time.Minute, Open: 30 * time.Minute, Protect: []policy.Port{{Num: 3389, Proto: policy.TCP}}})
	expires := time.Date(2026, 11, 26, 14, 10, 0, 0, time.UTC)
	a, b := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	st := &gateStatus{gate: "kgc0", ifaces: []loader.Iface{{Name: "kgc0", State: loader.Attached, Mode: loader.ModeNative, Ifindex: 7}},
		cfg: maps.Config{Policy: p, Generation: 3},
		sources: []maps.SourceState{
			{Addr: a, Service: "default", State: "open", Stage: 2, Expires: expires},
			{Addr: a, Service: "rdp", State: "open", Expires: expires},
			{Addr: b, Service: "web", State: "knocking", Stage: 1, Expires: expires},
		},
		svcCounts: map[string]maps.ServiceCounters{"default": {Granted: 4, Expired: 1}, "rdp": {Granted: 2}},
		spaKeys:   []maps.SPAKey{{Key: spa.Key{ID: 7, Name: "contractor", Services: []string{"web"}}, Opens: []string{"web"}}},
	}
	j := st.json()
	want := []serviceJSON{
		{Name: "default", Sequence: []string{"9000/tcp", "8000/tcp"}, StepTimeout: "1m0s", Open: "30m0s", Protect: []string{"22/tcp"},
			Allow: []string{}, GrantsOpen: 1, Granted: 4, Expired: 1},
		{Name: "web", Sequence: []string{"7000/tcp", "7100/udp"}, StepTimeout: "30s", Open: "2h0m0s", Protect: []string{"443/tcp", "8443/tcp"},
			Allow: []string{"198.51.100.0/24"}},
		{Name: "rdp", Sequence: []string{}, StepTimeout: "1m0s", Open: "30m0s", Protect: []string{"3389/tcp"}, Allow: []string{}, GrantsOpen: 1, Granted: 2},
	}
	if !reflect.DeepEqual(j.Services, want) {
		t.Errorf("services\n %+v\nwant\n %+v", j.Services, want)
	}
	if j.Sources[1].Service != "rdp" || j.Sources[2].Service != "web" || strings.Join(j.Config.Allow, ",") != "192.0.2.0/24" {
		t.Errorf("sources %+v, config %+v", j.Sources, j.Config)
	}
	if got := j.SPA.Keys[0].Services; !reflect.DeepEqual(got, []string{"web"}) {
		t.Errorf("key services %q", got)
	}

	var out bytes.Buffer
	st.print(&out, expires.Add(-time.Minute))
	text := out.String()
	for _, re := range []string{
		`(?m)^services:$`,
		`(?m)^  SERVICE +SEQUENCE +STEP TIMEOUT +OPEN +PROTECTING +ALLOWING +GRANTS OPEN$`,
		`(?m)^  default +9000,8000 +1m0s +30m0s +22 +none +1$`,
		`(?m)^  web +7000,7100/udp +30s +2h0m0s +443,8443 +198\.51\.100\.0/24 +0$`,
		`(?m)^  rdp +none \(SPA only\) +1m0s +30m0s +3389 +none +1$`,
		`(?m)^  ADDRESS +SERVICE +STATE +STAGE +EXPIRES$`,
		`(?m)^  10\.0\.0\.2 +rdp +open +- +2026-11-26T14:10:00Z \(in 1m0s\)$`,
		`(?m)^  10\.0\.0\.3 +web +knocking +1/2 +`,
		`key 7 contractor, services web: never used`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("plain status does not match %s:\n%s", re, text)
		}
	}
}

func TestEventFormats(t *testing.T) {
	at := time.Date(2026, 11, 26, 13, 40, 1, 123456789, time.UTC)
	src := netip.MustParseAddr("10.0.0.2")
	for _, tc := range []struct {
		ev    maps.Event
		plain string
		json  string
	}{
		{
			maps.Event{Time: at, Type: "knock", Src: src, Port: policy.Port{Num: 9000, Proto: policy.TCP}, Stage: 1, Expires: at.Add(time.Minute), Service: "default"},
			"2026-11-26T13:40:01Z knock  10.0.0.2 -> 9000/tcp stage 1/2 (next step before 13:41:01)",
			`{"time":"2026-11-26T13:40:01.123456789Z","type":"knock","src":"10.0.0.2","port":9000,"proto":"tcp","stage":1,"expires":"2026-11-26T13:41:01Z","service":"default"}`,
		},
		{
			maps.Event{Time: at, Type: "reset", Src: src, Port: policy.Port{Num: 1234, Proto: policy.UDP}, Stage: 1, Service: "web"},
			"2026-11-26T13:40:01Z reset  10.0.0.2 -> 1234/udp [web] (was at stage 1/2)",
			`{"time":"2026-11-26T13:40:01.123456789Z","type":"reset","src":"10.0.0.2","port":1234,"proto":"udp","stage":1,"service":"web"}`,
		},
		{
			maps.Event{Time: at, Type: "open", Src: netip.MustParseAddr("2001:db8::2"), Port: policy.Port{Num: 8000, Proto: policy.TCP}, Stage: 2, Expires: at.Add(30 * time.Minute), Service: "default"},
			"2026-11-26T13:40:01Z open   2001:db8::2 -> 8000/tcp granted until 2026-11-26T14:10:01Z",
			`{"time":"2026-11-26T13:40:01.123456789Z","type":"open","src":"2001:db8::2","port":8000,"proto":"tcp","stage":2,"expires":"2026-11-26T14:10:01Z","service":"default"}`,
		},
		{
			maps.Event{Time: at, Type: "open", Src: src, Port: policy.Port{Num: 62201, Proto: policy.UDP}, KeyID: 7, Expires: at.Add(2 * time.Hour), Service: "web"},
			"2026-11-26T13:40:01Z open   10.0.0.2 -> 62201/udp [web] by SPA key 7, granted until 2026-11-26T15:40:01Z",
			`{"time":"2026-11-26T13:40:01.123456789Z","type":"open","src":"10.0.0.2","port":62201,"proto":"udp","stage":0,"key_id":7,"expires":"2026-11-26T15:40:01Z","service":"web"}`,
		},
		{
			maps.Event{Time: at, Type: "expire", Src: src, Port: policy.Port{Num: 22, Proto: policy.TCP}, Expires: at.Add(-time.Second)},
			"2026-11-26T13:40:01Z expire 10.0.0.2 -> 22/tcp grant expired at 2026-11-26T13:40:00Z",
			`{"time":"2026-11-26T13:40:01.123456789Z","type":"expire","src":"10.0.0.2","port":22,"proto":"tcp","stage":0,"expires":"2026-11-26T13:40:00Z","service":""}`,
		},
	} {
		if got := formatEvent(tc.ev, 2); got != tc.plain {
			t.Errorf("plain:\n got %s\nwant %s", got, tc.plain)
		}
		text, err := json.Marshal(encodeEvent(tc.ev))
		if err != nil {
			t.Fatal(err)
		}
		if string(text) != tc.json {
			t.Errorf("json:\n got %s\nwant %s", text, tc.json)
		}
	}
}

func TestPickGates(t *testing.T) {
	list := func(names ...string) func() ([]string, error) {
		return func() ([]string, error) { return names, nil }
	}
	if got, err := pickGates([]string{"eth1"}, list("eth0"), false); err != nil || !reflect.DeepEqual(got, []string{"eth1"}) {
		t.Errorf("named: %v, %v", got, err)
	}
	if got, err := pickGates(nil, list("eth0"), false); err != nil || !reflect.DeepEqual(got, []string{"eth0"}) {
		t.Errorf("the only one: %v, %v", got, err)
	}
	if _, err := pickGates(nil, list(), true); err == nil || err.Error() != "no gate attached" {
		t.Errorf("none: %v", err)
	}
	if got, err := pickGates(nil, list("eth0", "eth1"), true); err != nil || len(got) != 2 {
		t.Errorf("several, many allowed: %v, %v", got, err)
	}
	if _, err := pickGates(nil, list("eth0", "eth1"), false); err == nil || !strings.Contains(err.Error(), "eth0, eth1") {
		t.Errorf("several, one wanted: %v", err)
	}
	broken := errors.New("readdir failed")
	if _, err := pickGates(nil, func() ([]string, error) { return nil, broken }, true); !errors.Is(err, broken) {
		t.Errorf("list error: %v", err)
	}
}
