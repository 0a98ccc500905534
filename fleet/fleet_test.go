package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// memLocal is a host's grant map in memory, with the services it has.
type memLocal struct {
	mu       sync.Mutex
	grants   map[Grant]time.Time
	services map[string]bool
	replay   map[uint32]uint64
}

// newMemLocal has the service default and services.
func newMemLocal(services ...string) *memLocal {
	m := &memLocal{grants: map[Grant]time.Time{}, services: map[string]bool{policy.DefaultService: true},
		replay: map[uint32]uint64{}}
	for _, s := range services {
		m.services[s] = true
	}
	return m
}

func (m *memLocal) Grants() (Grants, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := Grants{Expires: map[Grant]time.Time{}, Services: map[string]bool{}}
	for g, t := range m.grants {
		out.Expires[g] = t
	}
	for s := range m.services {
		out.Services[s] = true
	}
	return out, nil
}

func (m *memLocal) Apply(g Grant, exp time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.services[g.Service] {
		return fmt.Errorf("grant %s: %w", g, ErrNoService)
	}
	if exp.After(m.grants[g]) {
		m.grants[g] = exp
	}
	return nil
}

func (m *memLocal) Revoke(g Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.services[g.Service] {
		return fmt.Errorf("revoke %s: %w", g, ErrNoService)
	}
	delete(m.grants, g)
	return nil
}

func (m *memLocal) Replay() (map[uint32]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[uint32]uint64{}
	for k, v := range m.replay {
		out[k] = v
	}
	return out, nil
}

func (m *memLocal) ApplyReplay(id uint32, ms uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.replay[id] = max(m.replay[id], ms)
	return nil
}

// grant grants a the service default until exp, as a knock would.
func (m *memLocal) grant(a netip.Addr, exp time.Time) {
	m.grantOf(Grant{a, policy.DefaultService}, exp)
}

// grantOf grants g until exp, replacing any grant it had.
func (m *memLocal) grantOf(g Grant, exp time.Time) {
	m.mu.Lock()
	m.grants[g] = exp
	m.mu.Unlock()
}

// get is a's grant of the service default.
func (m *memLocal) get(a netip.Addr) (time.Time, bool) {
	return m.getOf(Grant{a, policy.DefaultService})
}

func (m *memLocal) getOf(g Grant) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.grants[g]
	return t, ok
}

// revoke revokes a's grant of the service default.
func (m *memLocal) revoke(a netip.Addr) { m.Revoke(Grant{a, policy.DefaultService}) }

// revokeAll revokes a's grants of every service, as `knockgate revoke
// ADDR` does.
func (m *memLocal) revokeAll(a netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for g := range m.grants {
		if g.Addr == a {
			delete(m.grants, g)
		}
	}
}

// setServices makes the host's services default and services, as a reload
// does: a service that goes takes its grants with it.
func (m *memLocal) setServices(services ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.services = map[string]bool{policy.DefaultService: true}
	for _, s := range services {
		m.services[s] = true
	}
	for g := range m.grants {
		if !m.services[g.Service] {
			delete(m.grants, g)
		}
	}
}

// node is one host of a test fleet. Its state file and local map outlive
// a stop and start, as a gate's pinned map outlives run; instance names
// the map (a new one when a test replaces it, as after a reboot).
type node struct {
	interval time.Duration
	cfg      ServerConfig
	srv      *Server
	fl       *Fleet
	local    *memLocal
	state    string
	instance string

	logMu  sync.Mutex
	logged []string // what the fleet said: each message with its arguments

	// options, if set, changes the options the member joins with.
	options func(*Options)
}

func (nd *node) log(msg string, args ...any) {
	nd.logMu.Lock()
	defer nd.logMu.Unlock()
	nd.logged = append(nd.logged, fmt.Sprint(append([]any{msg}, args...)...))
}

// said counts the messages logged that contain text.
func (nd *node) said(text string) int {
	nd.logMu.Lock()
	defer nd.logMu.Unlock()
	n := 0
	for _, l := range nd.logged {
		if strings.Contains(l, text) {
			n++
		}
	}
	return n
}

// freePort is a port for a server's routes, free when asked: from below
// the kernel's ephemeral range, never from it (a port the kernel hands out
// with :0 is also what it gives the next outgoing connection — the routes'
// own, the suite's other packages' — which can take it before the server
// binds it: the server then never starts).
func freePort(t testing.TB) string {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(low-10000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatalf("no free port below %d", low)
	return ""
}

// certs makes a CA and, signed by it, a certificate for 127.0.0.1 every
// server uses: routes with mutual TLS.
func certs(t testing.TB, dir string) (cert, key, ca string) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "knockgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "knockgate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("cert.pem", "CERTIFICATE", der), write("key.pem", "EC PRIVATE KEY", kb), write("ca.pem", "CERTIFICATE", caDER)
}

