package service

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
)

// collector reads the gate's maps at each scrape (the per-CPU counters
// summed, sources and interfaces counted), so the program pays nothing for
// metrics. Reload figures come from the service.
type collector struct {
	gate   *loader.Gate
	reload *reloadStats
	// settleErrors: steps of settling a safe-mode change that failed.
	settleErrors *atomic.Uint64
	fleet        *member // nil: no fleet
	runner       *hookRunner
	hooks        *grantHooks
}

// reloadStats are the service's reload outcomes, for metrics.
type reloadStats struct {
	mu               sync.Mutex
	success, failure uint64
	lastSuccess      time.Time
	lastFailed       bool
}

func (r *reloadStats) record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.failure++
		r.lastFailed = true
		return
	}
	r.success++
	r.lastSuccess = time.Now()
	r.lastFailed = false
}

// Metric names: Prometheus style, the unit in the name, _total on counters.
var (
	descPackets = prometheus.NewDesc("knockgate_packets_total",
		"Packets the gate judged, by verdict.", []string{"verdict"}, nil)
	descIfacePackets = prometheus.NewDesc("knockgate_interface_packets_total",
		"Packets the gate judged, by the interface they arrived on and verdict.", []string{"interface", "verdict"}, nil)
	descKnocks = prometheus.NewDesc("knockgate_knocks_total",
		"Knock packets, by what they did to the source's progress.", []string{"outcome"}, nil)
	descGrants = prometheus.NewDesc("knockgate_grants_total",
		"Knock sequences completed (sources granted).", nil, nil)
	descExpired = prometheus.NewDesc("knockgate_grants_expired_total",
		"Grants found expired.", nil, nil)
	descGrantFailed = prometheus.NewDesc("knockgate_grant_failures_total",
		"Completed sequences the grants map refused.", nil, nil)
	descEventsLost = prometheus.NewDesc("knockgate_events_lost_total",
		"Events dropped because the ring buffer was full.", nil, nil)
	descEventsSuppressed = prometheus.NewDesc("knockgate_events_suppressed_total",
		"Knock and reset events held back by the per-CPU event budget.", nil, nil)
	descFlows = prometheus.NewDesc("knockgate_flows_total",
		"Flows of the host's: learned on egress, ended by the host's RST, not recorded for want of room.", []string{"event"}, nil)
	descSPA = prometheus.NewDesc("knockgate_spa_packets_total",
		"Single-packet authorization datagrams, by outcome (accepted, or the first check failed).", []string{"outcome"}, nil)
	descFwknop = prometheus.NewDesc("knockgate_fwknop_packets_total",
		"fwknop clients' datagrams, by outcome: the program's (verified and handed to run, or refused), then run's (accepted, or why refused).", []string{"outcome"}, nil)
	descSources = prometheus.NewDesc("knockgate_sources",
		"Sources tracked now, by state.", []string{"state"}, nil)
	descIfaces = prometheus.NewDesc("knockgate_interfaces",
		"Interfaces of the gate, by state.", []string{"state"}, nil)
	descGeneration = prometheus.NewDesc("knockgate_config_generation",
		"Generation of the configuration in force.", nil, nil)
	descPending = prometheus.NewDesc("knockgate_safe_mode_pending",
		"1 while a change made with --confirm awaits confirmation.", nil, nil)
	descSettleErrors = prometheus.NewDesc("knockgate_safe_mode_settle_errors_total",
		"Steps of settling a safe-mode reload (deciding it, removing what it added or dropped) that failed; each is logged.", nil, nil)
	descReloads = prometheus.NewDesc("knockgate_reloads_total",
		"Reloads of the config file, by result.", []string{"result"}, nil)
	descLastReload = prometheus.NewDesc("knockgate_config_last_reload_success_timestamp_seconds",
		"When the config file was last applied successfully (at start or on reload).", nil, nil)
	descLastReloadOK = prometheus.NewDesc("knockgate_config_last_reload_successful",
		"1 if the last reload of the config file succeeded.", nil, nil)
	descFleetPeers = prometheus.NewDesc("knockgate_fleet_peers",
		"Other servers of the fleet this host's server has routes to (1: connected, with url).", nil, nil)
	descFleetPublished = prometheus.NewDesc("knockgate_fleet_published_total",
		"Grants, revokes and SPA timestamps this host wrote to the fleet's bucket.", nil, nil)
	descFleetReceived = prometheus.NewDesc("knockgate_fleet_received_total",
		"Updates from other hosts applied here.", nil, nil)
	descFleetRestarts = prometheus.NewDesc("knockgate_fleet_watch_restarts_total",
		"Watches of the bucket made again: they stopped keeping up with it (a host lost or back, a leader change).", nil, nil)
	descFleetPending = prometheus.NewDesc("knockgate_fleet_pending",
		"Local changes not yet written to the bucket (cut off from the fleet).", nil, nil)
	descFleetLastSync = prometheus.NewDesc("knockgate_fleet_last_sync_timestamp_seconds",
		"When the watch of the bucket was last current.", nil, nil)
	descServiceOpen = prometheus.NewDesc("knockgate_service_grants_open",
		"Grants live now, by service.", []string{"service"}, nil)
	descServiceGrants = prometheus.NewDesc("knockgate_service_grants_total",
		"Grants made by the program (sequences completed, SPA packets), by service.", []string{"service"}, nil)
	descServiceExpired = prometheus.NewDesc("knockgate_service_grants_expired_total",
		"Grants found expired, by service.", []string{"service"}, nil)
	descHookRuns = prometheus.NewDesc("knockgate_hook_runs_total",
		"Hook commands started, by service and event (open, close).", []string{"service", "event"}, nil)
	descHookFailures = prometheus.NewDesc("knockgate_hook_failures_total",
		"Hook commands that failed to start or exited with an error, by service and event.", []string{"service", "event"}, nil)
	descHookTimeouts = prometheus.NewDesc("knockgate_hook_timeouts_total",
		"Hook commands killed at hook_timeout, by service and event.", []string{"service", "event"}, nil)
	descHookDropped = prometheus.NewDesc("knockgate_hook_dropped_total",
		"Hook commands dropped, by service and event: hook_max_running ran and hook_max_waiting waited already (or run was stopping).", []string{"service", "event"}, nil)
	descHooksRunning = prometheus.NewDesc("knockgate_hooks_running",
		"Hook commands running now.", nil, nil)
	descHooksWaiting = prometheus.NewDesc("knockgate_hooks_waiting",
		"Hook commands waiting for their turn now.", nil, nil)
	descScrapeErrors = prometheus.NewDesc("knockgate_scrape_errors",
		"Maps that could not be read during this scrape.", nil, nil)
)

