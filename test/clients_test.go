package test

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/knockgate/knockgate/test/netns"
)

// The clients people knock with: knockd's knock, a browser (each knock is a
// connect that the browser retransmits), a plain TCP connect (Winbox), and
// knockgate's own knock; TCP and UDP steps, IPv4 and IPv6.
func TestClients(t *testing.T) {
	for _, c := range []struct {
		name     string
		tools    []string
		sequence string
		src, dst netip.Addr
		knock    func(g *gate)
	}{
		{
			name: "knockd", tools: []string{"knock"}, sequence: "9000,8000", src: cli4, dst: srv4,
			knock: func(g *gate) { g.mustRun(g.cli, "knock", "-v", srv4.String(), "9000", "8000") },
		},
		{
			name: "knockd udp", tools: []string{"knock"}, sequence: "7000/udp,8000", src: cli4, dst: srv4,
			knock: func(g *gate) { g.mustRun(g.cli, "knock", "-v", srv4.String(), "7000:udp", "8000:tcp") },
		},
		{
			name: "knockd all udp", tools: []string{"knock"}, sequence: "7000/udp,7001/udp", src: cli4, dst: srv4,
			knock: func(g *gate) { g.mustRun(g.cli, "knock", "-u", "-v", srv4.String(), "7000", "7001") },
		},
		{
			name: "knockd ipv6", tools: []string{"knock"}, sequence: "9000,8000", src: cli6, dst: srv6,
			knock: func(g *gate) { g.mustRun(g.cli, "knock", "-6", "-v", srv6.String(), "9000", "8000") },
		},
		{
			// Each step is a page load that gives up: the SYN and its
			// retransmission (1 s later) go unanswered, so curl times
			// out (28) rather than being refused (7). The retransmitted
			// SYN of step 1 must not reset the sequence.
			name: "browser", tools: []string{"curl"}, sequence: "9000,8000", src: cli4, dst: srv4,
			knock: func(g *gate) {
				for _, port := range []string{"9000", "8000"} {
					r := run(g.t, g.cli.Cmd("curl", "-sS", "--connect-timeout", "2.5", "http://"+srv4.String()+":"+port+"/"))
					if r.code != 28 {
						g.t.Fatalf("curl to knock port %s: %s, want exit 28 (connect timeout)", port, r)
					}
				}
				if n := g.status().Counters["knock_repeated"]; n == 0 {
					g.t.Errorf("counter knock_repeated = 0: no retransmitted SYN was seen")
				}
			},
		},
		{
			name: "tcp connect", sequence: "9000,8000", src: cli4, dst: srv4,
			knock: func(g *gate) { g.knockTCP(cli4, srv4, 9000, 8000) },
		},
		{
			name: "tcp connect ipv6", sequence: "9000,8000", src: cli6, dst: srv6,
			knock: func(g *gate) { g.knockTCP(cli6, srv6, 9000, 8000) },
		},
		{
			name: "knockgate knock", sequence: "9000,8000", src: cli4, dst: srv4,
			knock: func(g *gate) { g.mustKG(g.cli, "knock", srv4.String(), "9000", "8000") },
		},
		{
			name: "knockgate knock udp", sequence: "7000/udp,8000", src: cli4, dst: srv4,
			knock: func(g *gate) { g.mustKG(g.cli, "knock", srv4.String(), "7000/udp", "8000/tcp") },
		},
		{
			name: "knockgate knock ipv6", sequence: "9000,7000/udp", src: cli6, dst: srv6,
			knock: func(g *gate) { g.mustKG(g.cli, "knock", "-6", srv6.String(), "9000", "7000/udp") },
		},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			netns.Require(t, append([]string{"ip", "nsenter"}, c.tools...)...)
			t.Parallel()
			g := newGate(t)
			g.attach("--sequence", c.sequence, "--step-timeout", "30s", "--open", "1m")
			g.expect(filtered, c.src, c.dst)
			c.knock(g)
			g.expect(open, c.src, c.dst)
			alt := alt4
			if c.src.Is6() {
				alt = alt6
			}
			g.expect(filtered, alt, c.dst)
		})
	}
}

// Scanners see the protected port and the knock ports as filtered (no RST
// comes back), and scanning does not open the gate. A closed port that is
// neither shows that RSTs would have been seen.
func TestScanners(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "nmap", "hping3")
	t.Parallel()
	g := newGate(t)
	// A three-step sequence whose last step is never scanned: whatever
	// order nmap probes in, it cannot complete the sequence by chance.
	g.attach("--sequence", "9000,8000,7000", "--step-timeout", "30s")

	nmap := func(args ...string) map[string]string {
		out := g.mustRun(g.cli, "nmap", append([]string{"-n", "-Pn", "-sS", "--max-retries", "1"}, args...)...)
		states := map[string]string{}
		for _, m := range regexp.MustCompile(`(?m)^(\d+)/tcp\s+(\S+)`).FindAllStringSubmatch(out, -1) {
			states[m[1]] = m[2]
		}
		return states
	}
	want := map[string]string{"22": "filtered", "9000": "filtered", "8000": "filtered", "8080": "closed"}
	got := nmap("-p", "22,8000,8080,9000", srv4.String())
	for port, state := range want {
		if got[port] != state {
			t.Errorf("nmap: port %s %q, want %q (all: %v)", port, got[port], state, got)
		}
	}
	got6 := nmap("-6", "-p", "22,9000,8080", srv6.String())
	for _, port := range []string{"22", "9000", "8080"} {
		if got6[port] != want[port] {
			t.Errorf("nmap -6: port %s %q, want %q (all: %v)", port, got6[port], want[port], got6)
		}
	}

	hping := func(port string) string {
		// hping3 exits 1 when nothing answers; the output says so.
		r := run(t, g.cli.Cmd("hping3", "-S", "-p", port, "-c", "1", srv4.String()))
		return r.stdout + r.stderr
	}
	if out := hping("22"); !strings.Contains(out, " 0 packets received") || strings.Contains(out, "flags=") {
		t.Errorf("hping3 -S -p 22 got a reply:\n%s", out)
	}
	if out := hping("8080"); !strings.Contains(out, "flags=RA") {
		t.Errorf("hping3 -S -p 8080 (closed, unprotected) got no RST:\n%s", out)
	}

	st := g.status()
	if s, ok := st.source(cli4); ok && s.State == "open" {
		t.Fatalf("scanning opened the gate: %+v", s)
	}
	if n := st.Counters["granted"]; n != 0 {
		t.Fatalf("counter granted = %d after scanning, want 0", n)
	}

	// The same probes, once the scanner is granted, get answers: the
	// silence above was the gate.
	g.mustKG(g.srv, "grant", g.iface, cli4.String(), "--for", "1m")
	if out := hping("22"); !strings.Contains(out, "flags=SA") {
		t.Errorf("hping3 -S -p 22 from a granted source got no SYN-ACK:\n%s", out)
	}
	if got := nmap("-p", "22", srv4.String()); got["22"] != "open" {
		t.Errorf("nmap from a granted source: port 22 %q, want open", got["22"])
	}
}

// mustRun runs a tool in ns, fails the test unless it succeeds, and returns
// its combined output.
func (g *gate) mustRun(ns *netns.NS, name string, args ...string) string {
	g.t.Helper()
	r := run(g.t, ns.Cmd(name, args...))
	if r.code != 0 {
		g.t.Fatalf("%s %s in %s: %s", name, strings.Join(args, " "), ns.Name, r)
	}
	return r.stdout + r.stderr
}
