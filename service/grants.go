package service

import (
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/maps"
)

// grantHooks follows the gate's grants for the hooks: when each is made,
// how, and when it ends, so that a service's on_open runs once when a
// grant of it is made and its on_close once when that grant ends. How run
// learns of each:
//
//   - a knock sequence completed or an SPA packet accepted: the program's
//     open event, as the event reader reads it (how: sequence, or spa with
//     the key's id and name);
//   - `knockgate grant` and `knockgate revoke`: a notice the command sends
//     to run's socket (notice.go) after changing the map (how: operator,
//     with who ran it);
//   - another host of the fleet: the member reports each grant it applies
//     and each revoke (how: fleet, with the host it came from); these run
//     the hooks only where the service says fleet_hooks = true;
//   - an expiry: a timer per grant, set to its expiry when it is made and
//     moved when it is lengthened, which looks at the map when it fires
//     (the program's expire event comes only when a packet of the source
//     finds it expired, which may be late or never); the expire event, when
//     it comes first, ends it too.
//
// A check of the whole grant map every scanEvery is the safety net for
// what none of these shows: a grant made while the ring buffer was full,
// or by a command that could not reach run (how: unknown), a revoke or a
// service removed by `set` (the grant gone before its expiry: revoke), an
// expiry a suspended machine slept through. A grant found there counts
// once it has been seen by two checks in a row, so that an open event
// still on its way is not taken for an unknown grant.
//
// A grant lengthened (a new SPA packet, `grant` again, the fleet's later
// expiry) is the same grant: its timer moves, no hook runs. The grants
// there are when run starts (or when a reload gives the first hook) are
// taken as they are: on_open does not run for them (a run before this one
// did), on_close does when they end.
type grantHooks struct {
	gate   grantReader
	runner interface{ submit(*hookJob) } // a *hookRunner
	log    func() *slog.Logger

	mu       sync.Mutex
	conf     hookConf
	active   bool // some service has a hook: grants are followed
	adopted  bool // the grants there were when it became active are taken
	grants   map[maps.GrantID]*grantState
	unknown  map[maps.GrantID]bool // live in the map, not followed: seen by the last check
	stopScan chan struct{}
	scanning sync.WaitGroup
}

// grantReader is what grantHooks reads of the gate (a *loader.Gate).
type grantReader interface {
	LookupGrant(addr netip.Addr, service string) (bpf.KnockgateGrant, bool, error)
	GrantExpiries() (map[maps.GrantID]time.Time, []string, error)
}

// hookConf is what the hooks need of the settings in force.
type hookConf struct {
	gate     string
	hooks    map[string]*config.Hooks // by service, those with a hook
	services map[string]bool          // the services the settings have
	keyNames map[uint32]string        // SPA keys' names by id
}

// How a grant was made, as KNOCKGATE_HOW says it.
const (
	howSequence = "sequence"
	howSPA      = "spa"
	howOperator = "operator"
	howFleet    = "fleet"
	howUnknown  = "unknown"
)

// Why a grant ended, as KNOCKGATE_REASON says it.
const (
	reasonExpire = "expire"
	reasonRevoke = "revoke"
)

// scanEvery is how often the whole grant map is checked.
const scanEvery = 2 * time.Second

// grantState is one grant followed.
type grantState struct {
	exp      time.Time
	how      string
	keyID    uint32
	keyName  string
	operator string
	origin   string
	// hooks are the service's when the grant was made: on_close runs them
	// if the service is gone by then. ran: its on_open ran (or would have,
	// had the service one), so its on_close runs.
	hooks *config.Hooks
	ran   bool
	// updated: when this state was last set from what made or changed the
	// grant; a check of the map read before says nothing about it.
	updated time.Time
	timer   *time.Timer
	gen     uint64 // the timer's: a stale firing is ignored
	// replace: what made it sets its expiry, earlier or later (`knockgate
	// grant` replaces a grant), where the others only lengthen it.
	replace bool
}

