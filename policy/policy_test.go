package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePorts(t *testing.T) {
	good := map[string][]Port{
		"9000,8000":          {{9000, TCP}, {8000, TCP}},
		"7000/udp, 8000/TCP": {{7000, UDP}, {8000, TCP}},
		"9000:udp":           {{9000, UDP}},
		"1,65535":            {{1, TCP}, {65535, TCP}},
	}
	for in, want := range good {
		got, err := ParsePorts(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, _ := ParsePorts(FormatPorts(got)); !reflect.DeepEqual(back, want) {
			t.Errorf("FormatPorts(%v) = %q does not parse back", got, FormatPorts(got))
		}
	}
	bad := map[string]string{
		"":         "empty port list",
		"70000":    "port 70000 out of range",
		"0":        "port 0 out of range",
		"22/sctp":  `unknown protocol "sctp"`,
		"ssh":      `port "ssh" is not a number`,
		"9000,,80": `empty item 2 in port list "9000,,80"`,
		"-1":       `port "-1" is not a number`,
	}
	for in, want := range bad {
		_, err := ParsePorts(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePorts(%q) error = %v, want one containing %q", in, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	base := func() Policy {
		return Policy{Services: []Service{{Name: DefaultService, Sequence: []Port{{9000, TCP}, {8000, TCP}},
			StepTimeout: time.Minute, Open: time.Minute, Protect: []Port{{22, TCP}}}}}
	}
	cases := map[string]func(*Policy){
		"nothing could ever open the gate": func(p *Policy) { p.Services[0].Sequence = nil },
		"both a knock step and the SPA port": func(p *Policy) {
			p.SPAPort, p.SPAWindow, p.Services[0].Sequence = 9000, time.Second, []Port{{Num: 9000, Proto: UDP}}
		},
		"both protected and the SPA port": func(p *Policy) {
			p.SPAPort, p.SPAWindow, p.Services[0].Protect = 53, time.Second, []Port{{Num: 53, Proto: UDP}}
		},
		"SPA window 2h0m0s must be whole milliseconds, from 1ms to 1h": func(p *Policy) { p.SPAPort, p.SPAWindow = 62201, 2*time.Hour },
		"SPA window 500µs must be whole milliseconds":                  func(p *Policy) { p.SPAPort, p.SPAWindow = 62201, 500*time.Microsecond },
		"SPA window 1.5ms must be whole milliseconds":                  func(p *Policy) { p.SPAPort, p.SPAWindow = 62201, 1500*time.Microsecond },
		"at most 8 allowed":                func(p *Policy) { p.Services[0].Sequence = make([]Port, 9) },
		"step 2 (9000) repeats step 1":     func(p *Policy) { p.Services[0].Sequence = []Port{{9000, TCP}, {9000, TCP}} },
		"step 3 (9000) repeats step 1":     func(p *Policy) { p.Services[0].Sequence = []Port{{9000, TCP}, {8000, TCP}, {9000, TCP}} },
		"both a knock step and protected":  func(p *Policy) { p.Services[0].Protect = []Port{{8000, TCP}} },
		"step timeout 0s must be positive": func(p *Policy) { p.Services[0].StepTimeout = 0 },
		"open window -1s must be positive": func(p *Policy) { p.Services[0].Open = -time.Second },
	}
	for want, mutate := range cases {
		p := base()
		mutate(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, want)
		}
	}
	p := base()
	p.Services[0].Sequence = []Port{{9000, TCP}, {9000, UDP}, {8000, TCP}} // same number, other protocol: fine
	if err := p.Validate(); err != nil {
		t.Errorf("Validate(%v) = %v", p.Services[0].Sequence, err)
	}
}

func TestSequenceAndProtectForms(t *testing.T) {
	if seq, err := ParseSequence(" None "); err != nil || seq != nil {
		t.Errorf("ParseSequence(none) = %v, %v; want nil", seq, err)
	}
	if got := FormatSequence(nil); got != "none" {
		t.Errorf("FormatSequence(nil) = %q", got)
	}
	if ports, all, err := ParseProtect("ALL"); err != nil || !all || ports != nil {
		t.Errorf("ParseProtect(ALL) = %v, %v, %v", ports, all, err)
	}
	if ports, all, err := ParseProtect("22,53/udp"); err != nil || all || !reflect.DeepEqual(ports, []Port{{22, TCP}, {53, UDP}}) {
		t.Errorf("ParseProtect(22,53/udp) = %v, %v, %v", ports, all, err)
	}
	if got := FormatProtect([]Port{{22, TCP}}, true); got != "all" {
		t.Errorf("FormatProtect(all) = %q", got)
	}
	// The order a gate reads protected ports back in: TCP first, ascending, once.
	got := SortPorts([]Port{{53, UDP}, {443, TCP}, {22, TCP}, {443, TCP}, {5, UDP}})
	if want := []Port{{22, TCP}, {443, TCP}, {5, UDP}, {53, UDP}}; !reflect.DeepEqual(got, want) {
		t.Errorf("SortPorts = %v, want %v", got, want)
	}
	if got := FormatCIDRs(SortCIDRs([]netip.Prefix{netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32")})); got != "10.0.0.0/8,192.0.2.1/32,2001:db8::/32" {
		t.Errorf("SortCIDRs: %s", got)
	}
}

// svc is a valid service called name, knocking on steps and protecting
// protect (both TCP).
func svc(name string, steps, protect []uint16) Service {
	s := Service{Name: name, StepTimeout: time.Minute, Open: time.Hour}
	for _, n := range steps {
		s.Sequence = append(s.Sequence, Port{n, TCP})
	}
	for _, n := range protect {
		s.Protect = append(s.Protect, Port{n, TCP})
	}
	return s
}

// The rules between services, each refusal naming both.
func TestServices(t *testing.T) {
	two := Policy{Services: []Service{svc(DefaultService, []uint16{9000, 8000}, []uint16{22}), svc("web", []uint16{7000}, []uint16{443})}}
	if err := two.Validate(); err != nil {
		t.Errorf("Validate(default, web) = %v", err)
	}
	many := Policy{Services: []Service{svc(DefaultService, []uint16{9000}, []uint16{22})}}
	for i := range MaxServices {
		many.Services = append(many.Services, svc(fmt.Sprintf("s%d", i), []uint16{uint16(10000 + i)}, []uint16{uint16(20000 + i)}))
	}
	if err := many.Validate(); err == nil || !strings.Contains(err.Error(), "at most 32") {
		t.Errorf("Validate(%d services) = %v", len(many.Services), err)
	}
	many.Services = many.Services[:MaxServices]
	if err := many.Validate(); err != nil {
		t.Errorf("Validate(%d services) = %v", len(many.Services), err)
	}

	const spa = 62201
	for _, tc := range []struct {
		name     string
		services []Service
		spaPort  uint16
		err      string
	}{
		{"no service", nil, 0, "the first service must be default"},
		{"default not first", []Service{svc("web", []uint16{1}, []uint16{2}), svc(DefaultService, []uint16{3}, []uint16{4})}, 0,
			"the first service must be default"},
		{"bad name", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("Web", []uint16{3}, []uint16{4})}, 0,
			`service name "Web": use a-z, 0-9`},
		{"name too long", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc(strings.Repeat("a", 32), []uint16{3}, []uint16{4})}, 0,
			`service name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`},
		{"twice", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("web", []uint16{3}, []uint16{4}), svc("web", []uint16{5}, []uint16{6})}, 0,
			"service web is defined twice"},
		// FNV-1a makes the same 32 bits of these two names.
		{"one name hash", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("s31597", []uint16{3}, []uint16{4}), svc("s618190", []uint16{5}, []uint16{6})}, 0,
			"services s31597 and s618190 have the same name hash (" + fmt.Sprintf("%08x", ServiceHash("s31597")) + "): an SPA request could not tell them apart"},
		{"a service's own rule", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("web", []uint16{3, 3}, []uint16{4})}, 0,
			"service web: sequence step 2 (3) repeats step 1"},
		{"SPA only without SPA", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("rdp", nil, []uint16{3389})}, 0,
			"service rdp: sequence is none and there is no SPA port: nothing could ever open it"},
		{"protected twice", []Service{svc(DefaultService, []uint16{1}, []uint16{22, 443}), svc("web", []uint16{3}, []uint16{8443, 443})}, 0,
			"port 443 is protected by both services default and web"},
		{"all twice", []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("web", []uint16{3}, nil), svc("rdp", []uint16{5}, nil)}, 0,
			"services web and rdp both protect all ports"},
		{"step of two sequences", []Service{svc(DefaultService, []uint16{1, 2}, []uint16{22}), svc("web", []uint16{3, 2}, []uint16{443})}, 0,
			"port 2 is a knock step of both services default and web"},
		{"step protected by another", []Service{svc(DefaultService, []uint16{1, 2}, []uint16{22}), svc("web", []uint16{3}, []uint16{443, 2})}, 0,
			"port 2 is a knock step of service default and protected by service web"},
		{"protected step of another", []Service{svc(DefaultService, []uint16{1}, []uint16{22, 3}), svc("web", []uint16{3}, []uint16{443})}, 0,
			"port 3 is a knock step of service web and protected by service default"},
		{"SPA port a step", []Service{svc(DefaultService, []uint16{1}, []uint16{22}), {Name: "web", Sequence: []Port{{spa, UDP}},
			StepTimeout: time.Minute, Open: time.Hour, Protect: []Port{{443, TCP}}}}, spa,
			"service web: port 62201/udp is both a knock step and the SPA port"},
		{"SPA port protected", []Service{svc(DefaultService, []uint16{1}, []uint16{22}), {Name: "web", Sequence: []Port{{3, TCP}},
			StepTimeout: time.Minute, Open: time.Hour, Protect: []Port{{spa, UDP}}}}, spa,
			"service web: port 62201/udp is both protected and the SPA port"},
	} {
		for i := range tc.services {
			if tc.services[i].Protect == nil {
				tc.services[i].ProtectAll = true
			}
		}
		p := Policy{Services: tc.services, SPAPort: tc.spaPort, SPAWindow: 30 * time.Second}
		if err := p.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}

	// Beside the one that protects all, others protect their own ports and
	// knock on theirs: all takes what no other service claims.
	p := Policy{Services: []Service{svc(DefaultService, []uint16{9000, 8000}, nil), svc("web", []uint16{7000}, []uint16{443}),
		svc("rdp", nil, []uint16{3389})}, SPAPort: spa, SPAWindow: 30 * time.Second}
	p.Services[0].ProtectAll = true
	if err := p.Validate(); err != nil {
		t.Errorf("all beside listed services: %v", err)
	}
}

