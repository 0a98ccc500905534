package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// value is one option's parser: flag text through Set, file values
// (strings, integers, arrays) through setTOML; String is the value as Set
// takes it.
type value interface {
	Set(string) error
	String() string
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

func setText(v value, x any) error {
	s, err := text(x)
	if err != nil {
		return err
	}
	return v.Set(s)
}

// sequenceValue is a port list, or "none" (SPA only).
type sequenceValue struct{ p *[]policy.Port }

func (v *sequenceValue) Type() string   { return "ports" }
func (v *sequenceValue) String() string { return policy.FormatSequence(*v.p) }
func (v *sequenceValue) Set(s string) (err error) {
	*v.p, err = policy.ParseSequence(s)
	return err
}
func (v *sequenceValue) setTOML(x any) error { return setText(v, x) }

// protectValue is a port list, or "all".
type protectValue struct {
	p   *[]policy.Port
	all *bool
}

func (v *protectValue) Type() string   { return "ports" }
func (v *protectValue) String() string { return formatProtect(*v.p, *v.all) }
func (v *protectValue) Set(s string) (err error) {
	if strings.EqualFold(strings.TrimSpace(s), "none") {
		// No port: the service's grants only run its hooks (knockd's
		// sections that wake a host or post a message).
		*v.p, *v.all = nil, false
		return nil
	}
	*v.p, *v.all, err = policy.ParseProtect(s)
	return err
}

// formatProtect is policy.FormatProtect, with "none" for no port.
func formatProtect(ports []policy.Port, all bool) string {
	if !all && len(ports) == 0 {
		return "none"
	}
	return policy.FormatProtect(ports, all)
}
func (v *protectValue) setTOML(x any) error { return setText(v, x) }

// spaPortValue is a UDP port number, or 0 (none).
type spaPortValue struct{ p *uint16 }

func (v *spaPortValue) Type() string   { return "port" }
func (v *spaPortValue) String() string { return strconv.Itoa(int(*v.p)) }
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

func (v *keyFileValue) Type() string   { return "file" }
func (v *keyFileValue) String() string { return *v.path }
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

type boolValue struct{ b *bool }

func (v *boolValue) Type() string   { return "bool" }
func (v *boolValue) String() string { return strconv.FormatBool(*v.b) }
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

func (v *durationValue) Type() string   { return "duration" }
func (v *durationValue) String() string { return v.d.String() }
func (v *durationValue) Set(s string) (err error) {
	*v.d, err = policy.ParseDuration(s)
	return err
}
func (v *durationValue) setTOML(x any) error { return setText(v, x) }

// prefixesValue is a list of CIDRs; a bare address is a single host (/32
// or /128). As a flag it may be repeated, each value itself a list.
type prefixesValue struct{ p *[]netip.Prefix }

func (v *prefixesValue) Type() string   { return "cidrs" }
func (v *prefixesValue) String() string { return policy.FormatCIDRs(*v.p) }
func (v *prefixesValue) Set(s string) error {
	p, err := policy.ParseCIDRs(s)
	if err != nil {
		return err
	}
	*v.p = append(*v.p, p...)
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

func (v *countValue) Type() string   { return "N" }
func (v *countValue) String() string { return strconv.FormatUint(uint64(*v.n), 10) }
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

func (v *modeValue) Type() string   { return "mode" }
func (v *modeValue) String() string { return string(*v.m) }
func (v *modeValue) Set(s string) (err error) {
	*v.m, err = loader.ParseMode(s)
	return err
}
func (v *modeValue) setTOML(x any) error { return setText(v, x) }

type nameValue struct{ s *string }

func (v *nameValue) Type() string   { return "name" }
func (v *nameValue) String() string { return *v.s }
func (v *nameValue) Set(s string) error {
	if err := loader.ValidateName(s); err != nil {
		return err
	}
	*v.s = s
	return nil
}
func (v *nameValue) setTOML(x any) error { return setText(v, x) }

type ifacesValue struct{ s *[]string }

func (v *ifacesValue) Type() string   { return "interfaces" }
func (v *ifacesValue) String() string { return strings.Join(*v.s, ",") }
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

func (v *addrValue) Type() string   { return "host:port" }
func (v *addrValue) String() string { return *v.s }
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

func (v *choiceValue) Type() string   { return strings.Join(v.choices, "|") }
func (v *choiceValue) String() string { return *v.s }
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
