package policy

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// namesInput: the error names a piece of the input, quoted (%q) or as a
// field of it, so a user can tell what was wrong; an input of nothing but
// separators may be called empty instead.
func namesInput(err error, input string) bool {
	msg := err.Error()
	for _, q := range quotedRE.FindAllString(msg, -1) {
		if u, e := strconv.Unquote(q); e == nil && u != "" && strings.Contains(input, u) {
			return true
		}
	}
	fields := strings.FieldsFunc(input, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune(",/:-", r) })
	for _, f := range fields {
		if strings.Contains(msg, f) {
			return true
		}
	}
	return strings.Contains(msg, "empty")
}

var quotedRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// Port lists: no panic; a rejection names what it rejects; what is
// accepted prints back to the same list.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"22", "9000,8000/udp", "22/tcp,53/udp", "60000-61000/udp", "0", "70000", "22:sctp", "1-", ",,", "5-3", "22/udp/tcp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := ParsePorts(s)
		if err != nil {
			if !namesInput(err, s) {
				t.Errorf("ParsePorts(%q): %q names nothing of the input", s, err)
			}
			return
		}
		again, err := ParsePorts(FormatPorts(ports))
		if err != nil || FormatPorts(again) != FormatPorts(ports) {
			t.Errorf("ParsePorts(%q) = %s, which parses back to %s, %v", s, FormatPorts(ports), FormatPorts(again), err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"30s", "1m", "1h30m", "0", "-1s", "soon", "", "1.5ms"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("ParseDuration(%q): %q does not quote the input", s, err)
			}
			return
		}
		if d <= 0 {
			t.Errorf("ParseDuration(%q) = %s: not positive", s, d)
		}
	})
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"192.0.2.0/24", "2001:db8::/32", "10.0.0.1", "fe80::1%eth0", "1.2.3.4/33", "::ffff:1.2.3.4/120", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("ParseCIDR(%q): %q does not quote the input", s, err)
			}
			return
		}
		if !p.IsValid() || p != p.Masked() {
			t.Errorf("ParseCIDR(%q) = %s: not a valid masked prefix", s, p)
		}
	})
}
