package fleet

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// prevParseKey is the previous release's parseKey (commit 2f4d40f), as a
// host still on it reads the bucket's keys.
func prevParseKey(gate, key string) (addr netip.Addr, isGrant, ok bool) {
	rest, found := strings.CutPrefix(key, gate+".")
	if !found {
		return netip.Addr{}, false, false
	}
	if h, found := strings.CutPrefix(rest, "grant."); found {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 16 {
			return netip.Addr{}, false, false
		}
		return netip.AddrFrom16([16]byte(b)).Unmap(), true, true
	}
	if _, found := strings.CutPrefix(rest, "spa."); found {
		return netip.Addr{}, false, true
	}
	return netip.Addr{}, false, false
}

// Default's grants keep the previous release's key, which that release
// reads as its (only) grant; another service's key names it after the
// address, which that release skips; keys of no form grantKey makes are
// not read.
func TestGrantKeys(t *testing.T) {
	f := &Fleet{gate: "edge"}
	v4, v6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")
	const hex4 = "00000000000000000000ffffc0000207"
	for _, c := range []struct {
		g    Grant
		key  string
		prev bool // the previous release reads it as a grant of g.Addr
	}{
		{Grant{v4, policy.DefaultService}, "edge.grant." + hex4, true},
		{Grant{v6, policy.DefaultService}, "edge.grant.20010db8000000000000000000000007", true},
		{Grant{v4, "web"}, "edge.grant." + hex4 + ".web", false},
		{Grant{v6, "rdp-2_x"}, "edge.grant.20010db8000000000000000000000007.rdp-2_x", false},
	} {
		key := f.grantKey(c.g)
		if key != c.key {
			t.Errorf("key of %s: %s, want %s", c.g, key, c.key)
		}
		if g, _, isGrant, ok := f.parseKey(key); !ok || !isGrant || g != c.g {
			t.Errorf("%s read as %v (grant %v, ok %v), want %s", key, g, isGrant, ok, c.g)
		}
		addr, isGrant, ok := prevParseKey("edge", key)
		if got := ok && isGrant && addr == c.g.Addr; got != c.prev {
			t.Errorf("the previous release reads %s as a grant of %s: %v, want %v", key, c.g.Addr, got, c.prev)
		}
	}
	for _, key := range []string{
		"edge.grant." + hex4 + ".default", // default's has one key, the old one
		"edge.grant." + hex4 + ".Web",
		"edge.grant." + hex4 + ".",
		"edge.grant." + hex4 + ".web.x",
		"edge.grant." + hex4[:30] + ".web",
		"other.grant." + hex4 + ".web",
	} {
		if g, _, isGrant, ok := f.parseKey(key); ok && isGrant {
			t.Errorf("%s read as a grant of %s", key, g)
		}
	}
}

// Grants travel per (address, service): a grant of web reaches every host
// as web's, not default's; default's of the same address beside it; a
// revoke of web revokes web's only, everywhere; a revoke of every service
// (knockgate revoke ADDR) revokes each, everywhere.
func TestGrantsTravelPerService(t *testing.T) {
	nodes := newFleet(t, 3)
	for _, nd := range nodes {
		nd.local.setServices("web", "rdp")
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	web, def := Grant{client, "web"}, Grant{client, policy.DefaultService}
	webExp := time.Now().Add(time.Minute)
	a.local.grantOf(web, webExp)
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" has web's grant", func() bool {
			got, ok := nd.local.getOf(web)
			return ok && ms(got) == ms(webExp)
		}, nodes...)
	}
	time.Sleep(300 * time.Millisecond) // anything else would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.get(client); ok {
			t.Errorf("%s: web's grant opened default too", nd.cfg.Name)
		}
		if _, ok := nd.local.getOf(Grant{client, "rdp"}); ok {
			t.Errorf("%s: web's grant opened rdp too", nd.cfg.Name)
		}
	}
	kv := *a.fl.kv.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := kv.Get(ctx, a.fl.grantKey(web)); err != nil {
		t.Errorf("web's grant in the bucket at %s: %v", a.fl.grantKey(web), err)
	}

	// Default's, and rdp's, beside it, from another host.
	defExp, rdpExp := time.Now().Add(2*time.Minute), time.Now().Add(3*time.Minute)
	b.local.grantOf(def, defExp)
	b.local.grantOf(Grant{client, "rdp"}, rdpExp)
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" has default's and rdp's grants", func() bool {
			d, ok1 := nd.local.getOf(def)
			r, ok2 := nd.local.getOf(Grant{client, "rdp"})
			return ok1 && ok2 && ms(d) == ms(defExp) && ms(r) == ms(rdpExp)
		}, nodes...)
	}

	// knockgate revoke ADDR --service web, on the third host.
	c.local.Revoke(web)
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" lost web's grant", func() bool { _, ok := nd.local.getOf(web); return !ok }, nodes...)
	}
	time.Sleep(300 * time.Millisecond) // a wrong revoke would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.getOf(def); !ok {
			t.Errorf("%s lost default's grant with web's revoke", nd.cfg.Name)
		}
		if _, ok := nd.local.getOf(Grant{client, "rdp"}); !ok {
			t.Errorf("%s lost rdp's grant with web's revoke", nd.cfg.Name)
		}
	}

	// knockgate revoke ADDR (every service), on the first host.
	a.local.grantOf(web, time.Now().Add(time.Minute))
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" has web's grant again", func() bool { _, ok := nd.local.getOf(web); return ok }, nodes...)
	}
	a.local.revokeAll(client)
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" lost every grant of "+client.String(), func() bool {
			g, _ := nd.local.Grants()
			return len(g.Expires) == 0
		}, nodes...)
	}
}

