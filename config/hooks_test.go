package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// on_open and on_close at the top level are default's, in a [services.NAME]
// table that service's; argv arrays are kept as given (commas and spaces
// inside an element too), and fleet_hooks is per service.
func TestParseHooks(t *testing.T) {
	file := `interfaces = ["eth0"]
on_open = ["/usr/bin/logger", "-t", "knockgate", "opened {source} for {service}, until {expires}"]
on_close = ["/usr/local/bin/close", "{source}", "a,b c"]
hook_user = "nobody"
hook_timeout = "5s"
hook_max_running = 2
hook_max_waiting = 0

[services.web]
protect = "443"
sequence = "7000,7100"
on_open = ["/usr/local/bin/web-open", "--from={source}", "{{literal}}"]
fleet_hooks = true

[services.wake]
protect = "none"
sequence = "7300"
on_open = ["/usr/sbin/etherwake", "00:11:22:33:44:55"]
`
	s, err := Parse("t.toml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*Hooks{
		"default": {OnOpen: []string{"/usr/bin/logger", "-t", "knockgate", "opened {source} for {service}, until {expires}"},
			OnClose: []string{"/usr/local/bin/close", "{source}", "a,b c"}},
		"web":  {OnOpen: []string{"/usr/local/bin/web-open", "--from={source}", "{{literal}}"}, Fleet: true},
		"wake": {OnOpen: []string{"/usr/sbin/etherwake", "00:11:22:33:44:55"}},
	}
	if !reflect.DeepEqual(s.Hooks, want) {
		t.Errorf("hooks %+v, want %+v", s.Hooks, want)
	}
	if s.HookUser != "nobody" || s.HookTimeout != 5*time.Second || s.HookMaxRunning != 2 || s.HookMaxWaiting != 0 {
		t.Errorf("hook settings: user %q timeout %s running %d waiting %d", s.HookUser, s.HookTimeout, s.HookMaxRunning, s.HookMaxWaiting)
	}
	if !s.AnyHooks() || s.HooksOf("web") == nil || s.HooksOf("nope") != nil {
		t.Errorf("AnyHooks %v, HooksOf(web) %v, HooksOf(nope) %v", s.AnyHooks(), s.HooksOf("web"), s.HooksOf("nope"))
	}
	// protect none: a service whose grants only run its hooks.
	p := s.Config()
	if w := p.Service("wake"); w == nil || len(w.Protect) != 0 || w.ProtectAll {
		t.Errorf("service wake: %+v, want no protected port", w)
	}
	if got := ServiceSummaries(&p); !strings.Contains(strings.Join(got, "\n"), "service wake: sequence 7300, step timeout 1m0s, open 30m0s, protecting none") {
		t.Errorf("summaries %q", got)
	}
	// Hooks are the service's, not the gate's policy: the policy is as
	// without them.
	plain, err := Parse("t.toml", []byte(strings.NewReplacer(
		`on_open = ["/usr/bin/logger", "-t", "knockgate", "opened {source} for {service}, until {expires}"]`, "",
		`on_close = ["/usr/local/bin/close", "{source}", "a,b c"]`, "",
		`on_open = ["/usr/local/bin/web-open", "--from={source}", "{{literal}}"]`, "",
		`on_open = ["/usr/sbin/etherwake", "00:11:22:33:44:55"]`, "",
		"fleet_hooks = true", "").Replace(file)))
	if err != nil {
		t.Fatal(err)
	}
	if pp := plain.Config(); !reflect.DeepEqual(pp, p) || plain.AnyHooks() {
		t.Errorf("hooks changed the policy:\n%+v\n%+v", pp, p)
	}
}

