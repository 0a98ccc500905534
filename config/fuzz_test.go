package config

import (
	"strings"
	"testing"
)

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