// A grant in the previous release's format (as a host still on it writes
// it: GATE.grant.HEX, no service) is default's; its delete revokes
// default's only.
func TestPreviousReleaseKeyIsDefault(t *testing.T) {
	nodes := newFleet(t, 3)
	for _, nd := range nodes {
		nd.local.setServices("web")
	}
	web := Grant{client, "web"}
	nodes[1].local.grantOf(web, time.Now().Add(time.Minute))
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" has web's grant", func() bool { _, ok := nd.local.getOf(web); return ok }, nodes...)
	}
	kv := *nodes[0].fl.kv.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k := client.Unmap().As16()
	key := "edge.grant." + hex.EncodeToString(k[:])
	exp := time.Now().Add(2 * time.Minute)
	if _, err := kv.Put(ctx, key, fmt.Appendf(nil, `{"v":1,"expires_ms":%d,"origin":"old-host"}`, exp.UnixMilli())); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" has the previous release's grant as default's", func() bool {
			got, ok := nd.local.get(client)
			return ok && ms(got) == ms(exp)
		}, nodes...)
	}
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		until(t, 10*time.Second, nd.cfg.Name+" took the previous release's revoke", func() bool { _, ok := nd.local.get(client); return !ok }, nodes...)
	}
	time.Sleep(300 * time.Millisecond) // a wrong revoke would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.getOf(web); !ok {
			t.Errorf("%s lost web's grant with the previous release's revoke of default's", nd.cfg.Name)
		}
	}
	// And a new host writes default's grants where the previous release
	// reads them.
	exp = time.Now().Add(3 * time.Minute)
	nodes[2].local.grant(client, exp)
	until(t, 10*time.Second, "default's grant at the previous release's key", func() bool {
		e, err := kv.Get(ctx, key)
		return err == nil && strings.Contains(string(e.Value()), fmt.Sprint(exp.UnixMilli()))
	}, nodes...)
}

