// Package service is `knockgate run`: it makes or adopts the gate a config
// file describes, keeps it on its interfaces as they come and go, applies
// the file again on SIGHUP, logs the gate's events, serves metrics and talks
// to systemd. The gate itself lives in the kernel: when the service stops,
// the gate stays pinned and enforcing.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// Options of Run.
type Options struct {
	// ConfigPath is the config file (config.DefaultPath).
	ConfigPath string
	// Confirm puts every reload in safe mode: unless `knockgate confirm`
	// runs within it, the reload is undone. 0: reloads apply for good.
	Confirm time.Duration
	// Log receives one line per event and per service message.
	Log io.Writer
	// Reload delivers SIGHUP.
	Reload <-chan os.Signal
}

// service is one running `knockgate run`.
type service struct {
	opts    Options
	cur     *config.Settings // the settings in force: the last good file
	gate    *loader.Gate
	log     atomic.Pointer[slog.Logger]
	reloads reloadStats
	coll    *collector
	metrics *metricsServer
	pending *pendingReload
	links   chan linkChange
	// clockWarned: checkClock said it could not follow, not to repeat it
	// every second.
	clockWarned bool
	fleet       *member // nil: no [fleet]
	// settleErrors counts steps of settling a safe-mode change that failed.
	settleErrors atomic.Uint64
	fwknop       fwknopState // fwknop's clients (fwknop.go)
	// runner runs the services' hooks; hooks follows the grants for them.
	runner *hookRunner
	hooks  *grantHooks
	// hintsDue is when the hint bits are next rebuilt (rebuildHints).
	hintsDue time.Time
}

// hintRebuildEvery is how often run clears the hint bits of grants gone:
// often enough that a gate whose grants churn keeps a tight filter, rarely
// enough that the walk of the grants map (under a second at 10^6 grants)
// costs nothing that matters.
const hintRebuildEvery = 10 * time.Minute

// Run serves the gate the config file describes until ctx ends (SIGTERM,
// SIGINT), then returns nil and leaves the gate pinned and enforcing. A
// config file that does not parse or check is returned as a
// *config.FileError before anything changes.
func Run(ctx context.Context, opts Options) error {
	settings, err := config.Load(opts.ConfigPath)
	if err != nil {
		return err
	}
	svc := &service{opts: opts, cur: settings, links: make(chan linkChange, 64)}
	svc.log.Store(newLogger(opts.Log, settings.LogFormat))
	// Hooks need their user: refused before the gate is touched.
	svc.runner = newHookRunner(svc.logger)
	if err := svc.runner.configure(settings); err != nil {
		return err
	}
	defer svc.runner.stop()
	var ln net.Listener
	if settings.Metrics != "" {
		if ln, err = listenMetrics(settings.Metrics); err != nil {
			return err
		}
	}
	if err := svc.start(); err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	defer svc.gate.Close()
	svc.hooks = newGrantHooks(svc.gate, svc.runner, svc.logger)
	svc.hooks.configure(svc.gate.Name, settings)
	defer svc.hooks.stop()
	if settings.Fleet.Set {
		if svc.fleet, err = joinFleet(svc.gate, settings.Fleet, func(msg string, args ...any) {
			svc.logger().Warn(msg, args...)
		}, svc.hooks); err != nil {
			return err
		}
		defer svc.fleet.close()
		defer os.Remove(FleetStatusFile(svc.gate.Name))
		svc.logger().Info("fleet joined", "name", settings.Fleet.Name, "peers", strings.Join(settings.Fleet.Peers, ","), "url", settings.Fleet.URL)
	}
	svc.reloads.record(nil)
	svc.coll = &collector{gate: svc.gate, reload: &svc.reloads, settleErrors: &svc.settleErrors, fleet: svc.fleet,
		runner: svc.runner, hooks: svc.hooks}
	if ln != nil {
		if svc.metrics, err = serveMetrics(ln, svc.coll); err != nil {
			return err
		}
	}
	defer func() { svc.metrics.close() }()

	notices, err := listenNotices(svc.gate.Name, svc.notice)
	if err != nil {
		svc.logger().Warn("grant and revoke cannot tell run what they do: the periodic check of the grants sees it later", "error", err)
	}
	defer notices.close()

	events, err := svc.gate.OpenEvents()
	if err != nil {
		return err
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		svc.logEvents(events)
	}()
	defer func() { events.Close(); <-readerDone }()
	stopFwknop, err := svc.serveFwknop()
	if err != nil {
		return err
	}
	defer stopFwknop()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go watchLinks(watchCtx, svc.links, func(err error) {
		svc.logger().Warn("link notifications failed: subscribing again", "error", err)
	})

	svc.logger().Info("serving", "gate", svc.gate.Name, "config", opts.ConfigPath, "interfaces", strings.Join(settings.Interfaces, ","))
	notify("READY=1\nSTATUS=serving gate " + svc.gate.Name)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var report eventReport
	for {
		select {
		case <-ctx.Done():
			notify("STOPPING=1")
			svc.logger().Info("stopping: the gate stays pinned and enforcing", "gate", svc.gate.Name)
			return nil
		case <-opts.Reload:
			notify(reloading())
			err := svc.reload()
			svc.reloads.record(err)
			if err != nil {
				svc.logger().Error("reload failed: keeping the configuration in force", "config", opts.ConfigPath, "error", err)
			}
			notify("READY=1")
		case c := <-svc.links:
			svc.linkChanged(c)
		case <-tick.C:
			if !svc.stillPinned() {
				svc.logger().Warn("the gate was detached: exiting", "gate", svc.gate.Name)
				notify("STOPPING=1")
				return nil
			}
			svc.checkPending()
			svc.checkClock()
			svc.rebuildHints()
			svc.fleet.report(svc.gate.Name, settings.Fleet.Name)
			svc.runner.report()
			report.tick(svc)
		}
	}
}