func newGrantHooks(gate grantReader, runner interface{ submit(*hookJob) }, log func() *slog.Logger) *grantHooks {
	return &grantHooks{gate: gate, runner: runner, log: log, grants: map[maps.GrantID]*grantState{}, unknown: map[maps.GrantID]bool{}}
}

// configure takes the settings in force (at start and at each reload):
// the hooks and the keys' names. The first hook makes the grants followed,
// from now on; no hook left stops following them.
func (h *grantHooks) configure(gate string, s *config.Settings) {
	c := hookConf{gate: gate, hooks: map[string]*config.Hooks{}, services: map[string]bool{}, keyNames: map[uint32]string{}}
	p := s.Config()
	for _, svc := range p.Services {
		c.services[svc.Name] = true
	}
	for name, hk := range s.Hooks {
		if hk.Any() {
			cp := *hk
			c.hooks[name] = &cp
		}
	}
	for _, k := range s.SPAKeys {
		c.keyNames[k.ID] = k.Name
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conf = c
	switch active := len(c.hooks) > 0; {
	case active && !h.active:
		h.active, h.adopted = true, false
		h.adoptLocked()
		h.stopScan = make(chan struct{})
		h.scanning.Add(1)
		go h.scanLoop(h.stopScan)
	case !active && h.active:
		h.deactivateLocked()
	}
}

// servicesWithHooks names the services of the settings in force that
// have a hook.
func (h *grantHooks) servicesWithHooks() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for name := range h.conf.hooks {
		out = append(out, name)
	}
	return out
}

// deactivateLocked stops following the grants. h.mu is held.
func (h *grantHooks) deactivateLocked() {
	h.active = false
	for _, st := range h.grants {
		st.timer.Stop()
	}
	h.grants = map[maps.GrantID]*grantState{}
	h.unknown = map[maps.GrantID]bool{}
	close(h.stopScan)
}

// stop stops following the grants (run is stopping).
func (h *grantHooks) stop() {
	h.mu.Lock()
	if h.active {
		h.deactivateLocked()
	}
	h.mu.Unlock()
	h.scanning.Wait()
}

// adoptLocked takes the grants the map has as they are, without running
// on_open. A map that cannot be read is tried again at the next check.
// h.mu is held (the read is short: the map is read once, at start).
func (h *grantHooks) adoptLocked() {
	exps, _, err := h.gate.GrantExpiries()
	if err != nil {
		h.log().Warn("hooks: the grants could not be read: tried again", "error", err)
		return
	}
	now := time.Now()
	for id, exp := range exps {
		if exp.After(now) && h.grants[id] == nil {
			st := &grantState{exp: exp, how: howUnknown, ran: true, hooks: h.conf.hooks[id.Service], updated: now}
			h.grants[id] = st
			h.arm(id, st)
		}
	}
	h.adopted = true
}

func (h *grantHooks) scanLoop(stop chan struct{}) {
	defer h.scanning.Done()
	t := time.NewTicker(scanEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			h.scan()
		}
	}
}

// opened is an open event: a grant made by a sequence or an SPA packet
// (or lengthened by one).
func (h *grantHooks) opened(ev maps.Event) {
	st := &grantState{exp: ev.Expires, how: howSequence}
	if ev.KeyID != 0 {
		st.how, st.keyID = howSPA, ev.KeyID
	}
	h.made(maps.GrantID{Addr: ev.Src.Unmap(), Service: ev.Service}, st)
}

// expired is an expire event: a packet found the grant expired.
func (h *grantHooks) expired(ev maps.Event) {
	id := maps.GrantID{Addr: ev.Src.Unmap(), Service: ev.Service}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.grants[id]
	if st == nil || st.exp.After(time.Now().Add(time.Second)) {
		return // not followed, or lengthened since
	}
	h.end(id, st, reasonExpire)
}