// A grant of a service a host does not have is kept in the bucket and
// ignored there, said once a service (not a failure); should the host get
// the service (a reload), it applies the fleet's live grants of it; should
// it lose one, the service's grants go from it only, not from the fleet.
func TestServiceNotHereKeptAndIgnored(t *testing.T) {
	nodes := newFleet(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.local.setServices("web")
	b.local.setServices("web")
	other := netip.MustParseAddr("192.0.2.8")
	exp := time.Now().Add(time.Minute)
	for _, addr := range []netip.Addr{client, other} {
		a.local.grantOf(Grant{addr, "web"}, exp)
		until(t, 10*time.Second, "host-b has web's grant of "+addr.String(), func() bool { _, ok := b.local.getOf(Grant{addr, "web"}); return ok }, nodes...)
	}
	until(t, 10*time.Second, "host-c set both aside", func() bool {
		c.fl.mu.Lock()
		defer c.fl.mu.Unlock()
		return len(c.fl.foreign) == 2
	}, nodes...)
	time.Sleep(500 * time.Millisecond) // a wrong revoke would be on its way
	if g, _ := c.local.Grants(); len(g.Expires) != 0 {
		t.Errorf("host-c, without web, has %v", g.Expires)
	}
	if n := c.said("ignored here"); n != 1 {
		t.Errorf("host-c said %d times that it ignores web's grants, want once: %q", n, c.logged)
	}
	if st := c.fl.Stats(); strings.Contains(st.LastError, "grant") {
		t.Errorf("host-c reports a failure: %s", st.LastError)
	}
	for _, nd := range []*node{a, b} {
		if _, ok := nd.local.getOf(Grant{client, "web"}); !ok {
			t.Errorf("%s lost web's grant: host-c revoked it", nd.cfg.Name)
		}
	}
	kv := *a.fl.kv.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kv.Get(ctx, a.fl.grantKey(Grant{client, "web"})); err != nil {
		t.Errorf("web's grant left the bucket: %v", err)
	}

	// A reload gives host-c web: it applies the fleet's grants of it.
	c.local.setServices("web")
	for _, addr := range []netip.Addr{client, other} {
		until(t, 10*time.Second, "host-c, given web, has web's grant of "+addr.String(), func() bool {
			got, ok := c.local.getOf(Grant{addr, "web"})
			return ok && ms(got) == ms(exp)
		}, nodes...)
	}
	// A revoke there is the fleet's again.
	c.local.Revoke(Grant{other, "web"})
	for _, nd := range []*node{a, b} {
		until(t, 10*time.Second, nd.cfg.Name+" took host-c's revoke of web's grant", func() bool {
			_, ok := nd.local.getOf(Grant{other, "web"})
			return !ok
		}, nodes...)
	}
	// A reload takes web from host-c: its grants go from host-c only.
	c.local.setServices()
	until(t, 10*time.Second, "host-c set web's grant aside again", func() bool {
		c.fl.mu.Lock()
		defer c.fl.mu.Unlock()
		return len(c.fl.foreign) == 1
	}, nodes...)
	time.Sleep(500 * time.Millisecond) // a wrong revoke would be on its way
	for _, nd := range []*node{a, b} {
		if _, ok := nd.local.getOf(Grant{client, "web"}); !ok {
			t.Errorf("%s lost web's grant when host-c lost web", nd.cfg.Name)
		}
	}
	if n := c.said("ignored here"); n != 2 {
		t.Errorf("host-c said %d times that it ignores web's grants, want once each time it lacked web: %q", n, c.logged)
	}
}

// The restarted member's rule holds per (address, service): web's grant
// revoked in the fleet while host-c was away is revoked there on its
// return, default's of the same address stays; web's grant made on host-c
// meanwhile is published, and so is its revoke of rdp's.
func TestRestartPerService(t *testing.T) {
	nodes := newFleet(t, 3)
	for _, nd := range nodes {
		nd.local.setServices("web", "rdp")
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	web, def, rdp := Grant{client, "web"}, Grant{client, policy.DefaultService}, Grant{client, "rdp"}
	mine := Grant{netip.MustParseAddr("192.0.2.8"), "web"}
	exp := time.Now().Add(time.Minute)
	b.local.grantOf(web, exp)
	b.local.grantOf(def, exp)
	a.local.grantOf(rdp, exp)
	for _, nd := range nodes {
		for _, g := range []Grant{web, def, rdp} {
			until(t, 10*time.Second, nd.cfg.Name+" has "+g.String(), func() bool { _, ok := nd.local.getOf(g); return ok }, nodes...)
		}
	}
	c.stop()
	b.local.Revoke(web)
	until(t, 10*time.Second, "host-a lost web's grant", func() bool { _, ok := a.local.getOf(web); return !ok }, nodes...)
	c.local.grantOf(mine, time.Now().Add(2*time.Minute)) // a knock of web's sequence while run was down
	c.local.Revoke(rdp)                                  // knockgate revoke --service rdp meanwhile
	c.start(t, 3)
	for _, nd := range []*node{a, b} {
		until(t, 20*time.Second, nd.cfg.Name+" has web's grant made on host-c while it was away", func() bool { _, ok := nd.local.getOf(mine); return ok }, nodes...)
		until(t, 10*time.Second, nd.cfg.Name+" took rdp's revoke made on host-c while it was away", func() bool { _, ok := nd.local.getOf(rdp); return !ok }, nodes...)
	}
	until(t, 10*time.Second, "host-c took web's revoke made while it was away", func() bool { _, ok := c.local.getOf(web); return !ok }, nodes...)
	time.Sleep(500 * time.Millisecond) // a wrong write would be on its way
	for _, nd := range nodes {
		if _, ok := nd.local.getOf(web); ok {
			t.Errorf("%s has web's revoked grant again", nd.cfg.Name)
		}
		if _, ok := nd.local.getOf(def); !ok {
			t.Errorf("%s lost default's grant with web's revoke", nd.cfg.Name)
		}
	}
}
