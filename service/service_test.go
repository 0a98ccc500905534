package service

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// Every metric the collector makes is documented in README.
func TestMetricsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for _, d := range descs {
		m := name.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read the name of %s", d)
		}
		if !strings.Contains(string(readme), "`"+m[1]) {
			t.Errorf("metric %s is not in README", m[1])
		}
	}
}

// The labels of the counters' metrics are their counters' names without
// the metric's prefix, each documented in README on its metric's line.
func TestCounterLabels(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		metric string
		labels []counterLabel
		want   []string
	}{
		{"knockgate_knocks_total{outcome}", knockLabels, []string{"advanced", "repeated", "reset", "while_granted"}},
		{"knockgate_flows_total{event}", flowLabels, []string{"learned", "full", "ended"}},
		{"knockgate_spa_packets_total{outcome}", spaLabels, []string{"accepted", "bad_length", "bad_version",
			"unknown_key", "bad_tag", "clock", "bad_address", "bad_service", "replay"}},
		{"knockgate_fwknop_packets_total{outcome}", fwknopLabels, []string{"passed", "bad_hmac", "gpg", "replay",
			"replay_full", "lost", "accepted", "no_stanza", "undecryptable", "clock", "source_required", "username",
			"unsupported", "ports", "no_service"}},
	} {
		var got []string
		for _, l := range tc.labels {
			got = append(got, l.label)
			if name := maps.CounterNames[maps.Verdicts+int(l.c)]; !strings.HasSuffix(name, "_"+l.label) {
				t.Errorf("%s: label %s of counter %s", tc.metric, l.label, name)
			}
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: labels %q, want %q", tc.metric, got, tc.want)
		}
		_, line, _ := strings.Cut(string(readme), "| `"+tc.metric+"` |")
		line, _, _ = strings.Cut(line, "\n")
		for _, l := range got {
			if !strings.Contains(line, "`"+l+"`") {
				t.Errorf("%s: label %s is not on its line in README", tc.metric, l)
			}
		}
	}
}

// An event logged as JSON carries the fields of `events --json`, and its
// own time.
func TestLogEvent(t *testing.T) {
	at := time.Date(2026, 11, 26, 13, 40, 1, 0, time.UTC)
	ev := maps.Event{Time: at, Type: "open", Src: netip.MustParseAddr("203.0.113.9"),
		Port: policy.Port{Num: 8000, Proto: policy.TCP}, Stage: 2, Expires: at.Add(30 * time.Minute), Service: "web"}
	var b bytes.Buffer
	logEvent(newLogger(&b, "json"), ev)
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%q: %v", b.String(), err)
	}
	want := map[string]any{"time": "2026-11-26T13:40:01Z", "level": "INFO", "msg": "open", "type": "open",
		"src": "203.0.113.9", "port": float64(8000), "proto": "tcp", "stage": float64(2), "expires": "2026-11-26T14:10:01Z",
		"service": "web"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (in %s)", k, got[k], v, b.String())
		}
	}
	b.Reset()
	logEvent(newLogger(&b, "text"), ev)
	for _, part := range []string{"msg=open", "src=203.0.113.9", "port=8000", "proto=tcp", "expires=2026-11-26T14:10:01Z", "service=web"} {
		if !strings.Contains(b.String(), part) {
			t.Errorf("text line %q lacks %s", b.String(), part)
		}
	}
}

// notify sends one datagram to $NOTIFY_SOCKET, and nothing without it.
func TestNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", "")
	if err := notify("READY=1"); err != nil {
		t.Errorf("without a socket: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", sock)
	for _, msg := range []string{"READY=1", reloading()} {
		if err := notify(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Errorf("received %q, %v; want %q", buf[:n], err, msg)
		}
	}
	if !regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=\d+$`).MatchString(reloading()) {
		t.Errorf("reloading() = %q", reloading())
	}
}

func TestSameConfig(t *testing.T) {
	a := maps.Config{Policy: policy.Policy{Services: []policy.Service{{Name: policy.DefaultService,
		Sequence:    []policy.Port{{Num: 9000, Proto: policy.TCP}, {Num: 8000, Proto: policy.TCP}},
		StepTimeout: time.Minute, Open: time.Hour,
		Protect: []policy.Port{{Num: 53, Proto: policy.UDP}, {Num: 22, Proto: policy.TCP}}}}}, Generation: 3}
	b := a
	b.Policy = a.Policy.Clone()
	b.Policy.Services[0].Protect = []policy.Port{{Num: 22, Proto: policy.TCP}, {Num: 53, Proto: policy.UDP}} // another order
	b.Generation = 9
	if !a.Same(&b) {
		t.Error("the same rules in another order, another generation: want the same")
	}
	b.Policy.Services[0].Open = time.Minute
	if a.Same(&b) {
		t.Error("another open window: want different")
	}
}

func TestMinus(t *testing.T) {
	got := minus([]string{"eth0", "wg0", "ppp0"}, []string{"wg0"})
	if strings.Join(got, ",") != "eth0,ppp0" {
		t.Errorf("minus = %v", got)
	}
}
