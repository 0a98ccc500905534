package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// Fleet is the config file's [fleet] table: the hosts that share their
// grants. Without it, nothing changes: one host, no engine.
type Fleet struct {
	// Name is this host's name in the fleet (default: the host name).
	Name string `toml:"name"`
	// Gate is the gate's name in the fleet: hosts share the grants of the
	// gate of this name (default: the gate's own name, as it is when every
	// host's config file is the same).
	Gate string `toml:"gate"`
	// Peers are the route addresses (host:port) of every server of the
	// fleet, this one's among them: each host runs an embedded NATS server
	// listening on Listen. Or URL names an existing NATS cluster instead.
	Peers  []string `toml:"peers"`
	Listen string   `toml:"listen"`
	URL    string   `toml:"url"`
	Creds  string   `toml:"creds"` // with URL: a NATS .creds file
	// Routes between the embedded servers: mutual TLS with these files
	// (this host's certificate and key, the fleet's CA) and one user and
	// password (the password in a root-only file).
	TLSCert           string `toml:"tls_cert"`
	TLSKey            string `toml:"tls_key"`
	TLSCA             string `toml:"tls_ca"`
	RouteUser         string `toml:"route_user"`
	RoutePasswordFile string `toml:"route_password_file"`
	// StateDir holds the embedded server's JetStream store and what this
	// member last knew of the bucket (default DefaultFleetStateDir: the
	// unit's StateDirectory).
	StateDir string `toml:"state_dir"`
	Replicas int    `toml:"replicas"` // of the bucket (default: min(3, peers))

	RoutePassword string `toml:"-"`
	Set           bool   `toml:"-"` // the table was there
}

// DefaultFleetListen is where the embedded server's routes listen.
const DefaultFleetListen = "0.0.0.0:6222"

// DefaultFleetStateDir is the default state_dir, under the directory the
// unit's StateDirectory=knockgate makes.
const DefaultFleetStateDir = "/var/lib/knockgate/fleet"

func (f *Fleet) decode(md *toml.MetaData, prim toml.Primitive) error {
	if err := md.PrimitiveDecode(prim, f); err != nil {
		return err
	}
	// What the struct has no field for is left undecoded, at any depth
	// ([fleet.tls], x.y = 1 inside [fleet]).
	for _, k := range md.Undecoded() {
		if len(k) >= 2 && k[0] == "fleet" {
			e := &unknownKeyError{key: k[1:], table: k[:len(k)-1], isTable: isTable(md, k), known: FleetKeys()}
			if e.isTable {
				e.table = k
			}
			return e
		}
	}
	f.Set = true
	return f.check()
}

// FleetKeys are the keys of the [fleet] table.
func FleetKeys() []string {
	var keys []string
	t := reflect.TypeFor[Fleet]()
	for i := range t.NumField() {
		if k := t.Field(i).Tag.Get("toml"); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	return keys
}

// unknownKeyError is a key, or a table, that a table of the file does not
// have.
type unknownKeyError struct {
	key     toml.Key // inside the table
	table   toml.Key // the table it is in (whole), or itself if a table: where it is
	isTable bool
	known   []string
}

func (e *unknownKeyError) Error() string {
	what := "key"
	if e.isTable {
		what = "table"
	}
	return fmt.Sprintf("unknown %s %s (known: %s)", what, e.key, strings.Join(e.known, ", "))
}

func (f *Fleet) check() error {
	if f.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("name: not given, and no host name: %w", err)
		}
		f.Name = h
	}
	if f.StateDir == "" {
		f.StateDir = DefaultFleetStateDir
	}
	switch {
	case f.URL != "" && len(f.Peers) > 0:
		return errors.New("give peers (embedded servers) or url (an existing cluster), not both")
	case f.URL == "" && len(f.Peers) == 0:
		return errors.New("give peers (the embedded servers' route addresses) or url")
	}
	if f.URL != "" {
		return nil
	}
	if f.Listen == "" {
		f.Listen = DefaultFleetListen
	}
	for _, p := range append([]string{f.Listen}, f.Peers...) {
		if _, port, err := net.SplitHostPort(p); err != nil || port == "" {
			return fmt.Errorf("bad address %q (want HOST:PORT, e.g. 192.0.2.1:6222)", p)
		}
	}
	if (f.TLSCert == "") != (f.TLSKey == "") || (f.TLSCert != "" && f.TLSCA == "") {
		return errors.New("tls_cert, tls_key and tls_ca go together")
	}
	if f.RoutePasswordFile != "" {
		b, err := os.ReadFile(f.RoutePasswordFile)
		if err != nil {
			return fmt.Errorf("route_password_file: %w", err)
		}
		if st, err := os.Stat(f.RoutePasswordFile); err == nil && st.Mode().Perm()&0o077 != 0 {
			return fmt.Errorf("route_password_file %s is open to group or others (mode %04o): chmod 600 it", f.RoutePasswordFile, st.Mode().Perm())
		}
		f.RoutePassword = strings.TrimSpace(string(b))
	}
	if (f.RouteUser == "") != (f.RoutePassword == "") {
		return errors.New("route_user and route_password_file go together")
	}
	if f.Replicas == 0 {
		f.Replicas = min(3, len(f.Peers))
	}
	if f.Replicas < 1 || f.Replicas > len(f.Peers) {
		return fmt.Errorf("replicas %d: from 1 to the number of peers (%d)", f.Replicas, len(f.Peers))
	}
	return nil
}
