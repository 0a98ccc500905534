package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// The example, less its key file: the top level is default, each
// [services.NAME] a service in the file's order, with the service defaults
// (step timeout 1m, open 30m, sequence none) where it gives nothing.
func TestParseServices(t *testing.T) {
	keys := rootKeyFile(t, spa.Key{ID: 1, Name: "laptop", Services: []string{"default", "rdp"}}, spa.Key{ID: 7, Name: "contractor", Services: []string{"web"}})
	file := `interfaces = ["eth0"]
sequence = "9000,8000"
protect = "22"
open = "30m"
spa_keys = "` + keys + `"

[services.web]
protect = "443,8443"
sequence = "7000,7100/udp,7200"
step_timeout = "30s"
open = "2h"
allow = ["198.51.100.0/24"]

[services.rdp]
protect = "3389"
`
	s, err := Parse("t.toml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := []policy.Service{
		{Name: "default", Sequence: []policy.Port{tcp(9000), tcp(8000)}, StepTimeout: time.Minute, Open: 30 * time.Minute, Protect: []policy.Port{tcp(22)}},
		{Name: "web", Sequence: []policy.Port{tcp(7000), udp(7100), tcp(7200)}, StepTimeout: 30 * time.Second, Open: 2 * time.Hour,
			Protect: []policy.Port{tcp(443), tcp(8443)}, Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		{Name: "rdp", StepTimeout: time.Minute, Open: 30 * time.Minute, Protect: []policy.Port{tcp(3389)}},
	}
	if !reflect.DeepEqual(s.Policy.Services, want) {
		t.Errorf("services\n %+v\nwant\n %+v", s.Policy.Services, want)
	}
	if s.Policy.Allow != nil {
		t.Errorf("a service's allow went to the gate's: %v", s.Policy.Allow)
	}
	p := s.Config()
	if got, want := Summary(&p), "sequence 9000,8000, step timeout 1m0s, open 30m0s, protecting 22, SPA on 62201/udp (window ±30s)"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	if got, want := ServiceSummaries(&p), []string{
		"service web: sequence 7000,7100/udp,7200, step timeout 30s, open 2h0m0s, protecting 443,8443, allowing 198.51.100.0/24",
		"service rdp: sequence none, step timeout 1m0s, open 30m0s, protecting 3389"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceSummaries = %q, want %q", got, want)
	}
	if got, want := ServiceLines(&p, p.Service("rdp")), []Line{{"sequence", "none (SPA only)"}, {"step timeout", "1m0s"},
		{"open", "30m0s"}, {"protecting", "3389"}, {"allowing", "none"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceLines = %q, want %q", got, want)
	}
	if len(s.SPAKeys) != 2 || !reflect.DeepEqual(s.SPAKeys[1].Services, []string{"web"}) {
		t.Errorf("keys %+v", s.SPAKeys)
	}
	// Dotted keys and an empty table's header make services too.
	s, err = Parse("t.toml", []byte("interfaces = [\"eth0\"]\nservices.web.protect = \"443\"\nservices.web.sequence = \"7000\"\n"))
	if err != nil || len(s.Policy.Services) != 2 || s.Policy.Services[1].Name != "web" {
		t.Errorf("dotted keys: %+v, %v", s, err)
	}
}

// What is wrong with a service is refused naming the service and its line.
func TestServiceFileErrors(t *testing.T) {
	const head = "interfaces = [\"eth0\"]\nspa_port = 62201\n"
	for _, tc := range []struct{ file, want string }{
		{head + "[services.web]\nsequence = \"7000\"\n", "t.toml:3: services.web: protect missing: a service needs it"},
		{head + "[services.web]\nprotect = \"443\"\nsequence = \"7000\"\nopen = \"soon\"\n", `t.toml:6: services.web.open: bad duration "soon"`},
		{head + "[services.web]\nprotect = \"443\"\nspa_keys = \"/x\"\n", "t.toml:5: services.web.spa_keys: spa_keys is the gate's, not a service's: give it at the top level"},
		{head + "[services.web]\nprotect = \"443\"\nprotec = \"1\"\n", "t.toml:5: services.web.protec: unknown key (a service's keys: sequence, step_timeout, open, protect, allow, on_open, on_close, fleet_hooks)"},
		{head + "[services.web]\nprotect = \"443\"\n[services.web.open]\nx = 1\n", "t.toml:5: services.web.open: open is a setting, not a table"},
		{head + "[services.default]\nprotect = \"443\"\n", "t.toml:3: services.default: the service default is the top level"},
		{head + "[services.Web]\nprotect = \"443\"\n", `t.toml:3: services.Web: service name "Web": use a-z, 0-9`},
		{head + "services = 1\n", "t.toml:3: services: want a table [services.NAME] for each service"},
		{head + "services.web = \"x\"\n", "t.toml:3: services.web: want a table [services.web] of the service's keys"},
		// The rules between services name both, at the later one's line.
		{head + "[services.web]\nprotect = \"22\"\nsequence = \"7000\"\n", "t.toml:5: services.web.sequence: port 22 is protected by both services default and web"},
		{head + "[services.web]\nsequence = \"9000\"\nprotect = \"443\"\n", "t.toml:5: services.web.protect: port 9000 is a knock step of both services default and web"},
		{head + "[services.web]\nprotect = \"443\"\nsequence = \"7000\"\n[services.rdp]\nprotect = \"7000\"\nsequence = \"7100\"\n",
			"t.toml:8: services.rdp.sequence: port 7000 is a knock step of service web and protected by service rdp"},
		{head + "protect = \"all\"\n[services.web]\nprotect = \"all\"\nsequence = \"7000\"\n", "t.toml:6: services.web.sequence: services default and web both protect all ports"},
		{"interfaces = [\"eth0\"]\n[services.rdp]\nprotect = \"3389\"\n", "t.toml:3: services.rdp.protect: service rdp: sequence is none and there is no SPA port: nothing could ever open it"},
		// Without a key that may open it, a service without a sequence
		// could never open.
		{head + "[services.rdp]\n\nprotect = \"3389\"\n", "t.toml:5: services.rdp.protect: service rdp: sequence is none and no SPA key names it (services=rdp): nothing could ever open it"},
		// FNV-1a makes the same 32 bits of these two names.
		{head + "[services.s31597]\nprotect = \"1\"\nsequence = \"2\"\n[services.s618190]\nprotect = \"3\"\nsequence = \"4\"\n",
			"t.toml:6: services.s618190: services s31597 and s618190 have the same name hash"},
	} {
		_, err := Parse("t.toml", []byte(tc.file))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q:\n %v\nwant\n %s...", tc.file, err, tc.want)
		}
	}
	// 32 services fit, 33 do not (an SPA key's scope is a 32-bit mask).
	var b strings.Builder
	b.WriteString(head)
	for i := 1; i < policy.MaxServices; i++ {
		b.WriteString("[services.s" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "]\n")
		b.WriteString("protect = \"" + strconv.Itoa(1000+i) + "\"\nsequence = \"" + strconv.Itoa(2000+i) + "\"\n")
	}
	if _, err := Parse("t.toml", []byte(b.String())); err != nil {
		t.Fatalf("%d services: %v", policy.MaxServices, err)
	}
	b.WriteString("[services.last]\nprotect = \"999\"\nsequence = \"998\"\n")
	if _, err := Parse("t.toml", []byte(b.String())); err == nil || !strings.Contains(err.Error(), "services.last") ||
		!strings.Contains(err.Error(), "33 services: a gate holds at most 32 (an SPA key's scope is a 32-bit mask)") {
		t.Errorf("33 services: %v", err)
	}
}

// rootKeyFile writes keys to a key file as the gate takes them: root's,
// mode 600 (so the test needs root).
func rootKeyFile(t *testing.T, keys ...spa.Key) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (the gate's key files are root's)")
		}
		t.Skip("needs root (the gate's key files are root's)")
	}
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k.Line() + "\n")
	}
	path := filepath.Join(t.TempDir(), "spa.keys")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Keys must name services the policy has; a service without a sequence
