//go:build linux

package main

import (
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/knockgate/knockgate/loader"
)

var update = flag.Bool("update", false, "rewrite the golden help files in testdata/help")

func TestHelpIsPinned(t *testing.T) {
	check := func(t *testing.T, golden string, args ...string) {
		t.Helper()
		r := invoke(t, nil, args...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
		path := filepath.Join("testdata", "help", golden)
		if *update {
			if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update to create it)", err)
		}
		if r.stdout != string(want) {
			t.Errorf("%q printed:\n%s\nwant (%s):\n%s", args, r.stdout, path, want)
		}
	}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		check(t, "knockgate.txt", args...)
	}
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			check(t, c.name+".txt", c.name, "-h")
			check(t, c.name+".txt", c.name, "--help")
			check(t, c.name+".txt", "help", c.name)
			// Help wins over everything else on the line.
			check(t, c.name+".txt", c.name, "kgcnope0", "--help")
		})
	}
}

func TestTopLevelHelpListsEveryCommand(t *testing.T) {
	r := invoke(t, nil, "help")
	for _, c := range commands() {
		if !strings.Contains(r.stdout, "\n  "+c.name+" ") {
			t.Errorf("help does not list %s:\n%s", c.name, r.stdout)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in the error message
	}{
		{nil, "no command given"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"help", "frob"}, `unknown command "frob"`},
		{[]string{"--verbose"}, `unknown command "--verbose"`},

		{[]string{"attach"}, "attach: takes at least 1 argument, got 0"},
		{[]string{"attach", "kgcnope0", "a/b"}, `bad interface name "a/b"`},
		{[]string{"attach", "kgcnope0", "--gate", "a b"}, `--gate: gate name "a b"`},
		{[]string{"attach", "kgcnope0", "--confirm", "soon"}, `--confirm: bad duration "soon"`},
		{[]string{"attach", "kgcnope0", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"attach", "kgcnope0", "-x"}, "unknown shorthand flag: 'x' in -x"},
		{[]string{"attach", "kgcnope0", "--open"}, "flag needs an argument: --open"},
		{[]string{"attach", "kgcnope0", "--sequence", "9000,http"}, `port "http" is not a number`},
		{[]string{"attach", "kgcnope0", "--sequence", "9000,70000"}, "--sequence: port 70000 out of range (1-65535)"},
		{[]string{"attach", "kgcnope0", "--sequence", "0"}, "port 0 out of range (1-65535)"},
		{[]string{"attach", "kgcnope0", "--sequence", ""}, "--sequence: empty port list"},
		{[]string{"attach", "kgcnope0", "--sequence", "9000/sctp"}, `unknown protocol "sctp"`},
		{[]string{"attach", "kgcnope0", "--sequence", "1,2,3,4,5,6,7,8,9"}, "sequence has 9 steps, at most 8 allowed"},
		{[]string{"attach", "kgcnope0", "--sequence", "9000,9000"}, "sequence step 2 (9000) repeats step 1"},
		{[]string{"attach", "kgcnope0", "--sequence", "22,9000"}, "port 22 is both a knock step and protected"},
		{[]string{"attach", "kgcnope0", "--protect", "22,99999"}, "--protect: port 99999 out of range (1-65535)"},
		{[]string{"attach", "kgcnope0", "--step-timeout", "5"}, `--step-timeout: bad duration "5"`},
		{[]string{"attach", "kgcnope0", "--step-timeout", "0s"}, `--step-timeout: duration "0s" must be positive`},
		{[]string{"attach", "kgcnope0", "--open", "-1m"}, `--open: duration "-1m" must be positive`},
		{[]string{"attach", "kgcnope0", "--open", "forever"}, `--open: bad duration "forever"`},
		{[]string{"attach", "kgcnope0", "--allow", "10.0.0.0/33"}, `--allow: bad CIDR "10.0.0.0/33"`},
		{[]string{"attach", "kgcnope0", "--allow", "10.0.0.0/8,example.com"}, `--allow: bad CIDR "example.com"`},
		{[]string{"attach", "kgcnope0", "--allow", "fe80::1%eth0"}, `--allow: bad CIDR "fe80::1%eth0"`},
		{[]string{"attach", "kgcnope0", "--mode", "turbo"}, `--mode: unknown mode "turbo"`},
		{[]string{"attach", "kgcnope0", "--max-sources", "0"}, "--max-sources: 0 out of range"},
		{[]string{"attach", "kgcnope0", "--max-sources", "lots"}, `--max-sources: "lots" is not a number`},

		{[]string{"set", "kgcnope0"}, "set: nothing to change"},
		{[]string{"set"}, "set: takes 1 argument, got 0"},
		{[]string{"set", "kgcnope0", "--allow", "10.0.0.0/33"}, `--allow: bad CIDR "10.0.0.0/33"`},
		{[]string{"set", "kgcnope0", "--remove"}, "--remove removes the service --service names: give --service"},
		{[]string{"set", "kgcnope0", "--service", "Web", "--open", "1h"}, `--service: service name "Web": use a-z`},
		{[]string{"set", "kgcnope0", "--service", "default", "--remove"}, "the service default cannot be removed: every gate has it"},
		{[]string{"set", "kgcnope0", "--service", "web", "--remove", "--open", "1h"}, "--remove removes the service web: give no other flag but --confirm with it"},
		{[]string{"set", "kgcnope0", "--service", "web"}, "--service web: give the service's flags (--sequence, --step-timeout, --open, --protect or --allow), or --remove"},
		{[]string{"set", "kgcnope0", "--service", "web", "--flows=false"}, "--service web: give the service's flags"},
		{[]string{"attach", "kgcnope0", "--service", "web", "--open", "1h"}, "--service web: give --protect, the ports the service protects"},
		{[]string{"attach", "kgcnope0", "--service", "web", "--protect", "22", "--sequence", "7000"}, "port 22 is protected by both services default and web"},
		{[]string{"attach", "kgcnope0", "--service", "web", "--protect", "443"}, "service web: sequence is none and there is no SPA port: nothing could ever open it"},
		{[]string{"set", "kgcnope0", "--sequence", "65536"}, "--sequence: port 65536 out of range (1-65535)"},
		{[]string{"set", "kgcnope0", "--open", "0"}, `--open: duration "0" must be positive`},
		{[]string{"set", "kgcnope0", "--step-timeout", "1 minute"}, `--step-timeout: bad duration "1 minute"`},
		{[]string{"set", "kgcnope0", "--protect", "ssh"}, `port "ssh" is not a number`},
		{[]string{"set", "kgcnope0", "--open", "1m", "--confirm", "0s"}, `--confirm: duration "0s" must be positive`},
		{[]string{"set", "kgcnope0", "--confirm", "1m"}, "set: nothing to change"},
		{[]string{"confirm", "a", "b"}, "confirm: takes at most 1 argument, got 2"},
		{[]string{"run", "extra"}, "run: takes no arguments, got 1"},
		{[]string{"run", "--confirm", "soon"}, `--confirm: bad duration "soon"`},
		{[]string{"run", "--config"}, "flag needs an argument: --config"},

		{[]string{"status", "a", "b"}, "status: takes at most 1 argument, got 2"},
		{[]string{"status", "--yaml"}, "unknown flag: --yaml"},
		{[]string{"events", "a", "b"}, "events: takes at most 1 argument, got 2"},
		{[]string{"events", "--follow"}, "unknown flag: --follow"},

		{[]string{"grant", "kgcnope0"}, "grant: takes 2 arguments, got 1"},
		{[]string{"grant", "kgcnope0", "10.0.0.300"}, `bad address "10.0.0.300"`},
		{[]string{"grant", "kgcnope0", "10.0.0.0/24"}, `bad address "10.0.0.0/24"`},
		{[]string{"grant", "kgcnope0", "10.0.0.1", "--for", "1y"}, `--for: bad duration "1y"`},
		{[]string{"grant", "kgcnope0", "10.0.0.1", "--for", "0s"}, `--for: duration "0s" must be positive`},
		{[]string{"revoke", "kgcnope0"}, "revoke: takes 2 arguments, got 1"},
		{[]string{"revoke", "kgcnope0", "host.example"}, `bad address "host.example"`},
		{[]string{"revoke", "kgcnope0", "10.0.0.1", "--for", "1m"}, "unknown flag: --for"},
		{[]string{"detach"}, "detach: takes 1 argument, got 0"},
		{[]string{"detach", "a", "b"}, "detach: takes 1 argument, got 2"},
		{[]string{"detach", "kgcnope0", "--force"}, "unknown flag: --force"},

		{[]string{"knock", "127.0.0.1"}, "knock: give PORTs to knock on, or --spa-key"},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff"}, "--spa-key: a key given in hex needs --key-id"},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff0", "--key-id", "1"}, "--spa-key: 33 hex digits, want 32 (16 bytes)"},
		{[]string{"knock", "127.0.0.1", "9000", "--key-id", "3"}, "--key-id, --spa-port, --open-address and --service go with --spa-key"},
		{[]string{"knock", "127.0.0.1", "9000", "--service", "web"}, "--key-id, --spa-port, --open-address and --service go with --spa-key"},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "1", "--service", "web,Web"}, `--service: service name "Web"`},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "1", "--service", "web,web"}, `--service: service "web" named twice`},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "1", "--service", ""}, `--service: service name ""`},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "0"}, `--key-id: bad key id "0"`},
		{[]string{"knock", "127.0.0.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "1", "--open-address", "nowhere"}, `--open-address: bad address "nowhere"`},
		{[]string{"knock", "127.0.0.1", "9000", "--check", "ssh"}, `--check: bad TCP port "ssh"`},
		{[]string{"keygen", "--id", "0"}, `--id: bad key id "0"`},
		{[]string{"keygen", "--name", "a b"}, `--name: bad key name "a b"`},
		{[]string{"knock", "127.0.0.1", "70000"}, "port 70000 out of range (1-65535)"},
		{[]string{"knock", "127.0.0.1", "9000:sctp"}, `unknown protocol "sctp"`},
		{[]string{"knock", "127.0.0.1", "9000", "--delay", "soon"}, `--delay: bad duration "soon"`},
		{[]string{"knock", "127.0.0.1", "9000", "--delay=-1s"}, `--delay: duration "-1s" must not be negative`},
		{[]string{"knock", "-4", "-6", "127.0.0.1", "9000"}, "-4 and -6 exclude each other"},
		{[]string{"knock", "-4", "::1", "9000"}, "::1 is not an IPv4 address (-4)"},
		{[]string{"knock", "-6", "127.0.0.1", "9000"}, "127.0.0.1 is not an IPv6 address (-6)"},

		{[]string{"version", "extra"}, "version: takes no arguments, got 1"},
		{[]string{"version", "--short"}, "unknown flag: --short"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := invoke(t, nil, tc.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2 (err %v)", r.code, r.err)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "knockgate: ") || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("stderr %q, want \"knockgate: ...%s...\" and a usage line", r.stderr, tc.want)
			}
			want := "usage: knockgate COMMAND [ARGS] [FLAGS]"
			if c := commandNamed(tc.args); c != nil {
				want = "usage: " + c.usage()
			}
			if !strings.HasPrefix(lines[1], want) {
				t.Errorf("usage line %q, want %q", lines[1], want)
			}
		})
	}
}

