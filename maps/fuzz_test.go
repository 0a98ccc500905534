package maps

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