// needs a key that may open it.
func TestCheck(t *testing.T) {
	d := Defaults()
	p := d.Config()
	p.SPAPort = 62201
	p.Services = append(p.Services, policy.Service{Name: "web", Protect: []policy.Port{tcp(443)}, Open: time.Hour, StepTimeout: time.Minute})
	laptop := spa.Key{ID: 1, Name: "laptop"}
	contractor := spa.Key{ID: 7, Name: "contractor", Services: []string{"web"}}
	stranger := spa.Key{ID: 9, Name: "stranger", Services: []string{"web", "rdp"}}
	if err := Check(&p, []spa.Key{laptop}); err == nil || err.Error() != "service web: sequence is none and no SPA key names it (services=web): nothing could ever open it" {
		t.Errorf("no key for web: %v", err)
	}
	if err := Check(&p, []spa.Key{laptop, contractor}); err != nil {
		t.Errorf("a key for web: %v", err)
	}
	var se *ScopeError
	if err := Check(&p, []spa.Key{stranger}); !errors.As(err, &se) || se.Service != "rdp" || se.Key.ID != 9 ||
		err.Error() != "SPA key stranger (id 9) names service rdp, which the gate does not have (it has default, web)" {
		t.Errorf("a key naming a service the gate lacks: %v", err)
	}
	// The policy's own rules come first, as they are.
	p.Services = append(p.Services, p.Services[1])
	if err := Check(&p, []spa.Key{stranger}); errors.As(err, &se) || err == nil || err.Error() != "service web is defined twice" {
		t.Errorf("a policy the program cannot run: %v", err)
	}
}

