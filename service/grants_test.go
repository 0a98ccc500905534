package service

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// fakeGrants is a grant map: expiries by grant.
type fakeGrants struct {
	mu  sync.Mutex
	exp map[maps.GrantID]time.Time
}

func (f *fakeGrants) LookupGrant(addr netip.Addr, service string) (bpf.KnockgateGrant, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.exp[maps.GrantID{Addr: addr, Service: service}]
	if !ok {
		return bpf.KnockgateGrant{}, false, nil
	}
	return bpf.KnockgateGrant{ExpiresNs: maps.BootAfter(time.Until(e))}, true, nil
}

func (f *fakeGrants) GrantExpiries() (map[maps.GrantID]time.Time, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[maps.GrantID]time.Time{}
	for id, e := range f.exp {
		out[id] = e
	}
	return out, nil, nil
}

func (f *fakeGrants) set(id maps.GrantID, exp time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exp[id] = exp
}

func (f *fakeGrants) del(id maps.GrantID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.exp, id)
}

// jobs collects what would run.
type jobs struct {
	mu   sync.Mutex
	list []*hookJob
}

func (j *jobs) submit(job *hookJob) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.list = append(j.list, job)
}

func (j *jobs) all() []*hookJob {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]*hookJob(nil), j.list...)
}

// env is a job's KNOCKGATE_ variables by name (source, how, ...).
func (job *hookJob) vars() map[string]string {
	out := map[string]string{}
	for _, kv := range job.env {
		k, v, _ := strings.Cut(kv, "=")
		out[strings.ToLower(strings.TrimPrefix(k, "KNOCKGATE_"))] = v
	}
	return out
}

var (
	src1 = netip.MustParseAddr("192.0.2.7")
	src2 = netip.MustParseAddr("2001:db8::9")
)

// hookSettings has default with on_open and on_close, and web with them
// and fleet_hooks, and an SPA key named laptop.
func hookSettings() *config.Settings {
	s := config.Defaults()
	s.Gate = "edge"
	s.Service("web").Protect = []policy.Port{{Num: 443, Proto: policy.TCP}}
	s.Hooks = map[string]*config.Hooks{
		"default": {OnOpen: []string{"/bin/open", "{source}", "{how}"}, OnClose: []string{"/bin/close", "{source}", "{reason}"}},
		"web":     {OnOpen: []string{"/bin/open", "--src={source}/{family}"}, OnClose: []string{"/bin/close"}, Fleet: true},
	}
	s.SPAKeys = []spa.Key{{ID: 7, Name: "laptop"}}
	return &s
}

func newTestHooks(t *testing.T, s *config.Settings) (*grantHooks, *fakeGrants, *jobs) {
	t.Helper()
	g := &fakeGrants{exp: map[maps.GrantID]time.Time{}}
	j := &jobs{}
	var log logBuf
	h := newGrantHooks(g, j, log.logger())
	h.configure("edge", s)
	t.Cleanup(h.stop)
	return h, g, j
}

