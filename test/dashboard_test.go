package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// dashboardExprs is every PromQL expression of the Grafana dashboard: the
// panels' targets and the template variables' queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "contrib", "grafana", "knockgate.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" && strings.Contains(s, "knockgate_")) {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(d)
	return exprs
}

// series is a scrape's samples: metric name to label sets.
func parseScrape(scrape string) map[string][]map[string]string {
	out := map[string][]map[string]string{}
	labelRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	for _, line := range strings.Split(scrape, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		labels := map[string]string{}
		if rest != "" {
			body, _, _ := strings.Cut(rest, "}")
			for _, m := range labelRE.FindAllStringSubmatch(body, -1) {
				labels[m[1]] = m[2]
			}
		}
		out[name] = append(out[name], labels)
	}
	return out
}

// Labels Prometheus adds when it scrapes, which no exposition carries.
var targetLabels = []string{"instance", "job"}

// The dashboard queries only what `run` exports: every metric name, every
// label it matches on (with a value some series has, for an exact match),
// and every label it aggregates by, checked against a real scrape of a
// run with a fleet (of one), so the fleet's series are there too. And it
// covers what an operator watches: verdicts, knocks, grants open by
// service, SPA outcomes, flows, lost events, the fleet.
func TestDashboardQueriesWhatRunExports(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	t.Parallel()
	exprs := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("only %d queries found in the dashboard", len(exprs))
	}

	g := newGate(t)
	if _, err := g.srv.Run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	fleet := fmt.Sprintf("[fleet]\nname = %q\nlisten = \"%s:6222\"\npeers = [\"%s:6222\"]\nstate_dir = %q\n",
		"kgd"+token, srv4, srv4, t.TempDir())
	g.startRun(runConfig([]string{g.iface}, `metrics = "127.0.0.1:9746"`, fleet))
	g.knockTCP(cli4, srv4, 9000, 8000)
	g.expect(open, cli4, srv4)
	// The fleet's last sync appears once its watch is current.
	var m string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		m = g.scrape("127.0.0.1:9746")
		if strings.Contains(m, "\nknockgate_fleet_last_sync_timestamp_seconds ") || time.Now().After(deadline) {
			break
		}
	}
	scraped := parseScrape(m)

	metricRE := regexp.MustCompile(`\b(knockgate_[a-z0-9_]+)\b(\{[^}]*\})?`)
	matcherRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	byRE := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	used := map[string]bool{}
	for _, expr := range exprs {
		var inExpr []string
		for _, m := range metricRE.FindAllStringSubmatch(expr, -1) {
			name, matchers := m[1], m[2]
			inExpr = append(inExpr, name)
			used[name] = true
			series, ok := scraped[name]
			if !ok {
				t.Errorf("%q: run exports no %s", expr, name)
				continue
			}
			for _, mm := range matcherRE.FindAllStringSubmatch(matchers, -1) {
				label, op, value := mm[1], mm[2], mm[3]
				if slices.Contains(targetLabels, label) {
					continue
				}
				found := false
				for _, s := range series {
					v, has := s[label]
					switch op {
					case "=":
						found = found || has && v == value
					case "=~":
						re := regexp.MustCompile("^(?:" + value + ")$")
						found = found || has && re.MatchString(v)
					default:
						found = found || has
					}
				}
				if !found {
					t.Errorf("%q: no series %s{%s%s%q} in the scrape", expr, name, label, op, value)
				}
			}
		}
		for _, by := range byRE.FindAllStringSubmatch(expr, -1) {
			for _, label := range strings.Split(by[1], ",") {
				label = strings.TrimSpace(label)
				if label == "" || slices.Contains(targetLabels, label) {
					continue
				}
				has := false
				for _, name := range inExpr {
					for _, s := range scraped[name] {
						_, ok := s[label]
						has = has || ok
					}
				}
				if !has {
					t.Errorf("%q: aggregates by %s, which none of %v carries", expr, label, inExpr)
				}
			}
		}
	}
	for _, want := range []string{"knockgate_packets_total", "knockgate_knocks_total", "knockgate_service_grants_open",
		"knockgate_spa_packets_total", "knockgate_flows_total", "knockgate_events_lost_total",
		"knockgate_fleet_peers", "knockgate_fleet_last_sync_timestamp_seconds", "knockgate_fleet_published_total"} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", m)
	}
}
