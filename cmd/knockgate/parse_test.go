//go:build linux

package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "1m", want: time.Minute},
		{in: "90s", want: 90 * time.Second},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: " 2m ", want: 2 * time.Minute},
		{in: "1ns", want: time.Nanosecond},
		{in: "0", err: `--open: duration "0" must be positive`},
		{in: "-5m", err: `--open: duration "-5m" must be positive`},
		{in: "30", err: `--open: bad duration "30"`},
		{in: "1d", err: `--open: bad duration "1d"`},
		{in: "", err: `--open: bad duration ""`},
	} {
		got, err := parseDuration("open", tc.in)
		if tc.err != "" {
			var u *usageError
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) || !errors.As(err, &u) {
				t.Errorf("%q: error %v, want usage error %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":        "192.0.2.1",
		"2001:db8::1":      "2001:db8::1",
		"::ffff:192.0.2.1": "192.0.2.1", // the program keys IPv4 as v4-mapped
	} {
		got, err := parseAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("%q: %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "192.0.2", "192.0.2.1/32", "fe80::1%eth0", "host.example"} {
		if _, err := parseAddr(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestSSHClient(t *testing.T) {
	getenv := func(v string) func(string) string {
		return func(k string) string {
			if k == "SSH_CONNECTION" {
				return v
			}
			return ""
		}
	}
	for v, want := range map[string]string{
		"198.51.100.7 51234 10.0.0.1 22":           "198.51.100.7",
		"2001:db8::7 51234 2001:db8::1 22":         "2001:db8::7",
		"fe80::7%eth0 51234 fe80::1%eth0 22":       "fe80::7",
		"::ffff:198.51.100.7 1 ::ffff:10.0.0.1 22": "198.51.100.7",
	} {
		addr, ok, err := sshClient(getenv(v))
		if err != nil || !ok || addr.String() != want {
			t.Errorf("%q: %v, %v, %v; want %s", v, addr, ok, err, want)
		}
	}
	if _, ok, err := sshClient(getenv("")); ok || err != nil {
		t.Errorf("unset: ok %v, err %v; want neither", ok, err)
	}
	if _, _, err := sshClient(getenv("garbage")); err == nil || !strings.Contains(err.Error(), "--no-grant-self") {
		t.Errorf("garbage: error %v, want one suggesting --no-grant-self", err)
	}
}

// A bad $SSH_CONNECTION stops attach before anything is loaded: the
// interface does not exist, yet the error is about the session.
func TestAttachRefusesUnreadableSSHConnection(t *testing.T) {
	r := invoke(t, map[string]string{"SSH_CONNECTION": "nonsense"}, "attach", "kgcnope0")
	if r.code != 1 || !strings.Contains(r.stderr, `$SSH_CONNECTION "nonsense"`) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}