// commandNamed is the command args invoke, if it names one.
func commandNamed(args []string) *command {
	if len(args) == 0 {
		return nil
	}
	return find(commands(), args[0])
}

// Commands that work on a gate name an interface that does not exist
// without needing a gate or root.
func TestUnknownInterface(t *testing.T) {
	if _, err := os.Stat(loader.PinRoot); errors.Is(err, fs.ErrPermission) {
		t.Skip("cannot read " + loader.PinRoot + " without root")
	}
	for _, args := range [][]string{
		{"attach", "kgcnope0", "--no-grant-self"},
		{"set", "kgcnope0", "--open", "1m"},
		{"status", "kgcnope0"},
		{"status", "kgcnope0", "--json"},
		{"events", "kgcnope0"},
		{"grant", "kgcnope0", "192.0.2.1"},
		{"revoke", "kgcnope0", "192.0.2.1"},
		{"detach", "kgcnope0"},
		{"confirm", "kgcnope0"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := invoke(t, nil, args...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1 (err %v)", r.code, r.err)
			}
			if want := "knockgate: unknown interface \"kgcnope0\"\n"; r.stderr != want {
				t.Errorf("stderr %q, want %q", r.stderr, want)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
		})
	}
}

func TestNotAttached(t *testing.T) {
	// lo exists in every network namespace, and no test attaches to it.
	if _, err := os.Stat(loader.GateDir("lo")); err == nil {
		t.Skip("a gate is attached to lo")
	}
	if _, err := os.Stat(loader.PinRoot); errors.Is(err, fs.ErrPermission) {
		t.Skip("cannot read " + loader.PinRoot + " without root")
	}
	for _, args := range [][]string{
		{"set", "lo", "--open", "1m"},
		{"status", "lo"},
		{"grant", "lo", "192.0.2.1"},
		{"revoke", "lo", "192.0.2.1"},
		{"detach", "lo"},
		{"confirm", "lo"},
	} {
		r := invoke(t, nil, args...)
		if r.code != 1 || r.stderr != "knockgate: knockgate is not attached to lo\n" {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
		if !errors.Is(r.err, loader.ErrNotAttached) {
			t.Errorf("%q: error %v does not match loader.ErrNotAttached", args, r.err)
		}
	}
}

func TestVersion(t *testing.T) {
	r := invoke(t, nil, "version")
	if r.code != 0 || r.stdout != "knockgate "+version+"\n" || r.stderr != "" {
		t.Errorf("version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("kernel said no"), 1},
		{usagef("bad flag"), 2},
		{&messageError{"wrapped", usagef("inner")}, 2},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