func (svc *service) logger() *slog.Logger { return svc.log.Load() }

// rebuildHints clears the hint bits of grants gone, every hintRebuildEvery
// (loader.Gate.RebuildHints).
func (svc *service) rebuildHints() {
	now := time.Now()
	if svc.hintsDue.IsZero() {
		svc.hintsDue = now.Add(hintRebuildEvery)
	}
	if now.Before(svc.hintsDue) {
		return
	}
	svc.hintsDue = now.Add(hintRebuildEvery)
	st, err := svc.gate.RebuildHints()
	if err != nil {
		svc.logger().Warn("rebuild the hint bits: the filter in front of the grants stays as it was", "error", err)
		return
	}
	svc.logger().Debug("hint bits rebuilt", "grants", st.Grants, "bits_before", st.BitsBefore, "bits_after", st.BitsAfter)
}

// checkClock makes the gate's SPA clock follow a change of the kernel's TAI
// offset (a leap second, a time daemon setting it): the program reads Unix
// time as CLOCK_TAI less that offset. The configuration keeps its
// generation, so knock progress stays; while a change awaits confirmation
// it waits for the decision.
func (svc *service) checkClock() {
	changed, err := svc.gate.RefreshClock()
	switch {
	case errors.Is(err, maps.ErrAwaitingConfirm):
	case err != nil:
		if !svc.clockWarned {
			svc.logger().Warn("the kernel's TAI offset changed, and the gate's SPA clock could not follow", "error", err)
			svc.clockWarned = true
		}
	case changed:
		svc.clockWarned = false
		svc.logger().Info("the kernel's TAI offset changed: the gate's SPA clock follows it")
	}
}

