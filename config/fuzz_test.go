package config

import (
	"strconv"
	"strings"
	"testing"
)

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

// The config file: no panic; every rejection names the file (and, where it
// can, the line and key); what is accepted checks out.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("interfaces = [\"eth0\"]\nprotect = \"22\"\n"))
	f.Add([]byte("interfaces = [\"eth0\", \"wg0\"]\nsequence = \"none\"\nspa_port = 62201\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\nprotect = \"all\"\nflows = false\nmax_sources = 1\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\nopen = 5\n[fleet]\npeers = []\n"))
	f.Add([]byte("gate = \"a b\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if strings.Contains(string(data), "spa_keys") {
			return // would read files of the machine's
		}
		const path = "/etc/knockgate/fuzz.toml"
		s, err := Parse(path, data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), path) {
				t.Errorf("Parse: %q does not name the file", err)
			}
			return
		}
		if err := s.Check(); err != nil {
			t.Errorf("Parse accepted settings that do not check: %v", err)
		}
	})
}
