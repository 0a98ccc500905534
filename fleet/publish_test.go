package fleet

import (
	"context"
	"encoding/json"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// rarely is an interval at which the whole-map comparison never comes
// within a test: what arrives was written by Publish or Sync.
const rarely = time.Hour

// A grant Publish is told of reaches the other hosts without any
// comparison of the map; a revoke reaches them once Sync is asked for.
func TestPublishAndSyncWithoutTheRound(t *testing.T) {
	nodes := newFleetEvery(t, 3, rarely)
	exp := time.Now().Add(time.Minute)
	g := Grant{client, policy.DefaultService}
	nodes[0].local.grant(client, exp)
	nodes[0].fl.Publish(g, exp)
	for _, nd := range nodes[1:] {
		until(t, 10*time.Second, nd.cfg.Name+" has the published grant", func() bool {
			got, ok := nd.local.get(client)
			return ok && ms(got) == ms(exp)
		}, nodes...)
	}
	nodes[1].local.revoke(client)
	nodes[1].fl.Sync()
	for _, nd := range []*node{nodes[0], nodes[2]} {
		until(t, 10*time.Second, nd.cfg.Name+" lost the revoked grant", func() bool { _, ok := nd.local.get(client); return !ok }, nodes...)
	}
}

// A burst told to Publish arrives whole, written once each.
func TestPublishBurst(t *testing.T) {
	nodes := newFleetEvery(t, 3, rarely)
	const n = 3000
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})
		exp := time.Now().Add(time.Hour)
		nodes[0].local.grant(a, exp)
		nodes[0].fl.Publish(Grant{a, policy.DefaultService}, exp)
	}
	for _, nd := range nodes[1:] {
		until(t, 60*time.Second, nd.cfg.Name+" has the burst", func() bool {
			g, _ := nd.local.Grants()
			return len(g.Expires) == n
		}, nodes...)
	}
	// Never twice: a write the server stored but whose answer came after
	// its deadline (a loaded machine) is found there when tried again and
	// not counted, so fewer than n may be counted, never more.
	if st := nodes[0].fl.Stats(); st.Published > n || st.Published == 0 {
		t.Errorf("published %d for %d grants", st.Published, n)
	}
}

// A write at once that expects a revision the key has moved past (another
// host wrote a later expiry meanwhile) does not overwrite it: it is read
// again, and the later expiry stays.
func TestPublishKeepsTheLaterExpiry(t *testing.T) {
	nodes := newFleetEvery(t, 3, rarely)
	a, b := nodes[0], nodes[1]
	g := Grant{client, policy.DefaultService}
	later := time.Now().Add(time.Hour)
	a.local.grant(client, later)
	a.fl.Publish(g, later)
	until(t, 10*time.Second, "host-b has the grant", func() bool { _, ok := b.local.get(client); return ok }, nodes...)
	// host-b has not seen it (as if it were on its way) and writes an
	// earlier one, expecting the key to be new.
	b.fl.mu.Lock()
	delete(b.fl.known, g)
	delete(b.fl.revs, g)
	b.fl.mu.Unlock()
	earlier := time.Now().Add(time.Minute)
	b.fl.Publish(g, earlier)
	until(t, 10*time.Second, "host-b's write settled", func() bool {
		b.fl.mu.Lock()
		defer b.fl.mu.Unlock()
		return !b.fl.known[g].IsZero()
	}, nodes...)
	kvp := b.fl.kv.Load()
	e, err := (*kvp).Get(context.Background(), b.fl.grantKey(g))
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil || r.Expires != later.UnixMilli() || r.Origin != a.cfg.Name {
		t.Errorf("bucket has %+v (%v), want host-a's later expiry", r, err)
	}
}

// Applied and Revoked hear of what the bucket applies here and revokes,
// with the host it came from.
func TestAppliedAndRevokedReported(t *testing.T) {
	type heard struct {
		g      Grant
		origin string
		revoke bool
	}
	var mu sync.Mutex
	var got []heard
	nodes := newFleetWith(t, 3, rarely, func(i int, o *Options) {
		if i != 2 {
			return
		}
		o.Applied = func(g Grant, _ time.Time, origin string) {
			mu.Lock()
			got = append(got, heard{g: g, origin: origin})
			mu.Unlock()
		}
		o.Revoked = func(g Grant) {
			mu.Lock()
			got = append(got, heard{g: g, revoke: true})
			mu.Unlock()
		}
	})
	g := Grant{client, policy.DefaultService}
	exp := time.Now().Add(time.Minute)
	nodes[0].local.grant(client, exp)
	nodes[0].fl.Publish(g, exp)
	until(t, 10*time.Second, "host-c applied the grant", func() bool { _, ok := nodes[2].local.get(client); return ok }, nodes...)
	nodes[0].local.revoke(client)
	nodes[0].fl.Sync()
	until(t, 10*time.Second, "host-c revoked the grant", func() bool { _, ok := nodes[2].local.get(client); return !ok }, nodes...)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != (heard{g: g, origin: "host-a"}) || got[1] != (heard{g: g, revoke: true}) {
		t.Errorf("heard %+v", got)
	}
}