// start makes the gate, or adopts the one pinned under its name: the
// program is upgraded in place if this build's differs, and the file is
// applied to it. Packets are judged throughout.
func (svc *service) start() error {
	s := svc.cur
	g, upgraded, err := loader.Adopt(s.Gate)
	if errors.Is(err, loader.ErrNotAttached) {
		opts, err := s.LoaderOptions()
		if err != nil {
			return err
		}
		opts.AllowMissing = true
		if g, err = loader.Create(opts); err != nil {
			return err
		}
		svc.gate = g
		svc.logger().Info("gate made", "gate", g.Name)
		if err := svc.applyFwknop(s); err != nil {
			g.Close()
			return err
		}
		svc.reconcileAll()
		return nil
	}
	if err != nil {
		return err
	}
	svc.gate = g
	switch upgraded {
	case loader.UpgradedRelease:
		svc.logger().Info("gate upgraded from the previous release: its grants are the service default's, its keys, allow list, flows and knock progress kept",
			"gate", g.Name)
	case loader.UpgradedHintBits:
		svc.logger().Info("gate upgraded from hint counts to the hint bitmap: its grants, keys, allow list, flows and knock progress kept",
			"gate", g.Name)
	case loader.UpgradedGrantCache:
		svc.logger().Info("gate upgraded in place with a grant cache: its grants, keys, allow list, flows and knock progress kept",
			"gate", g.Name)
	}
	replaced, err := g.Upgrade()
	if err != nil {
		g.Close()
		return err
	}
	svc.logger().Info("gate adopted: grants and knock progress kept", "gate", g.Name,
		"program_replaced", replaced || upgraded != "")
	// Flows opened while an interface had no gate (gone and back while
	// the service was down) are not lost.
	if _, err := g.SeedFlows(); err != nil {
		g.Close()
		return err
	}
	if n := g.Sizes().MaxSources; n != s.MaxSources {
		svc.logger().Warn("max_sources differs from the pinned gate's: kept (detach the gate to resize it)",
			"pinned", n, "config", s.MaxSources)
	}
	if n := g.Sizes().MaxFlows; n != loader.FlowSlots(s.MaxFlows) {
		svc.logger().Warn("max_flows differs from the pinned gate's: kept (detach the gate to resize it)",
			"pinned", n, "config", s.MaxFlows)
	}
	sm, err := g.SafeMode()
	if err != nil {
		g.Close()
		return err
	}
	if sm.Pending {
		// A safe-mode change (a reload of the run before this one) is
		// still being decided: the file waits for that decision.
		svc.pending = &pendingReload{deadline: sm.Deadline, gen: sm.Change.Generation, prev: s, applyAfter: true}
		svc.logger().Warn("a change made in safe mode awaits confirmation: the config file is applied once it is confirmed or rolled back",
			"deadline", maps.BootToTime(sm.Deadline).UTC().Format(time.RFC3339))
		svc.reconcileAll()
		return nil
	}
	if _, _, err := svc.apply(s, 0); err != nil {
		g.Close()
		return err
	}
	svc.reconcileAll()
	return nil
}

// pendingReload is a reload made in safe mode: what to undo if it is not
// confirmed, and what it leaves to do once it is. (The gate's own part —
// its configuration, allow lists and services' grants — the gate settles
// itself: loader.Gate.Settle.)
type pendingReload struct {
	deadline      uint64
	gen           uint32 // the change's generation
	prev          *config.Settings
	applyAfter    bool // found at start: apply the file once it is settled
	addedIfaces   []string
	droppedIfaces []string
}

// apply makes the gate what s says: its configuration (one atomic update,
// as set does, only if it changed: a write voids knock progress), which
// carries its services and allow lists, its keys and its interfaces. With
// confirm, the change is in safe mode, and removals wait for the
// confirmation. It returns what changed in the gate's policy.
func (svc *service) apply(s *config.Settings, confirm time.Duration) (*pendingReload, []policy.Change, error) {
	g := svc.gate
	cur, err := g.Config()
	if err != nil {
		return nil, nil, err
	}
	ifaces, err := g.Interfaces()
	if err != nil {
		return nil, nil, err
	}
	var have []string
	for _, ifc := range ifaces {
		have = append(have, ifc.Name)
	}
	want := s.Config()
	p := &pendingReload{
		addedIfaces:   minus(s.Interfaces, have),
		droppedIfaces: minus(have, s.Interfaces),
	}
	changes := policy.Diff(&cur.Policy, &want)
	next := maps.FromPolicy(&want)
	safe := confirm > 0
	// The file's keys, live (removed keys stop working now), once the
	// configuration is in: a reload that fails before leaves them too. Not
	// part of the configuration, so a key change alone neither voids knock
	// progress nor waits for a confirmation.
	if cur.Same(&next) && len(p.addedIfaces)+len(p.droppedIfaces) == 0 {
		if err := g.SetSPAKeys(s.SPAKeys); err != nil {
			return nil, nil, err
		}
		return nil, changes, svc.applyFwknop(s)
	}
	if safe {
		next.ConfirmBy = maps.BootAfter(confirm)
		p.deadline = next.ConfirmBy
	}
	if safe || !cur.Same(&next) {
		installed, err := g.UpdateConfig(func(c *maps.Config) error { *c = next; return nil })
		if err != nil {
			return nil, nil, err
		}
		p.gen = installed.Generation
	}
	if err := g.SetSPAKeys(s.SPAKeys); err != nil {
		return nil, nil, err
	}
	if err := svc.applyFwknop(s); err != nil {
		return nil, nil, err
	}
	if !safe {
		for _, n := range p.droppedIfaces {
			if _, err := g.DetachInterface(n); err != nil {
				return nil, nil, err
			}
			svc.logger().Info("interface dropped", "interface", n)
		}
	}
	for _, n := range p.addedIfaces {
		if err := g.Want(n); err != nil {
			return nil, nil, err
		}
	}
	if !safe {
		return nil, changes, nil
	}
	return p, changes, nil
}