// operatorGranted is `knockgate grant`'s notice: id granted until exp (a
// grant it had is replaced).
func (h *grantHooks) operatorGranted(id maps.GrantID, exp time.Time, operator string) {
	h.made(id, &grantState{exp: exp, how: howOperator, operator: operator, replace: true})
}

// fleetApplied is the fleet's report of a grant it applied here: another
// host's, or one the bucket had.
func (h *grantHooks) fleetApplied(id maps.GrantID, exp time.Time, origin string) {
	h.made(id, &grantState{exp: exp, how: howFleet, origin: origin})
}

// made follows a grant made, or moves the expiry of one followed; a new
// one runs on_open.
func (h *grantHooks) made(id maps.GrantID, st *grantState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.active {
		return
	}
	now := time.Now()
	delete(h.unknown, id)
	if cur := h.grants[id]; cur != nil {
		if st.exp.After(cur.exp) || (st.replace && !st.exp.Equal(cur.exp)) {
			cur.exp = st.exp
			h.arm(id, cur)
		}
		cur.updated = now
		return
	}
	if !st.exp.After(now) {
		return
	}
	st.replace = false
	st.keyName = h.conf.keyNames[st.keyID]
	h.follow(id, st, now)
}

// revoked is a revoke: of the service named, or of every service when
// service is "" (`knockgate revoke ADDR`). A grant the map still has (made
// again meanwhile) is not ended.
func (h *grantHooks) revoked(addr netip.Addr, service string) {
	addr = addr.Unmap()
	h.mu.Lock()
	var ids []maps.GrantID
	for id := range h.grants {
		if id.Addr == addr && (service == "" || id.Service == service) {
			ids = append(ids, id)
		}
	}
	h.mu.Unlock()
	for _, id := range ids {
		gr, ok, err := h.gate.LookupGrant(id.Addr, id.Service)
		live := err == nil && ok && maps.BootToTime(gr.ExpiresNs).After(time.Now())
		h.mu.Lock()
		if st := h.grants[id]; st != nil && !live {
			h.end(id, st, reasonRevoke)
		}
		h.mu.Unlock()
	}
}

// arm sets st's timer to its expiry. h.mu is held.
func (h *grantHooks) arm(id maps.GrantID, st *grantState) {
	if st.timer != nil {
		st.timer.Stop()
	}
	st.gen++
	gen := st.gen
	st.timer = time.AfterFunc(time.Until(st.exp), func() { h.due(id, gen) })
}

