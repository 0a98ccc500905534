package main

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/maps"
)

func TestParsePortsFlag(t *testing.T) {
	tcp := func(n uint16) maps.Port { return maps.Port{Num: n, Proto: maps.TCP} }
	udp := func(n uint16) maps.Port { return maps.Port{Num: n, Proto: maps.UDP} }
	for _, tc := range []struct {
		in   string
		want []maps.Port
		err  string
	}{
		{in: "22", want: []maps.Port{tcp(22)}},
		{in: "9000,8000", want: []maps.Port{tcp(9000), tcp(8000)}},
		{in: "22,443,53/udp", want: []maps.Port{tcp(22), tcp(443), udp(53)}},
		{in: "1/TCP, 65535/udp", want: []maps.Port{tcp(1), udp(65535)}},
		{in: "7000:udp,7001:tcp", want: []maps.Port{udp(7000), tcp(7001)}},
		{in: "0", err: "--protect: port 0 out of range (1-65535)"},
		{in: "65536", err: "--protect: port 65536 out of range (1-65535)"},
		{in: "22,", err: `--protect: port "" is not a number`},
		{in: "22/icmp", err: `--protect: port "22/icmp": unknown protocol "icmp" (want tcp or udp)`},
		{in: "-1", err: `--protect: port "-1" is not a number`},
		{in: "", err: "--protect: empty port list"},
	} {
		got, err := parsePortsFlag("protect", tc.in)
		if tc.err != "" {
			var u *usageError
			if err == nil || err.Error() != tc.err || !errors.As(err, &u) {
				t.Errorf("%q: error %v, want usage error %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

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

func TestParseCIDRs(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		in   []string
		want []netip.Prefix
		err  string
	}{
		{in: nil, want: nil},
		{in: []string{"10.0.0.0/8"}, want: []netip.Prefix{p("10.0.0.0/8")}},
		{in: []string{"10.1.2.3"}, want: []netip.Prefix{p("10.1.2.3/32")}},
		{in: []string{"2001:db8::/32,2001:db8::1"}, want: []netip.Prefix{p("2001:db8::/32"), p("2001:db8::1/128")}},
		{in: []string{"192.168.1.77/24"}, want: []netip.Prefix{p("192.168.1.0/24")}},
		{in: []string{"10.0.0.0/8", "172.16.0.0/12, 192.0.2.1"},
			want: []netip.Prefix{p("10.0.0.0/8"), p("172.16.0.0/12"), p("192.0.2.1/32")}},
		{in: []string{"10.0.0.0/33"}, err: `--allow: bad CIDR "10.0.0.0/33"`},
		{in: []string{"2001:db8::/129"}, err: `--allow: bad CIDR "2001:db8::/129"`},
		{in: []string{"10.0.0.256"}, err: `--allow: bad CIDR "10.0.0.256"`},
		{in: []string{"localhost"}, err: `--allow: bad CIDR "localhost"`},
		{in: []string{"fe80::1%eth0"}, err: `--allow: bad CIDR "fe80::1%eth0"`},
	} {
		got, err := parseCIDRs(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
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

func TestParseMaxSources(t *testing.T) {
	for in, want := range map[string]uint32{"1": 1, "65536": 65536, "16777216": 1 << 24} {
		if got, err := parseMaxSources(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "16777217", "-1", "1e6", "4294967296"} {
		if _, err := parseMaxSources(in); err == nil {
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
