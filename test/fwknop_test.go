package test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
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
// top are more top-level lines.
func (g *gate) fwknopRunConfig(access string, top ...string) string {
	return fmt.Sprintf("interfaces = [%q]\nsequence = \"none\"\nprotect = \"%d\"\nfwknop_access = %q\n%s"+
		"[services.other]\nprotect = \"%d\"\nsequence = \"7000,7001\"\n", g.iface, protected, access, strings.Join(top, ""), fwkOther)
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
// the datagram's source under N (the file changed, run reloaded), over
// IPv6 too; a
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
	// Over IPv6 (which fwknopd does not sniff), -s opens the IPv6 source.
	// Debian's client (2.6) cannot send over IPv6 ("Address family for
	// hostname not supported"): it makes the datagram, the test sends it.
	path, err := fwknop.FindClient()
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := (&fwknop.Client{Path: path, Key: fwkKey64, HMACKey: fwkHMAC64}).Make("-A", "tcp/22", "-s")
	if err != nil {
		t.Fatal(err)
	}
	g.sendUDP(cli6, srv6, spaPort, pkt)
	g.waitCounter("fwknop_accepted", 4)
	if got := g.dial(cli6, srv6, protected, openWait); got != open {
		t.Fatalf("-s over IPv6: %s -> %d: %s, want open", cli6, protected, got)
	}
	if got := g.dial(alt6, srv6, protected, filteredWait); got != filtered {
		t.Fatalf("-s over IPv6, another address: %s -> %d: %s, want filtered", alt6, protected, got)
	}
	g.mustKG(g.srv, "revoke", g.iface, cli6.String())

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

// The outcomes of a datagram the gate counts, one of which each datagram
// to the SPA port gets in the end (in XDP, or in run).
var fwknopOutcomes = []string{"fwknop_bad_hmac", "fwknop_gpg", "fwknop_replay", "fwknop_replay_full", "fwknop_lost",
	"fwknop_accepted", "fwknop_no_stanza", "fwknop_undecryptable", "fwknop_clock", "fwknop_source_required",
	"fwknop_username", "fwknop_unsupported", "fwknop_ports", "fwknop_no_service"}

// oracleCase is one datagram of the oracle test: made by the real client
// with keys and args, sent from src.
type oracleCase struct {
	what    string
	keys    *fwknop.Client
	args    []string
	src     netip.Addr
	again   int    // >0: the datagram of case again-1, sent again
	want    string // "open ADDR" or "refused"
	length  int    // >0: the datagram's length, which the case is about
	payload []byte
}

// repeatPort is tcp/22 asked for n times: a longer datagram.
func repeatPort(n int) string {
	return strings.TrimSuffix(strings.Repeat("tcp/22,", n), ",")
}

// fwknopdDecides runs Debian's fwknopd (not in test mode: its replay
// cache is only kept when it changes the firewall) on one datagram sent
// from src, with access and its digest cache in dir, in ns (a namespace
// of the test's: the firewall it changes is that namespace's, flushed as
// it exits; it stops after the one datagram). It says "open ADDR" when it added a rule for ADDR,
// "refused" when it did not, and returns its log.
func fwknopdDecides(t *testing.T, ns *netns.NS, dir, access string, n int, src netip.Addr, payload []byte) (string, string) {
	t.Helper()
	f := packet.UDP(src, srv4, 40000+uint16(n), spaPort)
	f.Payload = payload
	frame := f.Bytes()
	var pcap bytes.Buffer
	// The pcap file header (microseconds, Ethernet), then one record.
	binary.Write(&pcap, binary.LittleEndian, []uint32{0xa1b2c3d4, 2 | 4<<16, 0, 0, 65535, 1})
	binary.Write(&pcap, binary.LittleEndian, []uint32{uint32(time.Now().Unix()), 0, uint32(len(frame)), uint32(len(frame))})
	pcap.Write(frame)
	file := filepath.Join(dir, fmt.Sprintf("datagram%d.pcap", n))
	if err := os.WriteFile(file, pcap.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, ns.Cmd("fwknopd", "--foreground", "--config-file", filepath.Join(dir, "fwknopd.conf"), "--access-file", access,
		"--digest-file", filepath.Join(dir, "digest.cache"), "--pid-file", filepath.Join(dir, "fwknopd.pid"),
		"--run-dir", dir, "--pcap-file", file, "--packet-limit", "1"))
	out := r.stdout + r.stderr
	if r.code != 0 || !strings.Contains(out, "Starting fwknopd main event loop") {
		t.Fatalf("fwknopd on datagram %d: %s", n, r)
	}
	m := regexp.MustCompile(`Added access rule to FWKNOP_INPUT for (\S+) -> `).FindStringSubmatch(out)
	if m == nil {
		return "refused", out
	}
	return "open " + m[1], out
}

// knockgateDecides sends payload from src to run's gate and waits for its
// outcome: "open ADDR" when run accepted it (ADDR as its log says),
// "refused" when anything else became of it.
func (g *gate) knockgateDecides(s *service, src netip.Addr, payload []byte) string {
	g.t.Helper()
	counts := func() (sum uint64, accepted uint64) {
		st := g.status()
		for _, c := range fwknopOutcomes {
			sum += st.Counters[c]
		}
		return sum, st.Counters["fwknop_accepted"]
	}
	sum0, acc0 := counts()
	g.sendUDP(src, srv4, spaPort, payload)
	var sum, acc uint64
	eventually(g.t, 5*time.Second, "an outcome of the datagram", func() bool {
		sum, acc = counts()
		return sum > sum0
	})
	if sum != sum0+1 {
		g.t.Fatalf("one datagram, %d outcomes", sum-sum0)
	}
	if acc == acc0 {
		return "refused"
	}
	var lines []string
	for _, l := range s.out.all() {
		if strings.Contains(l, "fwknop datagram accepted") {
			lines = append(lines, l)
		}
	}
	m := regexp.MustCompile(` open=(\S+)`).FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		g.t.Fatalf("accepted, but no address in %q", lines[len(lines)-1])
	}
	return "open " + m[1]
}

