package bpf_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/test/netns"
)

// cacheEntry is an entry of the grant cache as the map holds it: its line
// (a set) and way, its check and expiry.
type cacheEntry struct {
	line, way      uint32
	check, expires uint64
}

// cacheEntries lists the grant cache's entries in use (check or expiry
// not zero).
func (g *gate) cacheEntries() (entries []cacheEntry) {
	g.t.Helper()
	m := g.objs.GrantCache
	for line := range m.MaxEntries() {
		var l bpf.KnockgateGrantCacheLine
		if err := m.Lookup(line, &l); err != nil {
			g.t.Fatalf("read grant cache line %d: %v", line, err)
		}
		for w := range uint32(maps.CacheWays) {
			if l.W[2*w] != 0 || l.W[2*w+1] != 0 {
				entries = append(entries, cacheEntry{line, w, l.W[2*w], l.W[2*w+1]})
			}
		}
	}
	return entries
}

// putCacheLine writes line of the grant cache whole.
func (g *gate) putCacheLine(line uint32, l bpf.KnockgateGrantCacheLine) {
	g.t.Helper()
	if err := g.objs.GrantCache.Put(line, &l); err != nil {
		g.t.Fatalf("write grant cache line %d: %v", line, err)
	}
}

// dropFromMap deletes addr's grant of service from the grants map alone,
// as the LRU recycling an entry would: no epoch bump.
func (g *gate) dropFromMap(addr netip.Addr, service int) {
	g.t.Helper()
	if err := g.objs.Grants.Delete(maps.GrantKey(addr, service)); err != nil {
		g.t.Fatalf("delete %s's grant from the map: %v", addr, err)
	}
}

// A granted packet makes an entry in the grant cache and the next one is
// answered from it: with the grant gone from the map alone (the LRU), the
// source still passes until the epoch moves; an operator's revoke voids it.
func TestGrantCacheAnswersGrantedSources(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, defaultConfig())
		var k0, k1 uint64
		if err := g.objs.CacheKey0.Get(&k0); err != nil {
			t.Fatal(err)
		}
		if err := g.objs.CacheKey1.Get(&k1); err != nil {
			t.Fatal(err)
		}
		if got := g.cacheEntries(); len(got) != 0 || k0|k1 == 0 {
			t.Fatalf("fresh cache: entries %+v, key %x %x; want none and a key", got, k0, k1)
		}
		expires := maps.BootAfter(time.Hour)
		if err := g.maps.Grant(f.src, "default", expires); err != nil {
			t.Fatal(err)
		}
		g.expect("granted SYN", f.knock(f.src, ssh), xdpPass, "passed_granted")
		got := g.cacheEntries()
		if len(got) != 1 || got[0].expires != expires {
			t.Fatalf("cache after a granted packet: %+v, want one entry until %d", got, expires)
		}

		g.dropFromMap(f.src, 0)
		g.expect("granted SYN, the grant in the cache alone", f.knock(f.src, ssh), xdpPass, "passed_granted")
		if again := g.cacheEntries(); len(again) != 1 || again[0] != got[0] {
			t.Errorf("cache after a cached answer: %+v, want %+v unchanged", again, got)
		}
		// Another source finds nothing.
		g.expect("SYN from another source", f.knock(f.other, ssh), xdpDrop, "dropped_protected")

		before, err := g.maps.CacheEpoch()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.maps.Revoke(f.src, "default"); err != nil {
			t.Fatal(err)
		}
		if after, _ := g.maps.CacheEpoch(); after != before+1 {
			t.Errorf("epoch %d after a revoke, want %d", after, before+1)
		}
		g.expect("SYN after the revoke", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
	})
}

// An entry is good for its own expiry only: a grant renewed in the map
// (no epoch bump) is read there again once the entry lapses, and cached
// anew; a grant an operator shortens is cut at once; an expired grant is
// still reported once, from the map.
func TestGrantCacheFollowsExpiries(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGateTuned(t, loader.Tuning{TestClock: true}, defaultConfig())
		g.setClock(time.Now())
		boot := maps.BootNow()
		if err := g.objs.TestBootNs.Set(boot); err != nil {
			t.Fatal(err)
		}
		first := boot + uint64(time.Minute)
		if err := g.maps.Grant(f.src, "default", first); err != nil {
			t.Fatal(err)
		}
		g.expect("granted SYN", f.knock(f.src, ssh), xdpPass, "passed_granted")
		renewed := first + uint64(time.Hour)
		if moved, err := g.maps.ExtendGrant(f.src, "default", renewed); err != nil || !moved {
			t.Fatalf("extend: %v %v", moved, err)
		}
		if got := g.cacheEntries(); len(got) != 1 || got[0].expires != first {
			t.Fatalf("cache after a renewal: %+v, want its entry until %d still", got, first)
		}
		if err := g.objs.TestBootNs.Set(first); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN past the entry's expiry, renewed in the map", f.knock(f.src, ssh), xdpPass, "passed_granted")
		if got := g.cacheEntries(); len(got) != 1 || got[0].expires != renewed {
			t.Errorf("cache after the renewal was read: %+v, want its entry until %d", got, renewed)
		}

		// The operator shortens it: past the new end, nothing passes.
		short := first + uint64(time.Second)
		if err := g.maps.Grant(f.src, "default", short); err != nil {
			t.Fatal(err)
		}
		if err := g.objs.TestBootNs.Set(short); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN past a shortened grant", f.knock(f.src, ssh), xdpDrop, "dropped_protected", "grant_expired")
		g.expectEvents("shortened grant", "expire")
		g.expect("SYN again", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
		g.expectEvents("after the report")
	})
}