// newFleet starts n servers on 127.0.0.1, clustered with TLS and route
// authentication, and a member on each.
func newFleet(t testing.TB, n int) []*node { return newFleetEvery(t, n, 20*time.Millisecond) }

// newFleetEvery is newFleet with members looking for local changes every
// interval.
func newFleetEvery(t testing.TB, n int, interval time.Duration) []*node {
	return newFleetWith(t, n, interval, nil)
}

// newFleetWith is newFleetEvery with the options of member i changed by
// options (if not nil).
func newFleetWith(t testing.TB, n int, interval time.Duration, options func(i int, o *Options)) []*node {
	dir := t.TempDir()
	cert, key, ca := certs(t, dir)
	// A port free when freePort asked may be taken before its server binds
	// it (by another package's test, say): the servers are made anew, on
	// other ports, up to three times.
	var nodes []*node
	for attempt := 1; ; attempt++ {
		var err error
		nodes, err = tryFleet(t, n, interval, options, filepath.Join(dir, fmt.Sprint(attempt)), cert, key, ca)
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("fleet of %d, attempt %d: %v; again on other ports", n, attempt, err)
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.stop()
		}
	})
	// Every member watching the bucket: the fleet is formed.
	until(t, 30*time.Second, "the fleet formed", func() bool {
		for _, nd := range nodes {
			if nd.fl == nil || nd.fl.Stats().LastSync.IsZero() {
				return false
			}
		}
		return true
	}, nodes...)
	return nodes
}

// tryFleet starts n servers on fresh ports, with their state under dir,
// and a member on each; if any fails to start, it stops them all.
func tryFleet(t testing.TB, n int, interval time.Duration, options func(i int, o *Options), dir, cert, key, ca string) ([]*node, error) {
	var peers []string
	for range n {
		peers = append(peers, freePort(t))
	}
	nodes := make([]*node, n)
	for i := range n {
		nodes[i] = &node{cfg: ServerConfig{Name: fmt.Sprintf("host-%c", 'a'+i), Listen: peers[i], Peers: peers,
			StoreDir: filepath.Join(dir, fmt.Sprintf("store-%d", i)), RouteUser: "fleet", RoutePassword: "s3cret",
			TLSCert: cert, TLSKey: key, TLSCA: ca}, local: newMemLocal(), interval: interval,
			state: filepath.Join(dir, fmt.Sprintf("known-grants-%d", i)), instance: "map-1"}
		if options != nil {
			nodes[i].options = func(o *Options) { options(i, o) }
		}
		if os.Getenv("KG_NO_TLS") != "" {
			nodes[i].cfg.TLSCert, nodes[i].cfg.TLSKey, nodes[i].cfg.TLSCA = "", "", ""
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, nd := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = nd.tryStart(n) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, nd := range nodes {
			nd.stop()
		}
		return nil, err
	}
	return nodes, nil
}

func (nd *node) start(t testing.TB, replicas int) {
	if err := nd.tryStart(replicas); err != nil {
		t.Error(err)
	}
}

// tryStart starts the node's server and its member.
func (nd *node) tryStart(replicas int) error {
	srv, err := StartServer(nd.cfg)
	if err != nil {
		return err
	}
	nc, err := srv.Connect(nd.cfg.Name)
	if err != nil {
		srv.Close()
		return err
	}
	o := Options{Name: nd.cfg.Name, Gate: "edge", Local: nd.local, Conn: nc, Server: srv, Replicas: replicas,
		Interval: nd.interval, StateFile: nd.state, Instance: nd.instance, Log: nd.log}
	if nd.options != nil {
		nd.options(&o)
	}
	fl, err := Join(o)
	if err != nil {
		nc.Close()
		srv.Close()
		return err
	}
	nd.srv, nd.fl = srv, fl
	return nil
}

func (nd *node) stop() {
	if nd.fl != nil {
		nd.fl.Close()
		nd.fl.nc.Close()
		nd.fl = nil
	}
	if nd.srv != nil {
		nd.srv.Close()
		nd.srv = nil
	}
}

// until waits for cond, failing after bound.
func until(t testing.TB, bound time.Duration, what string, cond func() bool, nodes ...*node) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > bound {
			for _, nd := range nodes {
				if nd.fl != nil {
					t.Logf("%s: %+v", nd.cfg.Name, nd.fl.Stats())
				}
			}
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func ms(t time.Time) int64 { return t.UnixMilli() }

var client = netip.MustParseAddr("192.0.2.7")

func TestGrantReachesTheFleet(t *testing.T) {
	nodes := newFleet(t, 3)
	exp := time.Now().Add(30 * time.Second)
	nodes[0].local.grant(client, exp)
	for _, nd := range nodes[1:] {
		d := until(t, 10*time.Second, nd.cfg.Name+" has the grant", func() bool {
			got, ok := nd.local.get(client)
			return ok && ms(got) == ms(exp)
		}, nodes...)
		t.Logf("%s: %s", nd.cfg.Name, d)
	}
	if st := nodes[0].fl.Stats(); st.Peers != 2 || st.Published == 0 {
		t.Errorf("origin's stats %+v: want 2 peers, a publish", st)
	}
	if st := nodes[1].fl.Stats(); st.Received == 0 || st.LastSync.IsZero() {
		t.Errorf("receiver's stats %+v: want a receive and a sync", st)
	}

	// Revoked on another host: gone everywhere.
	nodes[2].local.revoke(client)
	for _, nd := range nodes[:2] {
		until(t, 10*time.Second, nd.cfg.Name+" lost the revoked grant", func() bool { _, ok := nd.local.get(client); return !ok })
	}
}

// Two hosts grant one address at once with different expiries, in either
// order: every host ends with the later.
func TestLaterExpiryWins(t *testing.T) {
	nodes := newFleet(t, 3)
	for i, order := range [][2]int{{0, 1}, {1, 0}} {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)})
		later, earlier := time.Now().Add(time.Minute), time.Now().Add(20*time.Second)
		nodes[order[0]].local.grant(a, later)
		nodes[order[1]].local.grant(a, earlier)
		for _, nd := range nodes {
			until(t, 10*time.Second, nd.cfg.Name+" has the later expiry", func() bool {
				got, ok := nd.local.get(a)
				return ok && ms(got) == ms(later)
			})
		}
	}
}