func TestHookErrors(t *testing.T) {
	const head = "interfaces = [\"eth0\"]\n"
	for _, tc := range []struct{ file, want string }{
		{head + "on_open = \"/bin/true {source}\"\n", `t.toml:2: on_open: want an array of strings (the command, then its arguments; no shell)`},
		{head + "on_open = [\"/bin/echo\", 1]\n", `t.toml:2: on_open: element 2 is an integer, not a string`},
		{head + "on_open = [\"/bin/echo\", \"{src}\"]\n", `t.toml:2: on_open: "{src}": unknown placeholder {src} (known: {event}, {gate}, {service}, {source}`},
		{head + "on_open = [\"/bin/echo\", \"{source\"]\n", `t.toml:2: on_open: "{source": a { with no } (write {{ for a brace)`},
		{head + "on_close = [\"/bin/echo\", \"a}\"]\n", `t.toml:2: on_close: "a}": a } with no { (write }} for a brace)`},
		{head + "on_open = [\"\", \"x\"]\n", `t.toml:2: on_open: the command (the first element) is empty`},
		{head + "on_open = [\"/usr/bin/{service}\"]\n", `t.toml:2: on_open: the command "/usr/bin/{service}" holds a brace: placeholders go in its arguments`},
		{head + "hook_user = \"a:b\"\n", `t.toml:2: hook_user: bad user name "a:b"`},
		{head + "hook_timeout = \"0s\"\n", `t.toml:2: hook_timeout: duration "0s" must be positive`},
		{head + "hook_max_running = 0\n", `t.toml:2: hook_max_running: 0 out of range (1-256)`},
		{head + "fleet_hooks = \"yes\"\n", `t.toml:2: fleet_hooks: want true or false, not`},
		{head + "[services.web]\nprotect = \"443\"\nhook_user = \"root\"\n", `t.toml:4: services.web.hook_user: hook_user is the gate's, not a service's: give it at the top level`},
		{head + "[services.web]\nprotect = \"443\"\non_open = [\"/bin/echo\", \"{sorce}\"]\n", `t.toml:4: services.web.on_open: "{sorce}": unknown placeholder {sorce}`},
	} {
		_, err := Parse("t.toml", []byte(tc.file))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q...", tc.file, err, tc.want)
		}
	}
}

func TestExpand(t *testing.T) {
	vals := map[string]string{"source": "192.0.2.7", "service": "web"}
	get := func(n string) string { return vals[n] }
	for in, want := range map[string]string{
		"{source}":                 "192.0.2.7",
		"--from={source}/32":       "--from=192.0.2.7/32",
		"{service}:{source}":       "web:192.0.2.7",
		"{{source}}":               "{source}",
		"plain":                    "plain",
		"{key_name}":               "",
		"json: {{\"a\": 1}}":       `json: {"a": 1}`,
		"{{{source}}}":             "{192.0.2.7}",
		"%IP% stays as it is {{}}": "%IP% stays as it is {}",
	} {
		if got, err := Expand(in, get); err != nil || got != want {
			t.Errorf("Expand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, name := range HookVars {
		if got, err := Expand("{"+name+"}", func(n string) string { return "<" + n + ">" }); err != nil || got != "<"+name+">" {
			t.Errorf("{%s}: %q, %v", name, got, err)
		}
	}
	if HookEnv("key_id") != "KNOCKGATE_KEY_ID" {
		t.Errorf("HookEnv(key_id) = %s", HookEnv("key_id"))
	}
}

// A reload takes hooks as they are: none of their settings needs a restart
// or is kept by the gate.
func TestHooksReloadLive(t *testing.T) {
	a, err := Parse("t.toml", []byte("interfaces = [\"eth0\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("t.toml", []byte("interfaces = [\"eth0\"]\non_open = [\"/bin/true\"]\nhook_user = \"root\"\nhook_timeout = \"1m\"\nhook_max_running = 9\nhook_max_waiting = 9\n"))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := ReloadCheck(a, b); err != nil || len(kept) != 0 {
		t.Errorf("ReloadCheck: kept %v, %v; want a live change", kept, err)
	}
}

// protect = "none" as a flag too, and in status's lines.
func TestProtectNone(t *testing.T) {
	s, err := flags(t, Attach, "--protect", "none")
	if err != nil || len(def(s).Protect) != 0 || def(s).ProtectAll {
		t.Fatalf("--protect none: %+v, %v", def(s), err)
	}
	p := s.Config()
	if got := Summary(&p); !strings.Contains(got, "protecting none") {
		t.Errorf("Summary %q", got)
	}
	for _, l := range Lines(&p) {
		if l.Label == "protecting" && l.Value != "none" {
			t.Errorf("status line %+v", l)
		}
	}
}
