package test

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/netns"
)

// fwknop's clients against `knockgate run`: Debian's fwknop client, run in
// the client namespace as a user would, sends to the gate's SPA port; the
// gate reads the same access.conf fwknopd would.

// The fwknop keys of the tests' access.conf and client.
var (
	fwkKey64  = base64.StdEncoding.EncodeToString([]byte("knockgate-fwknop-rijndael-key-32"))
	fwkHMAC64 = base64.StdEncoding.EncodeToString([]byte(strings.Repeat("hmac-key", 8)))
)

// fwkOther is a port the gate protects that the stanza may not open.
const fwkOther = 2222

// fwknopAccess is an access.conf of one stanza for every source, with the
// tests' keys, opening tcp/22 only; requireSource sets
// REQUIRE_SOURCE_ADDRESS.
func fwknopAccess(requireSource bool) string {
	yn := "N"
	if requireSource {
		yn = "Y"
	}
	return fmt.Sprintf("# the tests' stanza\nSOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\n"+
		"FW_ACCESS_TIMEOUT 60\nREQUIRE_SOURCE_ADDRESS %s\n", fwkKey64, fwkHMAC64, yn)
}

// writeAccess writes an access.conf root's and mode 600, as the gate
// requires (and fwknopd would read it).
func writeAccess(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// fwknopRunConfig is run's config: the service default protects 22,
// opened by fwknop's clients only; the service other protects fwkOther
// (a grant opens a whole service: the port must be another's to stay
// shut).
func (g *gate) fwknopRunConfig(access string) string {
	return fmt.Sprintf("interfaces = [%q]\nsequence = \"none\"\nprotect = \"%d\"\nfwknop_access = %q\n"+
		"[services.other]\nprotect = \"%d\"\nsequence = \"7000,7001\"\n", g.iface, protected, access, fwkOther)
}

// fwknopSend runs Debian's fwknop client in the client namespace: it
// sends one datagram to the server's SPA port (args say what to ask for),
// with the tests' keys and no rc file.
func (g *gate) fwknopSend(args ...string) {
	g.t.Helper()
	home := g.t.TempDir()
	full := append([]string{"--no-rc-file", "--no-save-args", "--use-hmac",
		"--key-base64-rijndael", fwkKey64, "--key-base64-hmac", fwkHMAC64, "-D", srv4.String()}, args...)
	cmd := g.cli.Cmd("fwknop", full...)
	cmd.Env = append(os.Environ(), "HOME="+home)
	if r := run(g.t, cmd); r.code != 0 {
		g.t.Fatalf("fwknop %s: %s", strings.Join(args, " "), r)
	}
}

// waitCounter waits until the gate's counter name is want.
func (g *gate) waitCounter(name string, want uint64) {
	g.t.Helper()
	var got uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got = g.spaCounter(name); got == want {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("counter %s is %d, want %d", name, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ports asserts what src reaches: the protected port (22, where the
// listener is) and fwkOther (nothing listens: a SYN let through is
// refused, one the gate drops is filtered).
func (g *gate) ports(what string, src netip.Addr, want22, wantOther string) {
	g.t.Helper()
	wait := func(w string) time.Duration {
		if w == filtered {
			return filteredWait
		}
		return openWait
	}
	if got := g.dial(src, srv4, protected, wait(want22)); got != want22 {
		g.t.Fatalf("%s: %s -> %d: %s, want %s", what, src, protected, got, want22)
	}
	if got := g.dial(src, srv4, fwkOther, wait(wantOther)); got != wantOther {
		g.t.Fatalf("%s: %s -> %d: %s, want %s", what, src, fwkOther, got, wantOther)
	}
}

// Debian's fwknop client opens the gate run keeps, from the access.conf
// fwknopd would read: `-A tcp/22 -a CLIENT` opens 22 for the client only
// (not the port the stanza does not hold, not another address); a request
// for a port outside the stanza opens nothing; `-a` another address opens
// that address; `-s` is refused under REQUIRE_SOURCE_ADDRESS Y and opens
// the datagram's source under N (the file changed, run reloaded); a
// captured datagram sent again, from its source or another, before and
// after run is restarted, opens nothing, while the client's next datagram
// after the restart does.
func TestFwknopRealClient(t *testing.T) {
	netns.Require(t, "fwknop")
	g := newGate(t)
	access := filepath.Join(t.TempDir(), "access.conf")
	writeAccess(t, access, fwknopAccess(true))
	s := g.startRun(g.fwknopRunConfig(access))
	wire, stopCapture := capture(t, g.cli, g.cliIface, spaPort)

	g.ports("before any datagram", cli4, filtered, filtered)
	g.fwknopSend("-A", "tcp/22", "-a", cli4.String())
	g.waitCounter("fwknop_accepted", 1)
	g.ports("-A tcp/22 -a CLIENT", cli4, open, filtered)
	g.ports("-A tcp/22 -a CLIENT, another address", alt4, filtered, filtered)
	// run reads the gate's events (an events command beside it would
	// race it for them) and logs each.
	s.waitLog(5*time.Second, "msg=open", "src="+cli4.String(), "port=22", "service=default", "stanza=1")
	if src, ok := g.status().source(cli4); !ok || src.State != "open" ||
		time.Until(src.Expires) > 61*time.Second || time.Until(src.Expires) < 45*time.Second {
		t.Errorf("the client's grant %+v, want open for FW_ACCESS_TIMEOUT's 60s", src)
	}
	s.waitLog(5*time.Second, "fwknop datagram accepted", "open="+cli4.String())
	var captured []byte
	select {
	case captured = <-wire:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's datagram was not captured")
	}
	stopCapture()
	if len(captured) < 140 {
		t.Fatalf("captured %d bytes: not an fwknop datagram", len(captured))
	}
	g.mustKG(g.srv, "revoke", g.iface, cli4.String())

	// A port outside the stanza: nothing opens, not even 22 beside it.
	g.fwknopSend("-A", fmt.Sprintf("tcp/22,tcp/%d", fwkOther), "-a", cli4.String())
	g.waitCounter("fwknop_ports", 1)
	g.fwknopSend("-A", fmt.Sprintf("tcp/%d", fwkOther), "-a", cli4.String())
	g.waitCounter("fwknop_ports", 2)
	g.ports("a port outside the stanza", cli4, filtered, filtered)
	s.waitLog(5*time.Second, "fwknop datagram refused", "reason=fwknop_ports")

	// REQUIRE_SOURCE_ADDRESS Y: -s refused, -a another address opened.
	g.fwknopSend("-A", "tcp/22", "-s")
	g.waitCounter("fwknop_source_required", 1)
	g.ports("-s under REQUIRE_SOURCE_ADDRESS Y", cli4, filtered, filtered)
	g.fwknopSend("-A", "tcp/22", "-a", alt4.String())
	g.waitCounter("fwknop_accepted", 2)
	g.ports("-a ALT under Y, from the client", cli4, filtered, filtered)
	g.ports("-a ALT under Y", alt4, open, filtered)
	g.mustKG(g.srv, "revoke", g.iface, alt4.String())

	// REQUIRE_SOURCE_ADDRESS N, by a reload: -s opens the source.
	writeAccess(t, access, fwknopAccess(false))
	s.reload("")
	g.fwknopSend("-A", "tcp/22", "-s")
	g.waitCounter("fwknop_accepted", 3)
	g.ports("-s under REQUIRE_SOURCE_ADDRESS N", cli4, open, filtered)
	g.ports("-s under N, another address", alt4, filtered, filtered)
	g.mustKG(g.srv, "revoke", g.iface, cli4.String())

	// The captured datagram again, from its source and from another.
	replays := g.spaCounter("fwknop_replay")
	g.sendUDP(cli4, srv4, spaPort, captured)
	g.sendUDP(alt4, srv4, spaPort, captured)
	g.waitCounter("fwknop_replay", replays+2)
	g.ports("the captured datagram replayed", cli4, filtered, filtered)

	// run restarted (the gate stays pinned, with what it remembers): the
	// same replay is refused; the client's next datagram opens.
	if code := s.stop(unix.SIGTERM); code != 0 {
		t.Fatalf("run exited %d on SIGTERM", code)
	}
	s = g.startRun(g.fwknopRunConfig(access))
	g.sendUDP(cli4, srv4, spaPort, captured)
	g.waitCounter("fwknop_replay", replays+3)
	g.ports("the captured datagram replayed after a restart", cli4, filtered, filtered)
	accepted := g.spaCounter("fwknop_accepted")
	g.fwknopSend("-A", "tcp/22", "-a", cli4.String())
	g.waitCounter("fwknop_accepted", accepted+1)
	g.ports("a new datagram after the restart", cli4, open, filtered)
	s.stop(unix.SIGTERM)
}