// A sequence's open event runs on_open once with what it knows; its
// timer runs on_close once at the expiry, and the expire event after it
// runs nothing more.
func TestHooksSequenceOpenAndExpiry(t *testing.T) {
	h, g, j := newTestHooks(t, hookSettings())
	id := maps.GrantID{Addr: src1, Service: "default"}
	exp := time.Now().Add(300 * time.Millisecond)
	g.set(id, exp)
	h.opened(maps.Event{Type: "open", Src: src1, Service: "default", Expires: exp})
	h.opened(maps.Event{Type: "open", Src: src1, Service: "default", Expires: exp}) // the same grant again
	got := j.all()
	if len(got) != 1 {
		t.Fatalf("%d jobs, want on_open once", len(got))
	}
	v := got[0].vars()
	if got[0].argv[1] != src1.String() || got[0].argv[2] != "sequence" || v["event"] != "open" || v["gate"] != "edge" ||
		v["service"] != "default" || v["source"] != "192.0.2.7" || v["family"] != "ipv4" || v["how"] != "sequence" ||
		v["key_id"] != "" || v["expires"] != exp.UTC().Format(time.RFC3339) || v["open_seconds"] == "" || v["reason"] != "" {
		t.Errorf("on_open: argv %q, vars %v", got[0].argv, v)
	}
	if len(got[0].env) != len(config.HookVars) {
		t.Errorf("env %q: want every variable, empty ones too", got[0].env)
	}
	eventually(t, 10*time.Second, "on_close at the expiry", func() bool { return len(j.all()) == 2 })
	c := j.all()[1]
	if c.event != "close" || c.argv[2] != "expire" || c.vars()["reason"] != "expire" || c.vars()["how"] != "sequence" {
		t.Errorf("on_close: %q %v", c.argv, c.vars())
	}
	h.expired(maps.Event{Type: "expire", Src: src1, Service: "default", Expires: exp})
	time.Sleep(100 * time.Millisecond)
	if n := len(j.all()); n != 2 {
		t.Errorf("%d jobs after the expire event, want 2", n)
	}
}

// An SPA open names its key; a grant the program lengthens meanwhile (no
// event of it) moves the timer, and ends at the new expiry.
func TestHooksSPAAndLengthened(t *testing.T) {
	h, g, j := newTestHooks(t, hookSettings())
	id := maps.GrantID{Addr: src2, Service: "web"}
	exp := time.Now().Add(200 * time.Millisecond)
	g.set(id, exp)
	h.opened(maps.Event{Type: "open", Src: src2, Service: "web", Expires: exp, KeyID: 7})
	v := j.all()[0].vars()
	if v["how"] != "spa" || v["key_id"] != "7" || v["key_name"] != "laptop" || v["family"] != "ipv6" ||
		j.all()[0].argv[1] != "--src=2001:db8::9/ipv6" {
		t.Errorf("SPA open: %q %v", j.all()[0].argv, v)
	}
	later := time.Now().Add(time.Second)
	g.set(id, later)
	time.Sleep(400 * time.Millisecond) // the first timer has fired and found the grant lengthened
	if n := len(j.all()); n != 1 {
		t.Fatalf("%d jobs before the new expiry, want 1", n)
	}
	eventually(t, 10*time.Second, "on_close at the new expiry", func() bool { return len(j.all()) == 2 })
	if !time.Now().After(later) {
		t.Errorf("on_close before the new expiry")
	}
}

// `knockgate grant`'s notice runs on_open with the operator; its revoke
// runs on_close with reason revoke; a revoke of a grant the map still has
// (made again meanwhile) ends nothing.
func TestHooksOperatorGrantAndRevoke(t *testing.T) {
	h, g, j := newTestHooks(t, hookSettings())
	id := maps.GrantID{Addr: src1, Service: "default"}
	exp := time.Now().Add(time.Hour)
	g.set(id, exp)
	h.operatorGranted(id, exp, "alice")
	if v := j.all()[0].vars(); v["how"] != "operator" || v["operator"] != "alice" {
		t.Errorf("operator's grant: %v", v)
	}
	h.revoked(src1, "")
	if n := len(j.all()); n != 1 {
		t.Fatalf("a revoke of a grant the map has: %d jobs", n)
	}
	g.del(id)
	h.revoked(src1, "")
	got := j.all()
	if len(got) != 2 || got[1].event != "close" || got[1].vars()["reason"] != "revoke" || got[1].vars()["operator"] != "alice" {
		t.Fatalf("revoke: %d jobs, %v", len(got), got[len(got)-1].vars())
	}
	h.revoked(src1, "") // nothing left
	if n := len(j.all()); n != 2 {
		t.Errorf("a second revoke: %d jobs", n)
	}
}

