package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Hooks are the commands `run` runs on a service's grants: OnOpen when a
// grant of it is made, OnClose when one ends (it expires, or is revoked).
// Each is an argv (no shell), its arguments with placeholders (HookVars).
// Fleet: grants that come from another host of the fleet run them too.
type Hooks struct {
	OnOpen  []string
	OnClose []string
	Fleet   bool
}

// Any says whether the hooks run anything.
func (h *Hooks) Any() bool { return h != nil && (len(h.OnOpen) > 0 || len(h.OnClose) > 0) }

// DefaultHookUser is the user hooks run as unless hook_user names
// another: a system user the package makes, never root by default.
const DefaultHookUser = "knockgate"

// hooksOf is the hooks of the service called name, made when missing.
func (s *Settings) hooksOf(name string) *Hooks {
	if s.Hooks == nil {
		s.Hooks = map[string]*Hooks{}
	}
	h := s.Hooks[name]
	if h == nil {
		h = &Hooks{}
		s.Hooks[name] = h
	}
	return h
}

// HooksOf is the hooks of the service called name; nil when it has none.
func (s *Settings) HooksOf(name string) *Hooks {
	if h := s.Hooks[name]; h.Any() {
		return h
	}
	return nil
}

// AnyHooks says whether some service of s has a hook to run.
func (s *Settings) AnyHooks() bool {
	for _, h := range s.Hooks {
		if h.Any() {
			return true
		}
	}
	return false
}

// HookVars are what a hook is told about a grant, by name: each is the
// environment variable KNOCKGATE_NAME (upper case) and the placeholder
// {name} in its argv.
var HookVars = []string{
	"event",        // open or close
	"gate",         // the gate's name
	"service",      // the service granted
	"source",       // the address granted
	"family",       // ipv4 or ipv6
	"how",          // sequence, spa, operator, fleet or unknown
	"key_id",       // spa: the key's id
	"key_name",     // spa: the key's name
	"operator",     // operator: who ran knockgate grant
	"origin",       // fleet: the host the grant came from
	"expires",      // the grant's expiry, RFC 3339 (UTC)
	"expires_unix", // the same in Unix seconds
	"open_seconds", // seconds from the event to the expiry (open)
	"reason",       // close: expire or revoke
}

// HookEnv is the environment variable of a hook variable: KNOCKGATE_SOURCE
// for source.
func HookEnv(name string) string { return "KNOCKGATE_" + strings.ToUpper(name) }

func isHookVar(name string) bool {
	for _, v := range HookVars {
		if v == name {
			return true
		}
	}
	return false
}

// Expand puts the values of the placeholders ({source}) into arg; "{{" and
// "}}" are literal braces. A placeholder that names no HookVars entry, or a
// brace left open, is an error.
func Expand(arg string, value func(name string) string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(arg); i++ {
		c := arg[i]
		switch {
		case c == '{' && strings.HasPrefix(arg[i:], "{{"):
			b.WriteByte('{')
			i++
		case c == '}' && strings.HasPrefix(arg[i:], "}}"):
			b.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexByte(arg[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("%q: a { with no } (write {{ for a brace)", arg)
			}
			name := arg[i+1 : i+end]
			if !isHookVar(name) {
				return "", fmt.Errorf("%q: unknown placeholder {%s} (known: {%s})", arg, name, strings.Join(HookVars, "}, {"))
			}
			b.WriteString(value(name))
			i += end
		case c == '}':
			return "", fmt.Errorf("%q: a } with no { (write }} for a brace)", arg)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// CheckArgv checks a hook's argv: a command, then its arguments, whose
// placeholders must all be known; the command itself takes none.
func CheckArgv(argv []string) error {
	if len(argv) == 0 {
		return nil
	}
	if strings.TrimSpace(argv[0]) == "" {
		return errors.New("the command (the first element) is empty")
	}
	if strings.ContainsAny(argv[0], "{}") {
		return fmt.Errorf("the command %q holds a brace: placeholders go in its arguments", argv[0])
	}
	for _, a := range argv[1:] {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("argument %q holds a NUL byte", a)
		}
		if _, err := Expand(a, func(string) string { return "" }); err != nil {
			return err
		}
	}
	return nil
}

// argvValue is a hook's command line: in the file an array of strings
// (["/usr/local/bin/notify", "{source}"]), as text the same array in JSON;
// empty: none.
type argvValue struct{ a *[]string }

func (v *argvValue) Type() string { return "argv" }
func (v *argvValue) String() string {
	if len(*v.a) == 0 {
		return ""
	}
	b, _ := json.Marshal(*v.a)
	return string(b)
}
func (v *argvValue) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		*v.a = nil
		return nil
	}
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		return fmt.Errorf("want an array of strings (the command, then its arguments; no shell): %w", err)
	}
	return v.set(argv)
}
func (v *argvValue) set(argv []string) error {
	if err := CheckArgv(argv); err != nil {
		return err
	}
	if len(argv) == 0 {
		argv = nil
	}
	*v.a = argv
	return nil
}
func (v *argvValue) setTOML(x any) error {
	a, ok := x.([]any)
	if !ok {
		return fmt.Errorf(`want an array of strings (the command, then its arguments; no shell), like ["/usr/bin/logger", "knocked", "{source}"], not %s`, tomlKind(x))
	}
	argv := make([]string, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			return fmt.Errorf("element %d is %s, not a string", i+1, tomlKind(e))
		}
		argv[i] = s
	}
	return v.set(argv)
}

// tomlKind names a file value's type for a message.
func tomlKind(x any) string {
	switch x.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	}
	return tomlType(x)
}

// userValue is a user's name (looked up by run, not here: the file may be
// checked on another host).
type userValue struct{ s *string }

func (v *userValue) Type() string   { return "user" }
func (v *userValue) String() string { return *v.s }
func (v *userValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" || strings.ContainsAny(s, ":/ \t\n") {
		return fmt.Errorf("bad user name %q", s)
	}
	*v.s = s
	return nil
}
func (v *userValue) setTOML(x any) error { return setText(v, x) }