// The cache never answers for an entry that is not the source's own in
// this epoch: torn (an expiry that is not the one its check was made
// with), copied into every line for a stranger, of another service, or of
// an epoch since voided.
func TestGrantCacheRefusesOthersEntries(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := webConfig()
		g := newGate(t, cfg)
		if err := g.maps.Grant(f.src, "default", maps.BootAfter(time.Hour)); err != nil {
			t.Fatal(err)
		}
		g.expect("granted SYN", f.knock(f.src, ssh), xdpPass, "passed_granted")
		got := g.cacheEntries()
		if len(got) != 1 {
			t.Fatalf("cache: %+v, want one entry", got)
		}
		e := got[0]
		g.dropFromMap(f.src, 0)
		epoch, err := g.maps.CacheEpoch()
		if err != nil {
			t.Fatal(err)
		}

		// Torn: the entry's expiry moved, its check not.
		var l bpf.KnockgateGrantCacheLine
		l.W[2*e.way], l.W[2*e.way+1] = e.check, e.expires+1
		g.putCacheLine(e.line, l)
		g.expect("SYN with a torn entry", f.knock(f.src, ssh), xdpDrop, "dropped_protected")

		// The source's own entry in every way of every line, and every
		// hint bit set: a stranger still finds nothing.
		for w := range uint32(maps.CacheWays) {
			l.W[2*w], l.W[2*w+1] = e.check, e.expires
		}
		for line := range g.objs.GrantCache.MaxEntries() {
			g.putCacheLine(line, l)
		}
		if err := g.maps.FillHints(); err != nil {
			t.Fatal(err)
		}
		g.expect("the owner's SYN", f.knock(f.src, ssh), xdpPass, "passed_granted")
		g.expect("a stranger's SYN", f.knock(f.other, ssh), xdpDrop, "dropped_protected")
		// The same source on another service's port (its hint bits set
		// too, above): the service is in the fingerprint.
		g.expect("the owner's SYN to another service", f.knock(f.src, unrelated), xdpDrop, "dropped_protected")
		if now, _ := g.maps.CacheEpoch(); now != epoch {
			t.Fatalf("epoch %d, want %d still: the checks above must not have been voided", now, epoch)
		}

		// A voided epoch.
		g.expect("the owner's SYN before the bump", f.knock(f.src, ssh), xdpPass, "passed_granted")
		if err := g.maps.VoidCache(); err != nil {
			t.Fatal(err)
		}
		g.expect("the owner's SYN in a new epoch", f.knock(f.src, ssh), xdpDrop, "dropped_protected")
	})
}

// Removing a service voids the cache: a source granted it passes no more,
// even on a port the service's successor at its index protects.
func TestGrantCacheVoidedByServiceRemoval(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		cfg := webConfig()
		g := newGate(t, cfg)
		if err := g.maps.Grant(f.src, "web", maps.BootAfter(time.Hour)); err != nil {
			t.Fatal(err)
		}
		g.expect("granted SYN to web", f.knock(f.src, unrelated), xdpPass, "passed_granted")
		before, _ := g.maps.CacheEpoch()
		cfg.Services = []policy.Service{{Name: "admin", Sequence: []maps.Port{tcp(6002)}, Protect: []maps.Port{unrelated}, Open: time.Hour, StepTimeout: time.Second}}
		g.configure(cfg)
		if after, _ := g.maps.CacheEpoch(); after == before {
			t.Errorf("epoch %d after web's removal, want it moved", after)
		}
		g.expect("SYN to web's old port, now admin's", f.knock(f.src, unrelated), xdpDrop, "dropped_protected")
	})
}

// webConfig is the default configuration and one service more, web: its
// own sequence (6001) and port (unrelated).
func webConfig() conf {
	cfg := defaultConfig()
	cfg.Services = []policy.Service{{Name: "web", Sequence: []maps.Port{tcp(6001)}, Protect: []maps.Port{unrelated}, Open: time.Hour, StepTimeout: time.Second}}
	return cfg
}