// descs is every metric the collector makes.
var descs = []*prometheus.Desc{descPackets, descIfacePackets, descKnocks, descGrants, descExpired,
	descGrantFailed, descEventsLost, descEventsSuppressed, descFlows, descSPA, descFwknop, descSources, descIfaces, descGeneration,
	descPending, descSettleErrors, descReloads, descLastReload, descLastReloadOK, descScrapeErrors,
	descServiceOpen, descServiceGrants, descServiceExpired,
	descFleetPeers, descFleetPublished, descFleetReceived, descFleetRestarts, descFleetPending, descFleetLastSync,
	descHookRuns, descHookFailures, descHookTimeouts, descHookDropped, descHooksRunning, descHooksWaiting}

// counterLabel is a counter and the label value its metric carries.
type counterLabel struct {
	c     bpf.KnockgateCounter
	label string
}

// The counters of the labelled metrics: those of CounterNames with the
// metric's prefix, labelled with the rest of their names, so a counter the C
// enum gains (CounterNames must name it) is in its metric without a word
// here.
var (
	knockLabels  = counterLabels("knock_")
	flowLabels   = counterLabels("flows_")
	spaLabels    = counterLabels("spa_")
	fwknopLabels = counterLabels("fwknop_")
)

// counterLabels are the counters (enum counter) whose names start with
// prefix, in the enum's order, each labelled with its name without prefix.
func counterLabels(prefix string) []counterLabel {
	var out []counterLabel
	for k := range int(bpf.KnockgateCounterCOUNTER_MAX) {
		if label, ok := strings.CutPrefix(maps.CounterNames[maps.Verdicts+k], prefix); ok {
			out = append(out, counterLabel{bpf.KnockgateCounter(k), label})
		}
	}
	return out
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var errs float64
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	if cs, err := c.gate.Counters(); err != nil {
		errs++
	} else {
		for v := range maps.Verdicts {
			counter(descPackets, cs[v], maps.CounterNames[v])
		}
		for _, l := range knockLabels {
			counter(descKnocks, cs.Counter(l.c), l.label)
		}
		counter(descGrants, cs.Counter(bpf.KnockgateCounterCOUNTER_GRANTED))
		counter(descExpired, cs.Counter(bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED))
		counter(descGrantFailed, cs.Counter(bpf.KnockgateCounterCOUNTER_GRANT_FAILED))
		counter(descEventsLost, cs.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_LOST))
		counter(descEventsSuppressed, cs.Counter(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED))
		for _, l := range flowLabels {
			counter(descFlows, cs.Counter(l.c), l.label)
		}
		for _, l := range spaLabels {
			counter(descSPA, cs.Counter(l.c), l.label)
		}
		for _, l := range fwknopLabels {
			counter(descFwknop, cs.Counter(l.c), l.label)
		}
	}
	states := map[loader.IfaceState]float64{loader.Attached: 0, loader.Missing: 0, loader.Waiting: 0}
	if ifaces, err := c.gate.Interfaces(); err != nil {
		errs++
	} else if slots, err := c.gate.Verdicts(); err != nil {
		errs++
	} else {
		for _, ifc := range ifaces {
			states[ifc.State]++
			if ifc.State != loader.Attached {
				continue
			}
			for v, n := range slots[maps.IfaceSlot(ifc.Ifindex)] {
				counter(descIfacePackets, n, ifc.Name, maps.CounterNames[v])
			}
		}
	}
	for s, n := range states {
		gauge(descIfaces, n, string(s))
	}
	cfg, cfgErr := c.gate.Config()
	if cfgErr != nil {
		errs++
	} else {
		gauge(descGeneration, float64(cfg.Generation))
	}
	if srcs, err := c.gate.Sources(); err != nil {
		errs++
	} else {
		n := map[string]float64{"knocking": 0, "open": 0}
		for _, s := range srcs {
			n[s.State]++
		}
		for s, v := range n {
			gauge(descSources, v, s)
		}
		open := maps.GrantsOpen(srcs)
		for i := range cfg.Policy.Services {
			name := cfg.Policy.Services[i].Name
			if _, ok := open[name]; !ok {
				open[name] = 0 // a series for every service, with none open too
			}
		}
		for s, v := range open {
			gauge(descServiceOpen, float64(v), s)
		}
	}
	if sc, err := c.gate.ServiceCounters(); err != nil {
		errs++
	} else {
		for name, n := range sc {
			counter(descServiceGrants, n.Granted, name)
			counter(descServiceExpired, n.Expired, name)
		}
	}
	if sm, err := c.gate.SafeMode(); err != nil {
		errs++
	} else {
		gauge(descPending, b2f(sm.Pending))
	}
	counter(descSettleErrors, c.settleErrors.Load())

	c.reload.mu.Lock()
	counter(descReloads, c.reload.success, "success")
	counter(descReloads, c.reload.failure, "failure")
	gauge(descLastReload, float64(c.reload.lastSuccess.UnixNano())/1e9)
	gauge(descLastReloadOK, b2f(!c.reload.lastFailed))
	c.reload.mu.Unlock()
	if c.fleet != nil {
		st := c.fleet.fl.Stats()
		gauge(descFleetPeers, float64(st.Peers))
		counter(descFleetPublished, st.Published)
		counter(descFleetReceived, st.Received)
		counter(descFleetRestarts, st.WatchRestarts)
		gauge(descFleetPending, float64(st.Pending))
		if !st.LastSync.IsZero() {
			gauge(descFleetLastSync, float64(st.LastSync.UnixNano())/1e9)
		}
	}
	if c.runner != nil {
		counts, running, waiting := c.runner.stats()
		// A series for each service with a hook, and event, 0 included.
		for _, name := range c.hooks.servicesWithHooks() {
			for _, ev := range []string{"open", "close"} {
				if _, ok := counts[hookLabel{name, ev}]; !ok {
					counts[hookLabel{name, ev}] = hookCounts{}
				}
			}
		}
		for _, l := range sortedLabels(counts) {
			n := counts[l]
			counter(descHookRuns, n.runs, l.service, l.event)
			counter(descHookFailures, n.failures, l.service, l.event)
			counter(descHookTimeouts, n.timeouts, l.service, l.event)
			counter(descHookDropped, n.dropped, l.service, l.event)
		}
		gauge(descHooksRunning, float64(running))
		gauge(descHooksWaiting, float64(waiting))
	}
	gauge(descScrapeErrors, errs)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsServer serves the collector's registry at /metrics on addr.
type metricsServer struct {
	srv  *http.Server
	done chan error
}

// listenMetrics binds addr, so that an address that cannot be served fails
// the start (before the gate is touched) or the reload that asked for it.
func listenMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}

// serveMetrics serves c's metrics at /metrics on ln.
func serveMetrics(ln net.Listener, c *collector) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "knockgate: metrics at /metrics")
	})
	m := &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() { m.done <- m.srv.Serve(ln) }()
	return m, nil
}

func (m *metricsServer) close() {
	if m == nil {
		return
	}
	m.srv.Close()
	<-m.done
}