// fwknopd is the oracle: one access.conf of two stanzas, and a set of
// datagrams made by Debian's fwknop client, each sent from a source, drive
// Debian's fwknopd and knockgate's run to the same decisions (open which
// address, or refuse), in the same order — the replays included, which
// each remembers across its restarts (fwknopd runs once a datagram, on
// its digest cache); the counters of each outcome, in status and the
// metric, are what the datagrams make them.
func TestFwknopdOracle(t *testing.T) {
	netns.Require(t, "fwknop", "fwknopd", "iptables")
	g := newGate(t)
	dir := t.TempDir()
	key2 := base64.StdEncoding.EncodeToString([]byte("the second stanza's rijndael key"))
	hmac2 := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("second's", 8)))
	access := filepath.Join(dir, "access.conf")
	writeAccess(t, access, fmt.Sprintf("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\n"+
		"FW_ACCESS_TIMEOUT 60\nREQUIRE_SOURCE_ADDRESS Y\n\n"+
		"SOURCE %s/32\nRESTRICT_PORTS tcp/%d\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nREQUIRE_SOURCE_ADDRESS N\n",
		fwkKey64, fwkHMAC64, alt4, fwkOther, key2, hmac2))
	// fwknopd's defaults, but for one: reading a pcap file, it leaves the
	// timestamps unchecked unless its config says otherwise.
	writeAccess(t, filepath.Join(dir, "fwknopd.conf"), "ENABLE_SPA_PACKET_AGING Y\n")
	path, err := fwknop.FindClient()
	if err != nil {
		t.Fatal(err)
	}
	first := &fwknop.Client{Path: path, Key: fwkKey64, HMACKey: fwkHMAC64}
	second := &fwknop.Client{Path: path, Key: key2, HMACKey: hmac2}
	wrongKey := &fwknop.Client{Path: path, Key: key2, HMACKey: fwkHMAC64}
	// An HMAC key no stanza has: refused in XDP.
	wrongHMAC := &fwknop.Client{Path: path, Key: fwkKey64, HMACKey: base64.StdEncoding.EncodeToString([]byte(strings.Repeat("nobody's", 8)))}
	a := []string{"-a", cli4.String()}
	cases := []oracleCase{
		{what: "-A tcp/22 -a CLIENT", keys: first, args: append([]string{"-A", "tcp/22"}, a...), src: cli4, want: "open " + cli4.String()},
		{what: "the first again", again: 1, src: cli4, want: "refused"},
		{what: "the first again, from another source", again: 1, src: alt4, want: "refused"},
		{what: "-s under REQUIRE_SOURCE_ADDRESS Y", keys: first, args: []string{"-A", "tcp/22", "-s"}, src: cli4, want: "refused"},
		{what: "-a another address", keys: first, args: []string{"-A", "tcp/22", "-a", alt4.String()}, src: cli4, want: "open " + alt4.String()},
		{what: "a port outside OPEN_PORTS", keys: first, args: append([]string{"-A", fmt.Sprintf("tcp/%d", fwkOther)}, a...), src: cli4, want: "refused"},
		{what: "22 and a port outside", keys: first, args: append([]string{"-A", fmt.Sprintf("tcp/22,tcp/%d", fwkOther)}, a...), src: cli4, want: "refused"},
		{what: "udp/22, outside OPEN_PORTS", keys: first, args: append([]string{"-A", "udp/22"}, a...), src: cli4, want: "refused"},
		{what: "the client's timeout (-f 90)", keys: first, args: append([]string{"-A", "tcp/22", "-f", "90"}, a...), src: cli4, want: "open " + cli4.String()},
		{what: "another user (-U)", keys: first, args: append([]string{"-A", "tcp/22", "-U", "someone"}, a...), src: cli4, want: "open " + cli4.String()},
		{what: "a timestamp 10 minutes old", keys: first, args: append([]string{"-A", "tcp/22", "--time-offset-minus", "10min"}, a...), src: cli4, want: "refused"},
		{what: "a command (-C)", keys: first, args: append([]string{"-C", "uptime"}, a...), src: cli4, want: "refused"},
		{what: "the wrong Rijndael key", keys: wrongKey, args: append([]string{"-A", "tcp/22"}, a...), src: cli4, want: "refused"},
		{what: "the wrong HMAC key", keys: wrongHMAC, args: append([]string{"-A", "tcp/22"}, a...), src: cli4, want: "refused"},
		{what: "stanza 2 from its source, -s under N", keys: second, args: []string{"-A", "tcp/22", "-s"}, src: alt4, want: "open " + alt4.String()},
		{what: "stanza 2's keys from another source", keys: second, args: []string{"-A", "tcp/22", "-s"}, src: cli4, want: "refused"},
		{what: "stanza 2, its RESTRICT_PORTS", keys: second, args: []string{"-A", fmt.Sprintf("tcp/%d", fwkOther), "-s"}, src: alt4, want: "refused"},
		// Lengths: fwknopd takes 400 bytes or more (the tag counted) for
		// GnuPG's and tries no Rijndael key on them (the user named: the
		// length depends on it).
		{what: "396 bytes", keys: first, args: append([]string{"-A", repeatPort(16), "-U", "root"}, a...), src: cli4, want: "open " + cli4.String(), length: 396},
		{what: "417 bytes, GnuPG's length", keys: first, args: append([]string{"-A", repeatPort(18), "-U", "root"}, a...), src: cli4, want: "refused", length: 417},
	}
	for i := range cases {
		c := &cases[i]
		if c.again > 0 {
			c.payload = cases[c.again-1].payload
			continue
		}
		if c.payload, err = c.keys.Make(c.args...); err != nil {
			t.Fatal(err)
		}
		if c.length > 0 && len(c.payload) != c.length {
			t.Fatalf("%s: the client made %d bytes", c.what, len(c.payload))
		}
	}

	oracle := netns.NewT(t, "kgt-fwkd-"+token)
	s := g.startRun(g.fwknopRunConfig(access, "metrics = \"127.0.0.1:9746\"\n"))
	for i, c := range cases {
		fwknopd, log := fwknopdDecides(t, oracle, dir, access, i, c.src, c.payload)
		kg := g.knockgateDecides(s, c.src, c.payload)
		if fwknopd != c.want || kg != c.want {
			t.Errorf("%d, %s (from %s): fwknopd %s, knockgate %s, want %s\nfwknopd's log:\n%s", i, c.what, c.src, fwknopd, kg, c.want, log)
		}
	}
	// The metric says what status does, outcome by outcome.
	st, m := g.status(), g.scrape("127.0.0.1:9746")
	for _, c := range fwknopOutcomes {
		series := fmt.Sprintf(`knockgate_fwknop_packets_total{outcome=%q}`, strings.TrimPrefix(c, "fwknop_"))
		if got := metric(m, series); got != float64(st.Counters[c]) {
			t.Errorf("%s = %v, status %s = %d", series, got, c, st.Counters[c])
		}
	}
	want := map[string]uint64{"fwknop_accepted": 6, "fwknop_replay": 2, "fwknop_bad_hmac": 1, "fwknop_gpg": 1, "fwknop_clock": 1,
		"fwknop_no_stanza": 1, "fwknop_ports": 4, "fwknop_source_required": 1, "fwknop_undecryptable": 1, "fwknop_unsupported": 1}
	for _, c := range fwknopOutcomes {
		if st.Counters[c] != want[c] {
			t.Errorf("%s %d, want %d", c, st.Counters[c], want[c])
		}
	}
	s.stop(unix.SIGTERM)
}