// A key file naming a service the config file lacks is refused at the
// spa_keys line, naming key and service. (The gate's key files are root's.)
func TestParseKeysNameServices(t *testing.T) {
	keys := rootKeyFile(t, spa.Key{ID: 7, Name: "contractor", Services: []string{"web", "rdp"}})
	file := "interfaces = [\"eth0\"]\nspa_keys = \"" + keys + "\"\n[services.web]\nprotect = \"443\"\n"
	if _, err := Parse("t.toml", []byte(file)); err == nil ||
		err.Error() != "t.toml:2: spa_keys: SPA key contractor (id 7) names service rdp, which the gate does not have (it has default, web)" {
		t.Errorf("a key naming a service the file lacks: %v", err)
	}
	file += "[services.rdp]\nprotect = \"3389\"\n"
	s, err := Parse("t.toml", []byte(file))
	if err != nil || len(s.SPAKeys) != 1 || !reflect.DeepEqual(s.SPAKeys[0].Services, []string{"web", "rdp"}) {
		t.Errorf("the key's services in the file: %+v, %v", s, err)
	}
}

// --service points the service options at a service: set makes it when the
// gate has none (protect needed), changes only what is given when it has,
// and --allow is the service's own list then.
func TestServiceFlags(t *testing.T) {
	d := Defaults()
	have := d.Config()
	have.SPAPort = 62201

	var upd Settings
	fs, f := flagSet(t, Set, "--service", "web", "--protect", "443,8443", "--open", "2h", "--allow", "198.51.100.0/24")
	if err := f.Apply(&upd); err != nil {
		t.Fatal(err)
	}
	if f.Service() != "web" || fs.Lookup("remove") == nil {
		t.Fatalf("service %q", f.Service())
	}
	if err := Merge(&have, &upd, f.Changed(), f.Service()); err != nil {
		t.Fatal(err)
	}
	web := have.Service("web")
	want := policy.Service{Name: "web", StepTimeout: time.Minute, Open: 2 * time.Hour, Protect: []policy.Port{tcp(443), tcp(8443)},
		Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
	if web == nil || !reflect.DeepEqual(*web, want) || have.Allow != nil || have.Default().Open != 30*time.Minute {
		t.Fatalf("after set --service web: %+v", have)
	}

	// Only what is given changes.
	upd = Settings{}
	_, f = flagSet(t, Set, "--service", "web", "--sequence", "7000,7100/udp")
	if err := f.Apply(&upd); err != nil {
		t.Fatal(err)
	}
	if err := Merge(&have, &upd, f.Changed(), f.Service()); err != nil {
		t.Fatal(err)
	}
	want.Sequence = []policy.Port{tcp(7000), udp(7100)}
	if !reflect.DeepEqual(*have.Service("web"), want) {
		t.Errorf("after set --service web --sequence: %+v", *have.Service("web"))
	}

	// A new service without protect is refused, naming it.
	upd = Settings{}
	_, f = flagSet(t, Set, "--service", "rdp", "--open", "1h")
	if err := f.Apply(&upd); err != nil {
		t.Fatal(err)
	}
	before := have.Clone()
	if err := Merge(&have, &upd, f.Changed(), f.Service()); err == nil || err.Error() != "service rdp is new: give --protect" {
		t.Errorf("a new service without --protect: %v", err)
	}
	if !reflect.DeepEqual(have, before) {
		t.Errorf("a refused merge changed the policy")
	}

	// Bad names, and --remove without --service.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--service", "Web", "--open", "1h"}, `--service: service name "Web": use a-z`},
		{[]string{"--remove"}, "--remove removes the service --service names: give --service"},
	} {
		_, f := flagSet(t, Set, tc.args...)
		if err := f.Apply(&Settings{}); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("set %q: %v, want %s", tc.args, err, tc.want)
		}
	}

	if err := RemoveService(&have, "default"); err == nil || !strings.Contains(err.Error(), "the service default cannot be removed") {
		t.Errorf("remove default: %v", err)
	}
	if err := RemoveService(&have, "rdp"); err == nil || err.Error() != "no service rdp to remove (the gate has default, web)" {
		t.Errorf("remove a service the gate lacks: %v", err)
	}
	if err := RemoveService(&have, "web"); err != nil || have.Service("web") != nil || len(have.Services) != 1 {
		t.Errorf("remove web: %v, %+v", err, have.Services)
	}

	// attach compares a service's options with the gate's service.
	held := Held{Policy: d.Config()}
	s := Defaults()
	_, f = flagSet(t, Attach, "--service", "web", "--protect", "443", "--open", "2h")
	if err := f.Apply(&s); err != nil {
		t.Fatal(err)
	}
	if got := Compare(&s, &held, f.Changed(), "web"); !reflect.DeepEqual(got, []string{"no service web"}) {
		t.Errorf("Compare with a service the gate lacks: %q", got)
	}
	held.Policy.Services = append(held.Policy.Services, policy.Service{Name: "web", Protect: []policy.Port{tcp(443)}, Open: time.Hour})
	if got := Compare(&s, &held, f.Changed(), "web"); !reflect.DeepEqual(got, []string{"--service web --open 1h0m0s"}) {
		t.Errorf("Compare with the gate's service: %q", got)
	}
}