// reload applies the config file again. A file that does not parse or
// check changes nothing: the gate keeps enforcing the last good one.
func (svc *service) reload() error {
	next, err := config.Load(svc.opts.ConfigPath)
	if err != nil {
		return err
	}
	kept, err := config.ReloadCheck(svc.cur, next)
	if err != nil {
		return err
	}
	if svc.pending != nil {
		return fmt.Errorf("the last reload awaits confirmation until %s: run \"knockgate confirm %s\" first",
			maps.BootToTime(svc.pending.deadline).UTC().Format(time.RFC3339), svc.gate.Name)
	}
	if !reflect.DeepEqual(next.Fleet, svc.cur.Fleet) {
		return errors.New("the [fleet] table changed: restart run to apply it")
	}
	if next.AnyHooks() {
		u, err := lookupHookUser(next.HookUser)
		if err != nil {
			return err
		}
		if err := checkHookCaps(u); err != nil {
			return err
		}
	}
	if len(kept) > 0 {
		svc.logger().Warn("changed settings that apply when the gate is made or an interface attached: the running gate keeps them",
			"settings", strings.Join(kept, ","))
	}
	p, changes, err := svc.apply(next, svc.opts.Confirm)
	if err != nil {
		return err
	}
	if p != nil {
		p.prev = svc.cur
		svc.pending = p
	}
	prev := svc.cur
	svc.cur = next
	svc.configureHooks(next)
	if next.LogFormat != prev.LogFormat {
		svc.log.Store(newLogger(svc.opts.Log, next.LogFormat))
	}
	if next.Metrics != prev.Metrics {
		svc.metrics.close()
		svc.metrics = nil
		if next.Metrics != "" {
			ln, err := listenMetrics(next.Metrics)
			if err != nil {
				return err
			}
			if svc.metrics, err = serveMetrics(ln, svc.coll); err != nil {
				return err
			}
		}
	}
	svc.reconcileAll()
	cfg, _ := svc.gate.Config()
	msg := "reloaded"
	if p != nil {
		msg = "reloaded in safe mode: run \"knockgate confirm " + svc.gate.Name + "\" to keep it"
	}
	changed := make([]string, len(changes))
	for i, c := range changes {
		changed[i] = c.String()
	}
	d := cfg.Policy.Default()
	svc.logger().Info(msg, "gate", svc.gate.Name, "generation", cfg.Generation,
		"sequence", policy.FormatPorts(d.Sequence), "protect", policy.FormatProtect(d.Protect, d.ProtectAll),
		"services", config.ServiceNames(&cfg.Policy), "changed", strings.Join(changed, "; "))
	return nil
}

// checkPending settles a safe-mode reload: confirmed, its removals are
// made; past its deadline unconfirmed, it is undone (the program has already
// gone back to the configuration before it). The gate decides which under
// its lock (loader.Gate.Settle), so a `set` made meanwhile from another
// process is neither undone nor taken for a confirmation. A settlement that
// fails is logged and counted, and tried again at the next tick.
func (svc *service) checkPending() {
	p := svc.pending
	if p == nil {
		return
	}
	g := svc.gate
	outcome, err := g.Settle(p.gen)
	if err != nil {
		svc.settleFailed("decide the safe-mode change", err)
		return
	}
	if outcome == maps.SettlePending {
		return
	}
	svc.pending = nil
	rolledBack := outcome == maps.SettleRolledBack
	if p.applyAfter {
		if _, _, err := svc.apply(svc.cur, 0); err != nil {
			svc.settleFailed("apply the config file", err)
		}
		svc.reconcileAll()
		svc.logger().Info("safe-mode change settled: config file applied", "gate", g.Name, "rolled_back", rolledBack)
		return
	}
	// The interfaces the change added go if it was undone; those it would
	// have removed go if it stays.
	ifaces := p.droppedIfaces
	if rolledBack {
		ifaces = p.addedIfaces
	}
	for _, n := range ifaces {
		if _, err := g.DetachInterface(n); err != nil {
			svc.settleFailed("detach interface "+n, err)
		}
	}
	if !rolledBack {
		svc.logger().Info("reload confirmed", "gate", g.Name)
		return
	}
	svc.cur = p.prev
	svc.configureHooks(p.prev)
	svc.reconcileAll()
	svc.logger().Warn("reload not confirmed in time: rolled back", "gate", g.Name,
		"deadline", maps.BootToTime(p.deadline).UTC().Format(time.RFC3339))
}

