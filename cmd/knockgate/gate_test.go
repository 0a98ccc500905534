//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/test/netns"
)

// The commands against a real gate, in-process: attach on a veth in a
// namespace, knock from another, watch events, change and tear down. The
// full behaviour of the gate is the end-to-end suite's job (test/).
func TestGateLifecycle(t *testing.T) {
	netns.Require(t, "ip", "nsenter")
	const iface, peer = "kgct0", "kgct1"
	srv := netns.NewT(t, fmt.Sprintf("kgc-ts-%d", os.Getpid()))
	cli := netns.NewT(t, fmt.Sprintf("kgc-tc-%d", os.Getpid()))
	if err := netns.Veth(srv, iface, cli, peer); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Run("ip", "addr", "add", "10.231.0.1/24", "dev", iface); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Run("ip", "addr", "add", "10.231.0.2/24", "dev", peer); err != nil {
		t.Fatal(err)
	}
	// Runs before the namespaces go (cleanups run in reverse).
	t.Cleanup(func() { loader.Detach(iface) })

	// in runs a command line on a thread inside ns.
	in := func(ns *netns.NS, environ map[string]string, args ...string) result {
		t.Helper()
		var r result
		if err := ns.Do(func() error { r = invoke(t, environ, args...); return nil }); err != nil {
			t.Fatal(err)
		}
		return r
	}
	ok := func(r result, args ...string) string {
		t.Helper()
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
		return r.stdout
	}
	fails := func(r result, code int, stderr string) {
		t.Helper()
		if r.code != code || r.stderr != stderr || r.stdout != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stderr %q", r.code, r.stdout, r.stderr, code, stderr)
		}
	}

	ssh := map[string]string{"SSH_CONNECTION": "198.51.100.7 51234 10.231.0.1 22"}
	attach := []string{"attach", iface, "--mode", "native", "--sequence", "9000,8000/udp", "--open", "10m",
		"--allow", "192.0.2.0/24"}
	out := ok(in(srv, ssh, attach...), attach...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	want := "knockgate attached to kgct0 (native): sequence 9000,8000/udp, step timeout 1m0s, open 10m0s, " +
		"protecting 22, allowing 192.0.2.0/24"
	if len(lines) != 2 || lines[0] != want || !strings.HasPrefix(lines[1], "granted 198.51.100.7 (this SSH session) until ") {
		t.Fatalf("attach printed %q, want %q and the SSH grant", out, want)
	}
	fails(in(srv, nil, "attach", iface, "--no-grant-self"), 1,
		"knockgate: knockgate is already attached to kgct0 (run \"knockgate detach kgct0\" first)\n")

	// Events flow through a pipe, as a reader of the binary sees them.
	type stream struct {
		next   func() string // the next line
		cancel func()
		done   chan error
	}
	startEvents := func(args ...string) *stream {
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		s := &stream{cancel: cancel, done: make(chan error, 1)}
		go func() {
			err := run(env{stdout: pw, stderr: io.Discard, getenv: func(string) string { return "" }, ctx: ctx}, args)
			pw.Close()
			s.done <- err
		}()
		lines := bufio.NewScanner(pr)
		s.next = func() string {
			t.Helper()
			got := make(chan bool, 1)
			go func() { got <- lines.Scan() }()
			select {
			case ok := <-got:
				if !ok {
					t.Fatalf("events ended: %v", lines.Err())
				}
			case <-time.After(30 * time.Second): // a safety net, not a measurement
				t.Fatal("no event")
			}
			return lines.Text()
		}
		t.Cleanup(func() { cancel(); pr.Close() })
		return s
	}
	evs := startEvents("events", iface, "--json")
	next := func() eventJSON {
		t.Helper()
		var ev eventJSON
		line := evs.next()
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		return ev
	}

	out = ok(in(cli, nil, "knock", "10.231.0.1", "9000", "8000/udp"))
	if out != "knock 10.231.0.1 9000/tcp\nknock 10.231.0.1 8000/udp\n" {
		t.Errorf("knock printed %q", out)
	}
	if ev := next(); ev.Type != "knock" || ev.Src != "10.231.0.2" || ev.Port != 9000 || ev.Proto != "tcp" || ev.Stage != 1 || ev.Expires == "" {
		t.Errorf("first event %+v, want a stage-1 knock from 10.231.0.2 on 9000/tcp", ev)
	}
	if ev := next(); ev.Type != "open" || ev.Src != "10.231.0.2" || ev.Port != 8000 || ev.Proto != "udp" || ev.Stage != 2 || ev.Expires == "" {
		t.Errorf("second event %+v, want 10.231.0.2 opened by 8000/udp", ev)
	}

	status := func() statusJSON {
		t.Helper()
		var st statusJSON
		if err := json.Unmarshal([]byte(ok(in(srv, nil, "status", iface, "--json"))), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := status()
	if st.Interface != iface || st.Mode != "native" || st.Config.Open != "10m0s" ||
		strings.Join(st.Config.Sequence, ",") != "9000/tcp,8000/udp" || strings.Join(st.Config.Allow, ",") != "192.0.2.0/24" {
		t.Errorf("status %+v", st)
	}
	open := map[string]bool{}
	for _, s := range st.Sources {
		open[s.Addr] = s.State == "open"
	}
	if !open["10.231.0.2"] || !open["198.51.100.7"] || len(st.Sources) != 2 {
		t.Errorf("sources %+v, want the knocker and the SSH session open", st.Sources)
	}
	if st.Counters["granted"] != 1 || st.Counters["knock_advanced"] != 2 {
		t.Errorf("counters %v, want granted 1, knock_advanced 2", st.Counters)
	}

	out = ok(in(srv, nil, "set", iface, "--open", "5m", "--protect", "22,53/udp"))
	if want := "knockgate on kgct0 updated (native, generation 2): sequence 9000,8000/udp, step timeout 1m0s, " +
		"open 5m0s, protecting 22,53/udp, allowing 192.0.2.0/24\n"; out != want {
		t.Errorf("set printed %q, want %q", out, want)
	}
	fails(in(srv, nil, "set", iface, "--protect", "9000"), 2,
		"knockgate: port 9000 is both a knock step and protected\nusage: "+find(commands(), "set").usage()+"\n")
	if st := status(); st.Config.Open != "5m0s" || st.Config.Generation != 2 || len(st.Sources) != 2 {
		t.Errorf("after set: %+v", st)
	}

	out = ok(in(srv, nil, "grant", iface, "2001:db8::9", "--for", "1m"))
	if !strings.HasPrefix(out, "granted 2001:db8::9 on kgct0 until ") {
		t.Errorf("grant printed %q", out)
	}
	if out := ok(in(srv, nil, "revoke", iface, "2001:db8::9")); out != "revoked 2001:db8::9 on kgct0\n" {
		t.Errorf("revoke printed %q", out)
	}
	fails(in(srv, nil, "revoke", iface, "2001:db8::9"), 1, "knockgate: 2001:db8::9 has no grant or knock progress on kgct0\n")
	// A service the gate lacks (with --for, found by the grant itself) is
	// named with those it has.
	noWeb := "knockgate: gate kgct0 has no service web (it has default)\n"
	fails(in(srv, nil, "grant", iface, "2001:db8::9", "--service", "web"), 1, noWeb)
	fails(in(srv, nil, "grant", iface, "2001:db8::9", "--service", "web", "--for", "1m"), 1, noWeb)
	fails(in(srv, nil, "revoke", iface, "2001:db8::9", "--service", "web"), 1, noWeb)

	evs.cancel()
	if err := <-evs.done; err != nil {
		t.Errorf("events ended with %v, want nil when interrupted", err)
	}

	// The plain form, from a new reader; detaching ends it with an error.
	evs = startEvents("events", iface)
	ok(in(srv, nil, "revoke", iface, "10.231.0.2"))
	ok(in(cli, nil, "knock", "10.231.0.1", "9000"))
	line := evs.next()
	if !regexp.MustCompile(`^\S+Z knock  10\.231\.0\.2 -> 9000/tcp stage 1/2 \(next step before \d\d:\d\d:\d\d\)$`).MatchString(line) {
		t.Errorf("plain event %q", line)
	}
	if out := ok(in(srv, nil, "detach", iface)); out != "knockgate detached from kgct0\n" {
		t.Errorf("detach printed %q", out)
	}
	if err := <-evs.done; err == nil || err.Error() != "knockgate is no longer attached to kgct0" {
		t.Errorf("events after detach ended with %v", err)
	}
	fails(in(srv, nil, "detach", iface), 1, "knockgate: knockgate is not attached to kgct0\n")
	fails(in(srv, nil, "status", iface), 1, "knockgate: knockgate is not attached to kgct0\n")
}