// A grant from the fleet runs the hooks only where fleet_hooks says so,
// naming its origin; its end runs on_close where on_open ran.
func TestHooksFleet(t *testing.T) {
	h, g, j := newTestHooks(t, hookSettings())
	def := maps.GrantID{Addr: src1, Service: "default"}
	web := maps.GrantID{Addr: src1, Service: "web"}
	exp := time.Now().Add(time.Hour)
	g.set(def, exp)
	g.set(web, exp)
	h.fleetApplied(def, exp, "host-b")
	h.fleetApplied(web, exp, "host-b")
	got := j.all()
	if len(got) != 1 || got[0].service != "web" || got[0].vars()["how"] != "fleet" || got[0].vars()["origin"] != "host-b" {
		t.Fatalf("fleet grants: %d jobs (want web's on_open only): %+v", len(got), got)
	}
	g.del(def)
	g.del(web)
	h.revoked(src1, "default")
	h.revoked(src1, "web")
	got = j.all()
	if len(got) != 2 || got[1].service != "web" || got[1].event != "close" {
		t.Errorf("fleet revokes: %d jobs (want web's on_close only)", len(got))
	}
}

// Grants there when the hooks start are taken without on_open (on_close
// runs at their end); a grant no event or notice announced runs on_open
// once two checks have seen it (how unknown); one gone before its expiry
// unannounced runs on_close (revoke).
func TestHooksAdoptAndScan(t *testing.T) {
	g := &fakeGrants{exp: map[maps.GrantID]time.Time{}}
	old := maps.GrantID{Addr: src1, Service: "default"}
	g.set(old, time.Now().Add(time.Hour))
	j := &jobs{}
	var log logBuf
	h := newGrantHooks(g, j, log.logger())
	h.configure("edge", hookSettings())
	defer h.stop()
	if n := len(j.all()); n != 0 {
		t.Fatalf("grants there at the start ran %d hooks", n)
	}
	quiet := maps.GrantID{Addr: src2, Service: "default"}
	g.set(quiet, time.Now().Add(time.Hour))
	h.scan()
	if n := len(j.all()); n != 0 {
		t.Fatalf("a grant seen by one check ran %d hooks", n)
	}
	h.scan()
	got := j.all()
	if len(got) != 1 || got[0].vars()["source"] != src2.String() || got[0].vars()["how"] != "unknown" {
		t.Fatalf("a grant seen by two checks: %d jobs %+v", len(got), got)
	}
	g.del(old)
	h.scan()
	got = j.all()
	if len(got) != 2 || got[1].event != "close" || got[1].vars()["source"] != src1.String() || got[1].vars()["reason"] != "revoke" {
		t.Fatalf("a grant gone unannounced: %d jobs", len(got))
	}
	// A reload without hooks stops following; one with them again takes
	// the grants there as they are.
	none := config.Defaults()
	h.configure("edge", &none)
	h.configure("edge", hookSettings())
	h.scan()
	h.scan()
	if n := len(j.all()); n != 2 {
		t.Errorf("after the hooks came back: %d jobs, want 2", n)
	}
}

// A reload that removes a service: its grants, gone, run the on_close the
// service had.
func TestHooksServiceRemoved(t *testing.T) {
	s := hookSettings()
	h, g, j := newTestHooks(t, s)
	web := maps.GrantID{Addr: src1, Service: "web"}
	g.set(web, time.Now().Add(time.Hour))
	h.opened(maps.Event{Type: "open", Src: src1, Service: "web", Expires: time.Now().Add(time.Hour)})
	next := config.Defaults()
	next.Hooks = map[string]*config.Hooks{"default": {OnOpen: []string{"/bin/true"}}}
	h.configure("edge", &next)
	g.del(web)
	h.scan()
	got := j.all()
	if len(got) != 2 || got[1].service != "web" || got[1].argv[0] != "/bin/close" {
		t.Errorf("a removed service's grant: %d jobs", len(got))
	}
}
