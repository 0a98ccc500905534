package fleet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The state file reads back as written: the last record of an address
// wins, a line that does not read is skipped, a file of another gate or
// grant map is none, and the log is written anew once it has grown.
func TestStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "known-grants")
	mk := func(instance string) *Fleet {
		return &Fleet{gate: "edge", instance: instance, stateFile: path, ttlSlack: time.Minute, seen: map[netip.Addr]seen{}}
	}
	f := mk("map-1")
	exp := time.Now().Add(time.Hour).UnixMilli()
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2")
	f.see(a, exp, 3)
	f.see(b, exp, 4)
	f.saveState()
	f.see(a, exp+1000, 9) // appended
	f.see(netip.MustParseAddr("192.0.2.3"), time.Now().Add(-time.Hour).UnixMilli(), 1)
	f.saveState()
	raw, _ := os.ReadFile(path)
	os.WriteFile(path, append(raw, "192.0.2.4 17000"...), 0o600) // a line cut short
	got := mk("map-1").loadState()
	if len(got) != 3 || got[a] != (seen{exp + 1000, 9}) || got[b] != (seen{exp, 4}) {
		t.Errorf("read back %v", got)
	}
	if got := mk("map-2").loadState(); len(got) != 0 {
		t.Errorf("a file about another map read as %v", got)
	}
	if got := mk("").loadState(); len(got) != 0 {
		t.Errorf("a file read without an instance: %v", got)
	}
	// Many records of one address: written anew, with one line for it (and
	// none for the one long expired).
	for i := range 3000 {
		f.see(a, exp+int64(i), uint64(10+i))
		f.saveState()
	}
	raw, _ = os.ReadFile(path)
	if n := strings.Count(string(raw), "\n"); n > 2*2+1024+2 {
		t.Errorf("%d lines for 2 records", n)
	}
	if got := mk("map-1").loadState(); len(got) != 2 || got[a] != (seen{exp + 2999, 3009}) {
		t.Errorf("after the log was written anew: %v", got)
	}
}
