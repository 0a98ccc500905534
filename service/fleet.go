package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/fleet"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
)

// gateLocal is the gate's grants and replay state as the fleet sees them,
// read and written through the gate's methods (under its lock): grants by
// address and service name (each host numbers its services its own way),
// with wall-clock expiries, converted from and to the program's
// CLOCK_BOOTTIME (clock skew between hosts shifts an expiry by that much).
type gateLocal struct{ g *loader.Gate }

func (l gateLocal) Grants() (fleet.Grants, error) {
	exps, services, err := l.g.GrantExpiries()
	if err != nil {
		return fleet.Grants{}, err
	}
	out := fleet.Grants{Expires: make(map[fleet.Grant]time.Time, len(exps)), Services: map[string]bool{}}
	for id, exp := range exps {
		out.Expires[fleet.Grant{Addr: id.Addr, Service: id.Service}] = exp
	}
	for _, s := range services {
		out.Services[s] = true
	}
	return out, nil
}

// Apply grants gr until exp at least: the later expiry wins here too, and
// a renewal the program makes meanwhile stands (Gate.ExtendGrant).
func (l gateLocal) Apply(gr fleet.Grant, exp time.Time) error {
	_, err := l.g.ExtendGrant(gr.Addr, gr.Service, maps.BootAfter(time.Until(exp)))
	return noService(err)
}

// Revoke ends gr, that service's grant only.
func (l gateLocal) Revoke(gr fleet.Grant) error {
	_, err := l.g.Revoke(gr.Addr, gr.Service)
	return noService(err)
}

// noService says a grant of a service this gate does not have in the
// fleet's terms.
func noService(err error) error {
	if errors.Is(err, maps.ErrNoService) {
		return fmt.Errorf("%w: %w", fleet.ErrNoService, err)
	}
	return err
}

func (l gateLocal) Replay() (map[uint32]uint64, error) { return l.g.ReplayState() }

// ApplyReplay moves a key's replay state forward, never back, with a
// compare-and-swap as the program's own acceptance does (a plain write
// after a lookup could undo an acceptance made in between); a key this
// host does not have is left alone.
func (l gateLocal) ApplyReplay(id uint32, ms uint64) error {
	_, err := l.g.AdvanceReplay(id, ms)
	return err
}

// instance names the gate's grant map as long as it lives: the kernel's
// boot id and the map's id (a gate made anew, or a reboot, changes it).
// "" when either cannot be read.
func (l gateLocal) instance() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	id, err := l.g.GrantMapID()
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s/%d", strings.TrimSpace(string(boot)), id)
}

// member is this host in its fleet: the embedded server (if any), the
// connection and the membership.
type member struct {
	srv *fleet.Server
	nc  *nats.Conn
	fl  *fleet.Fleet
	dir string
}

// joinFleet makes this host a member of its fleet; log receives what the
// fleet has to say.
func joinFleet(g *loader.Gate, c config.Fleet, log func(msg string, args ...any), hooks *grantHooks) (*member, error) {
	m := &member{dir: c.StateDir}
	var err error
	if c.URL != "" {
		if m.nc, err = fleet.Dial(c.URL, c.Creds, c.Name); err != nil {
			return nil, err
		}
	} else {
		if m.srv, err = fleet.StartServer(fleet.ServerConfig{Name: c.Name, Listen: c.Listen, Peers: c.Peers,
			StoreDir: filepath.Join(c.StateDir, "jetstream"), RouteUser: c.RouteUser, RoutePassword: c.RoutePassword,
			TLSCert: c.TLSCert, TLSKey: c.TLSKey, TLSCA: c.TLSCA}); err != nil {
			return nil, err
		}
		if m.nc, err = m.srv.Connect(c.Name); err != nil {
			m.srv.Close()
			return nil, err
		}
	}
	replicas := c.Replicas
	if replicas == 0 {
		replicas = 3
	}
	gate := c.Gate
	if gate == "" {
		gate = g.Name
	}
	if m.fl, err = fleet.Join(fleet.Options{Name: c.Name, Gate: gate, Local: gateLocal{g}, Conn: m.nc, Server: m.srv,
		Replicas: replicas, StateFile: filepath.Join(c.StateDir, "known-grants"), Instance: gateLocal{g}.instance(),
		Log: log,
		Applied: func(gr fleet.Grant, exp time.Time, origin string) {
			hooks.fleetApplied(maps.GrantID{Addr: gr.Addr, Service: gr.Service}, exp, origin)
		},
		Revoked: func(gr fleet.Grant) { hooks.revoked(gr.Addr, gr.Service) },
	}); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

func (m *member) close() {
	if m == nil {
		return
	}
	if m.fl != nil {
		m.fl.Close()
	}
	if m.nc != nil {
		m.nc.Close()
	}
	if m.srv != nil {
		m.srv.Close()
	}
}

// FleetStatus is what `status` shows of the fleet: written by run to
// FleetStatusFile every second, since status runs in another process.
type FleetStatus struct {
	Name          string `json:"name"`
	Peers         int    `json:"peers"`
	Published     uint64 `json:"published"`
	Received      uint64 `json:"received"`
	WatchRestarts uint64 `json:"watch_restarts"`
	Pending       int    `json:"pending"`
	LastSync      string `json:"last_sync,omitempty"`
	LastError     string `json:"last_error,omitempty"`
	LastRestart   string `json:"last_restart,omitempty"` // why the watch was last made again
	Updated       string `json:"updated"`
}

// FleetStatusFile is where run writes the fleet's figures for gate.
func FleetStatusFile(gate string) string {
	return filepath.Join(runDir, "fleet-"+gate+".json")
}

// opened is an open event: a grant made (or lengthened) here by a knock or
// an SPA packet, written to the fleet at once; an SPA packet's key's
// replay state with it.
func (m *member) opened(ev maps.Event) {
	if m == nil {
		return
	}
	m.fl.Publish(fleet.Grant{Addr: ev.Src.Unmap(), Service: ev.Service}, ev.Expires)
	if ev.KeyID != 0 {
		m.fl.Sync()
	}
}

// granted is `knockgate grant`'s notice: written to the fleet at once.
func (m *member) granted(id maps.GrantID, exp time.Time) {
	if m == nil {
		return
	}
	m.fl.Publish(fleet.Grant{Addr: id.Addr, Service: id.Service}, exp)
}

// revoked is `knockgate revoke`'s notice: the member compares its map
// with the fleet now, not at its next round, and deletes what was revoked.
func (m *member) revoked() {
	if m == nil {
		return
	}
	m.fl.Sync()
}

func (m *member) report(gate, name string) {
	if m == nil {
		return
	}
	st := m.fl.Stats()
	fs := FleetStatus{Name: name, Peers: st.Peers, Published: st.Published, Received: st.Received,
		WatchRestarts: st.WatchRestarts, Pending: st.Pending, LastError: st.LastError, LastRestart: st.LastRestart,
		Updated: time.Now().UTC().Format(time.RFC3339)}
	if !st.LastSync.IsZero() {
		fs.LastSync = st.LastSync.UTC().Format(time.RFC3339Nano)
	}
	b, err := json.Marshal(fs)
	if err != nil {
		return
	}
	path := FleetStatusFile(gate)
	os.MkdirAll(filepath.Dir(path), 0o755)
	tmp := path + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		os.Rename(tmp, path)
	}
}