// settleFailed logs and counts a step of settling a safe-mode change that
// failed.
func (svc *service) settleFailed(step string, err error) {
	svc.settleErrors.Add(1)
	svc.logger().Error("settling a safe-mode change: "+step+" failed", "gate", svc.gate.Name, "error", err)
}

// reconcileAll attaches the gate to every interface it should be on that
// is there.
func (svc *service) reconcileAll() {
	for _, n := range svc.cur.Interfaces {
		svc.reconcile(n)
	}
}

// reconcile attaches the gate to iface if it should be on it, the
// interface exists, and the gate is not on it yet (or its link went with an
// earlier interface of that name).
func (svc *service) reconcile(iface string) {
	if !slices.Contains(svc.cur.Interfaces, iface) {
		return
	}
	if _, err := loader.Interface(iface); err != nil {
		return // waiting, or missing: status says which
	}
	if svc.pending != nil && slices.Contains(svc.pending.droppedIfaces, iface) {
		return
	}
	mode, err := svc.gate.AttachInterface(iface, svc.cur.Mode)
	switch {
	case errors.Is(err, loader.ErrAttached):
	case err != nil:
		svc.logger().Error("attach failed", "interface", iface, "error", err)
	default:
		svc.logger().Info("attached", "interface", iface, "mode", string(mode))
	}
}

func (svc *service) linkChanged(c linkChange) {
	if !slices.Contains(svc.cur.Interfaces, c.name) {
		return
	}
	if c.gone {
		svc.logger().Warn("interface gone: nothing is enforced there until it is back", "interface", c.name)
		return
	}
	svc.reconcile(c.name)
}

// stillPinned reports whether the gate is still the one pinned under its
// name (`knockgate detach` removes it; run then has nothing to serve).
func (svc *service) stillPinned() bool {
	a, err1 := os.Stat(svc.gate.Dir)
	b, err2 := os.Stat(loader.GateDir(svc.gate.Name))
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// logEvents logs every event the gate sends until the reader is closed.
func (svc *service) logEvents(rd *maps.EventReader) {
	for {
		ev, err := rd.Read()
		if errors.Is(err, maps.ErrClosed) {
			return
		}
		if err != nil {
			svc.logger().Error("read events", "error", err)
			return
		}
		logEvent(svc.logger(), ev)
		switch ev.Type {
		case "open":
			svc.hooks.opened(ev)
			svc.fleet.opened(ev)
		case "expire":
			svc.hooks.expired(ev)
		}
	}
}

// configureHooks makes the hooks those of s (a reload's, or the settings a
// rollback went back to).
func (svc *service) configureHooks(s *config.Settings) {
	if err := svc.runner.configure(s); err != nil {
		// Checked before the reload was applied; a user deleted since
		// keeps the hooks' settings as they were.
		svc.logger().Error("hooks: keeping their settings as they were", "error", err)
	}
	svc.hooks.configure(svc.gate.Name, s)
}

// notice takes what `knockgate grant` or `knockgate revoke` tells run of a
// change it made: the hooks learn who made it, and the fleet writes it at
// once.
func (svc *service) notice(n Notice) {
	id, exp, err := n.grantOf()
	if err != nil {
		return
	}
	switch n.Op {
	case "grant":
		if n.Service == "" || exp.IsZero() {
			return
		}
		svc.hooks.operatorGranted(id, exp, n.Operator)
		svc.fleet.granted(id, exp)
	case "revoke":
		svc.hooks.revoked(id.Addr, n.Service)
		svc.fleet.revoked()
	}
}

// eventReport logs, at most once a minute, how many events the program held
// back or lost: a flood of spoofed knocks shows up as one line, not as a
// line per knock.
type eventReport struct {
	last       time.Time
	suppressed uint64
	lost       uint64
}

func (r *eventReport) tick(svc *service) {
	if time.Since(r.last) < time.Minute {
		return
	}
	c, err := svc.gate.Counters()
	if err != nil {
		return
	}
	s, l := c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED), c.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST)
	if !r.last.IsZero() && (s > r.suppressed || l > r.lost) {
		svc.logger().Warn("events not logged: knock and reset events over the budget, or the ring buffer full",
			"suppressed", s-r.suppressed, "lost", l-r.lost, "since", r.last.UTC().Format(time.RFC3339))
	}
	r.last, r.suppressed, r.lost = time.Now(), s, l
}

// minus is what a holds that b does not.
func minus[T comparable](a, b []T) []T {
	var out []T
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