// A host that was down catches up from the bucket when it comes back.
func TestRestartedNodeCatchesUp(t *testing.T) {
	nodes := newFleet(t, 3)
	nodes[2].stop()
	exp := time.Now().Add(time.Minute)
	nodes[0].local.grant(client, exp)
	until(t, 10*time.Second, "host-b has the grant", func() bool { _, ok := nodes[1].local.get(client); return ok })
	nodes[2].local = newMemLocal() // its grant map is gone too, as after a reboot
	nodes[2].instance = "map-2"
	nodes[2].start(t, 3)
	until(t, 20*time.Second, "the restarted host-c has the grant", func() bool {
		got, ok := nodes[2].local.get(client)
		return ok && ms(got) == ms(exp)
	})
	// SPA replay state travels too: a timestamp accepted on one host.
	nodes[1].local.ApplyReplay(7, 1_800_000_000_000)
	for _, nd := range []*node{nodes[0], nodes[2]} {
		until(t, 10*time.Second, nd.cfg.Name+" has the replay state", func() bool {
			r, _ := nd.local.Replay()
			return r[7] == 1_800_000_000_000
		})
	}
}

// A burst of grants on one host arrives whole everywhere: none is taken
// for revoked on the way (a grant applied from the bucket between a
// member's read of its map and its comparison once looked revoked there).
func TestBurstArrivesWhole(t *testing.T) {
	nodes := newFleet(t, 3)
	const n = 1000
	for i := range n {
		nodes[0].local.grant(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), time.Now().Add(time.Hour))
	}
	for _, nd := range nodes {
		until(t, 30*time.Second, nd.cfg.Name+" has every grant", func() bool {
			g, _ := nd.local.Grants()
			return len(g.Expires) == n
		}, nodes...)
	}
	time.Sleep(500 * time.Millisecond) // any wrong revoke would be on its way
	for _, nd := range nodes {
		if g, _ := nd.local.Grants(); len(g.Expires) != n {
			t.Errorf("%s: %d of %d grants after the burst settled", nd.cfg.Name, len(g.Expires), n)
		}
	}
}