// The program finds a service by its name's hash (bpf/spa.h): two names of
// one hash are refused, naming both, as a *HashError.
func TestServiceHash(t *testing.T) {
	if ServiceHash("") == 0 || ServiceHash("default") == ServiceHash("web") || ServiceHash("s31597") != ServiceHash("s618190") {
		t.Error("service hashes: 0 for the empty name, two names alike, or FNV-1a not what it is")
	}
	p := Policy{Services: []Service{svc(DefaultService, []uint16{1}, []uint16{2}), svc("s618190", []uint16{3}, []uint16{4}),
		svc("web", []uint16{5}, []uint16{6}), svc("s31597", []uint16{7}, []uint16{8})}}
	var he *HashError
	if err := p.Validate(); !errors.As(err, &he) || *he != (HashError{"s618190", "s31597"}) {
		t.Errorf("Validate: %v, want the hash error of s618190 and s31597", err)
	}
}

func TestDiff(t *testing.T) {
	a := Policy{Services: []Service{svc(DefaultService, []uint16{9000, 8000}, []uint16{22, 443})},
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24")},
		Flows: true, FlowIdleTCP: time.Hour, FlowIdleUDP: time.Minute, SPAWindow: 30 * time.Second}

	// What does the same reads the same: protected ports and allow lists
	// are sets.
	b := a.Clone()
	b.Services[0].Protect = []Port{{443, TCP}, {22, TCP}, {22, TCP}}
	b.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.0.0.0/8")}
	if d := Diff(&a, &b); len(d) != 0 {
		t.Errorf("same policy: %v", d)
	}

	b.Services[0].Sequence = []Port{{8000, TCP}, {9000, TCP}} // a sequence is not a set
	b.Services[0].ProtectAll = true
	b.Flows = false
	b.SPAPort = 62201
	b.Services = append(b.Services, svc("web", []uint16{7000}, []uint16{8443}))
	want := []Change{
		{Service: "default", Setting: "sequence", Old: "9000,8000", New: "8000,9000"},
		{Service: "default", Setting: "protect", Old: "22,443", New: "all"},
		{Service: "web", New: "added"},
		{Setting: "flows", Old: "true", New: "false"},
		{Setting: "spa-port", Old: "0", New: "62201"},
	}
	if got := Diff(&a, &b); !reflect.DeepEqual(got, want) {
		t.Errorf("Diff:\n got %v\nwant %v", got, want)
	}
	if got := Diff(&b, &a)[2]; got != (Change{Service: "web", Old: "removed"}) {
		t.Errorf("Diff back: %v, want web removed", got)
	}
	for c, s := range map[Change]string{
		want[0]:                               "service default: sequence 9000,8000 -> 8000,9000",
		want[2]:                               "service web added",
		want[4]:                               "spa-port 0 -> 62201",
		{Setting: "allow", Old: "10.0.0.0/8"}: "allow 10.0.0.0/8 -> none",
		{Service: "web", Old: "removed"}:      "service web removed",
	} {
		if c.String() != s {
			t.Errorf("%#v reads %q, want %q", c, c.String(), s)
		}
	}
}

