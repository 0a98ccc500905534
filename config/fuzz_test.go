package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// The config file: no panic; every rejection names the file (and, where it
// can, the line and key); what is accepted checks out.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("interfaces = [\"eth0\"]\nprotect = \"22\"\n"))
	f.Add([]byte("interfaces = [\"eth0\", \"wg0\"]\nsequence = \"none\"\nspa_port = 62201\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\nprotect = \"all\"\nflows = false\nmax_sources = 1\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\nopen = 5\n[fleet]\npeers = []\n"))
	f.Add([]byte("gate = \"a b\"\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\n[services.web]\nprotect = \"443\"\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\n[services.web]\nprotect = \"443\"\nsequence = \"7000,7100/udp\"\nallow = [\"192.0.2.0/24\"]\n[services.x.y]\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\n[foo.bar]\nx = 1\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\nfoo.bar = 1\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\n[fleet]\nurl = \"nats://a:4222\"\n[fleet.tls]\nx = 1\n"))
	f.Add([]byte("interfaces = [\"eth0\"]\n[fleet]\nurl = \"nats://a:4222\"\nname = \"h\"\n"))
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
		if err := inSchema(data); err != nil {
			t.Errorf("Parse accepted %q: %v", data, err)
		}
	})
}

// inSchema checks that every table and key of a config file is the
// schema's: a top-level option's key, [services.NAME] tables holding the
// keys of a named service, or [fleet] holding its own keys; no option's
// value, nor any of [fleet]'s, holds a table.
func inSchema(data []byte) error {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return err
	}
	for k, v := range doc {
		if k == "fleet" {
			fleet, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("fleet is not a table")
			}
			for fk, fv := range fleet {
				if !slices.Contains(FleetKeys(), fk) {
					return fmt.Errorf("unknown key fleet.%s", fk)
				}
				if holdsTable(fv) {
					return fmt.Errorf("fleet.%s holds a table", fk)
				}
			}
			continue
		}
		if k == "services" {
			services, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("services is not a table")
			}
			for name, t := range services {
				svc, ok := t.(map[string]any)
				if !ok {
					return fmt.Errorf("services.%s is not a table", name)
				}
				for sk, sv := range svc {
					if o := Lookup(sk); o == nil || o.Key() != sk || o.In&Named == 0 {
						return fmt.Errorf("unknown key services.%s.%s", name, sk)
					}
					if holdsTable(sv) {
						return fmt.Errorf("services.%s.%s holds a table", name, sk)
					}
				}
			}
			continue
		}
		if o := Lookup(k); o == nil || o.Key() != k || o.In&File == 0 {
			return fmt.Errorf("unknown key %s", k)
		}
		if holdsTable(v) {
			return fmt.Errorf("%s holds a table", k)
		}
	}
	return nil
}

func holdsTable(v any) bool {
	switch v := v.(type) {
	case map[string]any, []map[string]any:
		return true
	case []any:
		return slices.ContainsFunc(v, holdsTable)
	}
	return false
}