// due is a grant's timer: at its expiry, the map says whether it ended or
// was lengthened meanwhile (by a packet of the program's own, which has
// no event of it).
func (h *grantHooks) due(id maps.GrantID, gen uint64) {
	gr, ok, err := h.gate.LookupGrant(id.Addr, id.Service)
	if err != nil && !errors.Is(err, maps.ErrNoService) {
		h.log().Warn("hooks: read a grant", "src", id.Addr.String(), "service", id.Service, "error", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.grants[id]
	if st == nil || st.gen != gen {
		return
	}
	if err == nil && ok {
		if exp := maps.BootToTime(gr.ExpiresNs); exp.After(time.Now()) {
			st.exp = exp
			h.arm(id, st)
			return
		}
	}
	h.end(id, st, reasonExpire)
}

// scan checks the whole map: a live grant not followed, seen by the last
// check too, is a grant made unannounced; one followed that the map no
// longer has before its expiry was revoked; one past its expiry ended.
func (h *grantHooks) scan() {
	read := time.Now()
	exps, _, err := h.gate.GrantExpiries()
	if err != nil {
		h.log().Warn("hooks: check the grants", "error", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.active {
		return
	}
	if !h.adopted {
		h.adoptLocked()
		return
	}
	now := time.Now()
	unknown := map[maps.GrantID]bool{}
	for id, exp := range exps {
		if !exp.After(now) {
			continue
		}
		st := h.grants[id]
		switch {
		case st == nil && h.unknown[id]:
			h.follow(id, &grantState{exp: exp, how: howUnknown}, now)
		case st == nil:
			unknown[id] = true
		case st.updated.Before(read) && absDuration(exp.Sub(st.exp)) > 100*time.Millisecond:
			// Lengthened or shortened by what told run nothing.
			st.exp = exp
			h.arm(id, st)
		}
	}
	h.unknown = unknown
	for id, st := range h.grants {
		if !st.updated.Before(read) {
			continue // made or changed since the map was read
		}
		exp, here := exps[id]
		switch {
		case here && exp.After(now):
		case !st.exp.After(now):
			h.end(id, st, reasonExpire) // its timer is late (a suspend)
		case !here || st.exp.Sub(exp) > time.Second:
			h.end(id, st, reasonRevoke)
		}
	}
}

// follow follows a grant new to run, and runs on_open for it (for the
// fleet's, only with fleet_hooks). h.mu is held.
func (h *grantHooks) follow(id maps.GrantID, st *grantState, now time.Time) {
	st.hooks = h.conf.hooks[id.Service]
	st.ran = st.how != howFleet || (st.hooks != nil && st.hooks.Fleet)
	st.updated = now
	h.grants[id] = st
	h.arm(id, st)
	if st.ran && st.hooks != nil && len(st.hooks.OnOpen) > 0 {
		h.submit(id, st, "open", "", st.hooks.OnOpen)
	}
}

// end stops following a grant that ended, and runs on_close: the
// service's in force, or (the service gone) those it had when the grant
// was made. h.mu is held.
func (h *grantHooks) end(id maps.GrantID, st *grantState, reason string) {
	st.timer.Stop()
	delete(h.grants, id)
	if !st.ran {
		return
	}
	hooks := h.conf.hooks[id.Service]
	if !h.conf.services[id.Service] {
		hooks = st.hooks
	}
	if hooks != nil && len(hooks.OnClose) > 0 {
		h.submit(id, st, "close", reason, hooks.OnClose)
	}
}

// submit hands the runner the command argv for a grant's event. h.mu is
// held.
func (h *grantHooks) submit(id maps.GrantID, st *grantState, event, reason string, argv []string) {
	vars := h.vars(id, st, event, reason)
	env := make([]string, 0, len(config.HookVars))
	for _, name := range config.HookVars {
		env = append(env, config.HookEnv(name)+"="+vars[name])
	}
	args := make([]string, len(argv))
	args[0] = argv[0]
	for i, a := range argv[1:] {
		// Checked when the file was read: it expands.
		args[i+1], _ = config.Expand(a, func(name string) string { return vars[name] })
	}
	h.runner.submit(&hookJob{service: id.Service, event: event, source: id.Addr.String(), argv: args, env: env})
}

// vars are the values of config.HookVars for a grant's event.
func (h *grantHooks) vars(id maps.GrantID, st *grantState, event, reason string) map[string]string {
	family := "ipv6"
	if id.Addr.Is4() {
		family = "ipv4"
	}
	v := map[string]string{
		"event":        event,
		"gate":         h.conf.gate,
		"service":      id.Service,
		"source":       id.Addr.String(),
		"family":       family,
		"how":          st.how,
		"key_name":     st.keyName,
		"operator":     st.operator,
		"origin":       st.origin,
		"expires":      st.exp.UTC().Format(time.RFC3339),
		"expires_unix": strconv.FormatInt(st.exp.Unix(), 10),
		"reason":       reason,
	}
	if st.keyID != 0 {
		v["key_id"] = strconv.FormatUint(uint64(st.keyID), 10)
	}
	if event == "open" {
		v["open_seconds"] = strconv.FormatInt(int64(math.Ceil(max(0, time.Until(st.exp).Seconds()))), 10)
	}
	return v
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