// Every setting's Copy makes dst read as src, and shares no memory with it.
func TestSettingsCopy(t *testing.T) {
	src := Policy{Services: []Service{svc(DefaultService, []uint16{9000, 8000}, []uint16{22})},
		Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Flows: true, FlowIdleTCP: time.Hour,
		FlowIdleUDP: time.Minute, SPAPort: 62201, SPAWindow: time.Second}
	src.Services[0].Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	dst := Policy{Services: []Service{{Name: DefaultService}}}
	for _, st := range ServiceSettings {
		st.Copy(&dst.Services[0], &src.Services[0])
	}
	for _, st := range GateSettings {
		st.Copy(&dst, &src)
	}
	if d := Diff(&src, &dst); len(d) != 0 || !reflect.DeepEqual(src, dst) {
		t.Fatalf("copied every setting, still %v", d)
	}
	dst.Services[0].Sequence[0].Num = 1
	dst.Services[0].Protect[0].Num = 1
	dst.Allow[0] = netip.MustParsePrefix("::/0")
	dst.Services[0].Allow[0] = netip.MustParsePrefix("::/0")
	if d := Diff(&src, &dst); len(d) != 4 || src.Services[0].Sequence[0].Num != 9000 {
		t.Errorf("copies share memory: %v", d)
	}
	clone := src.Clone()
	clone.Services[0].Sequence[0].Num = 1
	if src.Services[0].Sequence[0].Num != 9000 {
		t.Error("Clone shares memory")
	}
	if SettingOf(ServiceSettings, "open") == nil || SettingOf(GateSettings, "open") != nil {
		t.Error("SettingOf")
	}
}
