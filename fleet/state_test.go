package fleet

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// The state file reads back as written: the last record of an address and
// service wins, a line that does not read is skipped, a file of another
// gate or grant map is none, and the log is written anew once it has
// grown.
func TestStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "known-grants")
	mk := func(instance string) *Fleet {
		return &Fleet{gate: "edge", instance: instance, stateFile: path, ttlSlack: time.Minute, seen: map[Grant]seen{}}
	}
	f := mk("map-1")
	exp := time.Now().Add(time.Hour).UnixMilli()
	a := Grant{netip.MustParseAddr("192.0.2.1"), policy.DefaultService}
	b := Grant{netip.MustParseAddr("2001:db8::2"), policy.DefaultService}
	aWeb := Grant{a.Addr, "web"}
	f.see(a, exp, 3)
	f.see(b, exp, 4)
	f.see(aWeb, exp+5, 5)
	f.saveState()
	f.see(a, exp+1000, 9) // appended
	f.see(Grant{netip.MustParseAddr("192.0.2.3"), policy.DefaultService}, time.Now().Add(-time.Hour).UnixMilli(), 1)
	f.saveState()
	raw, _ := os.ReadFile(path)
	os.WriteFile(path, append(raw, "192.0.2.4 17000 3 Web!\n192.0.2.4 17000"...), 0o600) // a name no service has, a line cut short
	got := mk("map-1").loadState()
	if len(got) != 4 || got[a] != (seen{exp + 1000, 9}) || got[b] != (seen{exp, 4}) || got[aWeb] != (seen{exp + 5, 5}) {
		t.Errorf("read back %v", got)
	}
	if got := mk("map-2").loadState(); len(got) != 0 {
		t.Errorf("a file about another map read as %v", got)
	}
	if got := mk("").loadState(); len(got) != 0 {
		t.Errorf("a file read without an instance: %v", got)
	}
	// Many records of one grant: written anew, with one line for it (and
	// none for the one long expired).
	for i := range 3000 {
		f.see(a, exp+int64(i), uint64(10+i))
		f.saveState()
	}
	raw, _ = os.ReadFile(path)
	if n := strings.Count(string(raw), "\n"); n > 2*3+1024+2 {
		t.Errorf("%d lines for 3 records", n)
	}
	if got := mk("map-1").loadState(); len(got) != 3 || got[a] != (seen{exp + 2999, 3009}) || got[aWeb] != (seen{exp + 5, 5}) {
		t.Errorf("after the log was written anew: %v", got)
	}
}

// A state file of the release before services (version 1: no service on
// its lines) is about the service default's grants.
func TestStateFileVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known-grants")
	exp := time.Now().Add(time.Hour).UnixMilli()
	os.WriteFile(path, fmt.Appendf(nil, "{\"v\":1,\"gate\":\"edge\",\"instance\":\"map-1\"}\n192.0.2.1 %d 7\n2001:db8::2 %d 8 web\n", exp, exp), 0o600)
	f := &Fleet{gate: "edge", instance: "map-1", stateFile: path, ttlSlack: time.Minute, seen: map[Grant]seen{}}
	got := f.loadState()
	if len(got) != 1 || got[Grant{netip.MustParseAddr("192.0.2.1"), policy.DefaultService}] != (seen{exp, 7}) {
		t.Errorf("a version 1 file read as %v, want 192.0.2.1's grant of default only", got)
	}
}