// A member of an existing cluster, joined by URL (here one embedded
// server's client port): it gets the fleet's grants like the others.
func TestMemberByURL(t *testing.T) {
	nodes := newFleet(t, 3)
	nc, err := Dial(nodes[0].srv.ClientURL(), "", "by-url")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	local := newMemLocal()
	fl, err := Join(Options{Name: "by-url", Gate: "edge", Local: local, Conn: nc, Replicas: 3, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	exp := time.Now().Add(time.Minute)
	nodes[1].local.grant(client, exp)
	until(t, 10*time.Second, "the member by URL has the grant", func() bool {
		got, ok := local.get(client)
		return ok && ms(got) == ms(exp)
	}, nodes...)
	if st := fl.Stats(); st.Peers != 1 {
		t.Errorf("a member by URL reports %d peers, want 1 (connected)", st.Peers)
	}
}

// A grant revoked in the fleet while a member was away is revoked on its
// return, and not written back; a grant made on its own map meanwhile is
// written; so is a revoke made on its own map meanwhile.
func TestRestartTellsRevokesFromOwnGrants(t *testing.T) {
	nodes := newFleet(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	revoked, mine, gone := client, netip.MustParseAddr("192.0.2.8"), netip.MustParseAddr("192.0.2.9")
	exp := time.Now().Add(time.Minute)
	b.local.grant(revoked, exp)
	a.local.grant(gone, exp)
	for _, nd := range nodes {
		for _, addr := range []netip.Addr{revoked, gone} {
			until(t, 10*time.Second, nd.cfg.Name+" has "+addr.String(), func() bool { _, ok := nd.local.get(addr); return ok }, nodes...)
		}
	}
	c.stop()
	b.local.revoke(revoked)
	until(t, 10*time.Second, "host-a lost the revoked grant", func() bool { _, ok := a.local.get(revoked); return !ok }, nodes...)
	c.local.grant(mine, time.Now().Add(2*time.Minute)) // a knock on its gate while run was down
	c.local.revoke(gone)                               // knockgate revoke on its gate meanwhile
	c.start(t, 3)
	for _, nd := range []*node{a, b} {
		until(t, 20*time.Second, nd.cfg.Name+" has the grant made on host-c while it was away", func() bool { _, ok := nd.local.get(mine); return ok }, nodes...)
		until(t, 10*time.Second, nd.cfg.Name+" took the revoke made on host-c while it was away", func() bool { _, ok := nd.local.get(gone); return !ok }, nodes...)
	}
	// At once, unless its replica of the bucket was still catching up
	// when it read it.
	until(t, 10*time.Second, "host-c took the revoke made while it was away", func() bool { _, ok := c.local.get(revoked); return !ok }, nodes...)
	time.Sleep(500 * time.Millisecond) // a wrong write would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.get(revoked); ok {
			t.Errorf("%s has the revoked grant again", nd.cfg.Name)
		}
	}
	if _, ok := c.local.get(mine); !ok {
		t.Errorf("host-c lost its own grant")
	}
}

// A state file about another map (the gate made anew, or a reboot) is not
// about the map there is now: a member that comes back with an empty map
// takes the fleet's grants, and revokes none of them.
func TestRestartWithANewMapRevokesNothing(t *testing.T) {
	nodes := newFleet(t, 3)
	a, c := nodes[0], nodes[2]
	exp := time.Now().Add(time.Minute)
	a.local.grant(client, exp)
	until(t, 10*time.Second, "host-c has the grant", func() bool { _, ok := c.local.get(client); return ok }, nodes...)
	c.stop()
	c.local, c.instance = newMemLocal(), "map-2"
	c.start(t, 3)
	until(t, 20*time.Second, "host-c, back with a new map, has the grant", func() bool {
		got, ok := c.local.get(client)
		return ok && ms(got) == ms(exp)
	}, nodes...)
	time.Sleep(500 * time.Millisecond) // a wrong revoke would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.get(client); !ok {
			t.Errorf("%s lost the grant when host-c came back with a new map", nd.cfg.Name)
		}
	}
}

// A watch whose consumer goes (as with the host that served it) is made
// again once the bucket moves on without it, and counted.
func TestWatchRestartsWhenItStops(t *testing.T) {
	nodes := newFleet(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := nodes[0].fl.js
	st, err := js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		t.Fatal(err)
	}
	lister := st.ConsumerNames(ctx)
	var names []string
	for name := range lister.Name() {
		names = append(names, name)
	}
	if err := lister.Err(); err != nil || len(names) < 3 {
		t.Fatalf("consumers of the bucket: %v, %v", names, err)
	}
	for _, name := range names {
		if err := js.DeleteConsumer(ctx, "KV_"+Bucket, name); err != nil {
			t.Fatal(err)
		}
	}
	exp := time.Now().Add(time.Minute)
	nodes[0].local.grant(client, exp)
	for _, nd := range nodes[1:] {
		d := until(t, 5*time.Second, nd.cfg.Name+" has the grant with its watch's consumer deleted", func() bool {
			_, ok := nd.local.get(client)
			return ok
		}, nodes...)
		t.Logf("%s: %s (%+v)", nd.cfg.Name, d, nd.fl.Stats())
	}
	// Each watch was behind (the grant's revision, the origin's too) and
	// is made again.
	for _, nd := range nodes {
		until(t, 5*time.Second, nd.cfg.Name+" counts a watch restart, with its reason", func() bool {
			st := nd.fl.Stats()
			return st.WatchRestarts > 0 && st.LastRestart != ""
		}, nodes...)
	}
}
