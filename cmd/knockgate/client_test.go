package main

import (
	"bytes"
	"context"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The client's tests: they build and pass on every system knockgate's
// client builds for (knock_test.go adds the ones that need Linux).

// result is what one in-process invocation printed and would exit with.
type result struct {
	stdout, stderr string
	code           int
	err            error
}

// invoke runs one command line in-process, with environ as the environment.
func invoke(t testing.TB, environ map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := env{
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return environ[k] },
		ctx:    context.Background(),
	}
	err := run(e, args)
	return result{stdout.String(), stderr.String(), exitCode(err), err}
}

func TestClientCommandsEverywhere(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"keygen", "--name", "laptop"}, {"help"}, {"knock", "-h"}} {
		if r := invoke(t, nil, args...); r.code != 0 || r.stderr != "" || r.stdout == "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	r := invoke(t, nil, "keygen", "--id", "7", "--name", "laptop", "--open", "2h")
	if f := strings.Fields(r.stdout); len(f) != 4 || f[0] != "7" || len(f[1]) != 32 || f[2] != "laptop" || f[3] != "open=2h0m0s" {
		t.Errorf("keygen printed %q", r.stdout)
	}
}

// Where the gate's commands are not built, asking for one says where they
// are, with the usage status.
func TestServerCommandsElsewhere(t *testing.T) {
	if len(serverCommands()) != 0 {
		err := linuxOnly("attach")
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "attach works on the gate, which runs on Linux only (this is knockgate for "+runtime.GOOS) {
			t.Errorf("linuxOnly: %v", err)
		}
		return
	}
	for _, args := range [][]string{{"attach", "eth0"}, {"status"}, {"help", "run"}} {
		r := invoke(t, nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, args[len(args)-1]+" works on the gate, which runs on Linux only") {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	if r := invoke(t, nil, "help"); !strings.Contains(r.stdout, "On Linux, where the gate runs, also: attach, set,") {
		t.Errorf("help does not say where the gate's commands are:\n%s", r.stdout)
	}
}

func TestCheckClock(t *testing.T) {
	defer func(b string) { builtAt = b }(builtAt)
	builtAt = "2025-06-01T12:00:00Z"
	built, _ := time.Parse(time.RFC3339, builtAt)
	if err := checkClock(built.Add(time.Minute)); err != nil {
		t.Errorf("a clock after the build: %v", err)
	}
	err := checkClock(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	if err == nil || !strings.Contains(err.Error(), "this machine's clock says 2000-01-01 00:00:00 UTC, but this knockgate was built on 2025-06-01: "+
		"the clock is at least 9283 days behind") || !strings.Contains(err.Error(), "Set the clock right: ") {
		t.Errorf("a clock in 2000: %v", err)
	}
	if err := checkClock(built.Add(-90 * time.Minute)); err == nil || !strings.Contains(err.Error(), "at least 1h30m behind") {
		t.Errorf("a clock 90 minutes behind the build: %v", err)
	}
	builtAt = ""
	if err := checkClock(time.Time{}); err != nil {
		t.Errorf("no build time: %v", err)
	}
}

func TestClockHelp(t *testing.T) {
	s := clockHelp(time.Date(2025, 6, 1, 12, 0, 3, 123e6, time.UTC))
	for _, want := range []string{"The packet carried 2025-06-01 12:00:03.123 UTC, this machine's clock",
		"more than its window (30s", "set it right: " + clockAdvice()} {
		if !strings.Contains(s, want) {
			t.Errorf("%q does not say %q", s, want)
		}
	}
}

func TestExplainLookup(t *testing.T) {
	for _, c := range []struct {
		err  *net.DNSError
		want string
	}{
		{&net.DNSError{Err: "no such host", Name: "gate.example", IsNotFound: true}, `resolve "gate.example": no such name (lookup gate.example: no such host): check its spelling, or give the gate's IP address instead`},
		{&net.DNSError{Err: "i/o timeout", Name: "gate.example", IsTimeout: true}, `resolve "gate.example": no answer from the DNS server`},
		{&net.DNSError{Err: "server misbehaving", Name: "gate.example"}, `resolve "gate.example": lookup gate.example: server misbehaving`},
	} {
		if got := explainLookup("gate.example", c.err).Error(); !strings.HasPrefix(got, c.want) {
			t.Errorf("%v: %q, want %q", c.err, got, c.want)
		}
	}
}

// A knock on this machine's loopback, TCP and UDP, on any system.
func TestKnockLoopback(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	p := strconv.Itoa(port)
	r := invoke(t, nil, "knock", "127.0.0.1", p, p+"/udp", "--delay", "0")
	if r.code != 0 || r.stdout != "knock 127.0.0.1 "+p+"/tcp\nknock 127.0.0.1 "+p+"/udp\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
