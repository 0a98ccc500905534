package test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// sessionPort is a protected port with a line-echo server behind it: a
// session that exchanges data, as ssh does.
const sessionPort = 2200

// echo serves port in ns: every line read is written back.
func echo(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen on %d in %s: %v", port, ns.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// session is a socat client's connection, driven through its stdin and
// stdout.
type session struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

// openSession connects socat in ns to dst:port.
func openSession(t *testing.T, ns *netns.NS, dst netip.Addr, port int) *session {
	t.Helper()
	addr := "TCP4:" + netip.AddrPortFrom(dst, uint16(port)).String()
	if dst.Is6() {
		addr = "TCP6:" + netip.AddrPortFrom(dst, uint16(port)).String()
	}
	cmd := ns.Cmd("socat", "-", addr+",connect-timeout=3")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start socat: %v", err)
	}
	s := &session{t: t, cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return s
}

// exchange sends a line and waits (a few TCP retransmissions' worth) for its
// echo: the session carries data both ways.
func (s *session) exchange(what, line string) {
	s.t.Helper()
	if _, err := fmt.Fprintln(s.in, line); err != nil {
		s.t.Fatalf("%s: write to socat: %v", what, err)
	}
	select {
	case got, ok := <-s.lines:
		if !ok || got != line {
			s.t.Fatalf("%s: session echoed %q (open: %v), want %q", what, got, ok, line)
		}
	case <-time.After(4 * time.Second):
		s.t.Fatalf("%s: no echo of %q within 4s: the session is cut off", what, line)
	}
}

// flowsStatus is the flows part of `status --json`.
type flowsStatus struct {
	Enabled bool `json:"enabled"`
	Count   int  `json:"count"`
	Max     int  `json:"max"`
	Entries []struct {
		Proto, Local, Remote string
		Answered             bool
	} `json:"entries"`
}

func (g *gate) flows() flowsStatus {
	g.t.Helper()
	var st struct {
		Flows flowsStatus `json:"flows"`
	}
	out := g.mustKG(g.srv, "status", g.iface, "--json", "--flows")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		g.t.Fatalf("status --json --flows: %v\n%s", err, out)
	}
	return st.Flows
}

// A session a grant let in outlives the grant (revoked over IPv4, expired
// over IPv6) while a new connection from the same source is filtered.
func TestSessionOutlivesGrant(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat")
	t.Parallel()
	g := newGate(t)
	echo(t, g.srv, sessionPort)
	g.attach("--protect", fmt.Sprintf("%d,%d", protected, sessionPort), "--no-grant-self")

	for _, c := range []struct {
		name     string
		cli, srv netip.Addr
		expire   bool
	}{{"ipv4", cli4, srv4, false}, {"ipv6", cli6, srv6, true}} {
		t.Run(c.name, func(t *testing.T) {
			if got := g.dial(c.cli, c.srv, sessionPort, filteredWait); got != filtered {
				t.Fatalf("before a grant: %s, want filtered", got)
			}
			forDur := "1m"
			if c.expire {
				forDur = "2s"
			}
			g.mustKG(g.srv, "grant", g.iface, c.cli.String(), "--for", forDur)
			s := openSession(t, g.cli, c.srv, sessionPort)
			s.exchange("during the grant", "hello "+c.name)
			if c.expire {
				g.waitFiltered(c.cli, c.srv, 10*time.Second)
			} else {
				g.mustKG(g.srv, "revoke", g.iface, c.cli.String())
				g.expect(filtered, c.cli, c.srv)
			}
			s.exchange("after the grant", "still here "+c.name)
			if got := g.dial(c.cli, c.srv, sessionPort, filteredWait); got != filtered {
				t.Errorf("new connection after the grant: %s, want filtered", got)
			}
			fs := g.flows()
			found := false
			for _, e := range fs.Entries {
				remote, err := netip.ParseAddrPort(e.Remote)
				if e.Proto == "tcp" && strings.HasSuffix(e.Local, ":"+strconv.Itoa(sessionPort)) && e.Answered &&
					err == nil && remote.Addr() == c.cli {
					found = true
				}
			}
			if !found {
				t.Errorf("status --flows lists no answered flow from %d to %s: %+v", sessionPort, c.cli, fs)
			}
			s.exchange("once more", "bye "+c.name)
		})
	}

	// --flows=false: the session ends with the grant, as it did before.
	g.mustKG(g.srv, "set", g.iface, "--flows=false")
	g.mustKG(g.srv, "grant", g.iface, cli4.String(), "--for", "1m")
	s := openSession(t, g.cli, srv4, sessionPort)
	s.exchange("flows off, during the grant", "x")
	g.mustKG(g.srv, "revoke", g.iface, cli4.String())
	if _, err := fmt.Fprintln(s.in, "y"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-s.lines:
		t.Errorf("flows off: the session still echoed %q after the grant", got)
	case <-time.After(1500 * time.Millisecond):
	}
}

// A session open before the gate attaches (the operator's own, attached
// with --no-grant-self) goes on: the gate seeds it from the socket table,
// so even the client speaking first gets through.
func TestSessionBeforeAttach(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat")
	t.Parallel()
	g := newGate(t)
	echo(t, g.srv, sessionPort)
	echo(t, g.srv, sessionPort+1)
	s4 := openSession(t, g.cli, srv4, sessionPort)
	s6 := openSession(t, g.cli, srv6, sessionPort)
	later := openSession(t, g.cli, srv4, sessionPort+1)
	s4.exchange("before attach", "a")
	s6.exchange("before attach", "a")
	later.exchange("before attach", "a")
	g.attach("--protect", fmt.Sprintf("%d,%d", protected, sessionPort), "--no-grant-self")
	s4.exchange("after attach", "b")
	s6.exchange("after attach", "b")
	later.exchange("unprotected, after attach", "b")
	if got := g.dial(cli4, srv4, sessionPort, filteredWait); got != filtered {
		t.Errorf("a new connection: %s, want filtered", got)
	}

	// So does one on a port that set protects later.
	g.mustKG(g.srv, "set", g.iface, "--protect", fmt.Sprintf("%d,%d,%d", protected, sessionPort, sessionPort+1))
	later.exchange("after set protects its port", "c")
	if got := g.dial(cli4, srv4, sessionPort+1, filteredWait); got != filtered {
		t.Errorf("a new connection to the newly protected port: %s, want filtered", got)
	}
	s4.exchange("after set", "d")
}

// A one-answer DNS server for tests: A and AAAA for every name.
func dnsServer(t *testing.T, ns *netns.NS, addr netip.AddrPort, a4, a6 netip.Addr) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("DNS server on %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply := dnsAnswer(buf[:n], a4, a6); reply != nil {
				pc.WriteTo(reply, from)
			}
		}
	}()
}

// dnsAnswer answers a one-question query for A or AAAA.
func dnsAnswer(q []byte, a4, a6 netip.Addr) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 {
		end += int(q[end]) + 1
	}
	end++
	if end+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end:])
	question := q[12 : end+4]
	r := append([]byte{}, q[:2]...)
	r = append(r, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0) // response, RD RA; 1 question
	r = append(r, question...)
	var data []byte
	switch qtype {
	case 1:
		b := a4.As4()
		data = b[:]
	case 28:
		b := a6.As16()
		data = b[:]
	}
	if data != nil {
		binary.BigEndian.PutUint16(r[6:], 1)
		r = append(r, 0xc0, 12) // the question's name
		r = binary.BigEndian.AppendUint16(r, qtype)
		r = append(r, 0, 1, 0, 0, 0, 60) // IN, TTL 60
		r = binary.BigEndian.AppendUint16(r, uint16(len(data)))
		r = append(r, data...)
	}
	return r
}

// --protect all: the server keeps using the network (DNS over UDP, HTTP
// over TCP, IPv4 and IPv6, neighbour discovery) while a scanner sees every
// port filtered, TCP and UDP.
func TestProtectAllHostKeepsWorking(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "dig", "curl", "nmap")
	t.Parallel()
	g := newGate(t)
	dnsServer(t, g.cli, netip.AddrPortFrom(cli4, 53), cli4, cli6)
	dnsServer(t, g.cli, netip.AddrPortFrom(cli6, 53), cli4, cli6)
	var web net.Listener
	if err := g.cli.Do(func() (err error) {
		web, err = net.Listen("tcp", "[::]:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })
	go http.Serve(web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "page for %s\n", r.RemoteAddr)
	}))

	g.mustKG(g.srv, "attach", g.iface, "--protect", "all", "--no-grant-self")
	for _, c := range []struct {
		name string
		dns  netip.Addr
		qt   string
		want netip.Addr
	}{{"ipv4", cli4, "A", cli4}, {"ipv6", cli6, "AAAA", cli6}} {
		out := g.mustRun(g.srv, "dig", "@"+c.dns.String(), "web.test", c.qt, "+short", "+tries=1", "+time=2")
		if strings.TrimSpace(out) != c.want.String() {
			t.Errorf("%s: dig web.test %s: %q, want %s", c.name, c.qt, out, c.want)
			continue
		}
		url := "http://" + netip.AddrPortFrom(c.want, 8080).String() + "/"
		page := g.mustRun(g.srv, "curl", "-sS", "--max-time", "5", url)
		if !strings.HasPrefix(page, "page for ") {
			t.Errorf("%s: curl %s: %q", c.name, url, page)
		}
	}
	fs := g.flows()
	if !fs.Enabled || fs.Count < 3 || fs.Max < 1 {
		t.Errorf("status flows after DNS and HTTP: %+v, want enabled with flows", fs)
	}

	// The scanner (the client namespace's other addresses) sees nothing:
	// not the web server's port 22 listener, not a closed port's RST, not a
	// closed UDP port's ICMP.
	states := func(out, proto string) map[string]string {
		m := map[string]string{}
		for _, s := range regexp.MustCompile(`(?m)^(\d+)/`+proto+`\s+(\S+)`).FindAllStringSubmatch(out, -1) {
			m[s[1]] = s[2]
		}
		return m
	}
	ports := "1-1024,2200,8000,8080,9000"
	for _, c := range []struct {
		name string
		args []string
	}{
		{"ipv4", []string{"-S", alt4.String(), "-e", g.cliIface, srv4.String()}},
		{"ipv6", []string{"-6", "-S", alt6.String(), "-e", g.cliIface, srv6.String()}},
	} {
		out := g.mustRun(g.cli, "nmap", append([]string{"-n", "-Pn", "-sS", "--max-retries", "0", "-T5", "-p", ports}, c.args...)...)
		if !strings.Contains(out, "1028 filtered tcp ports") && !strings.Contains(out, "All 1028 scanned ports") {
			t.Errorf("%s: nmap -sS: not every port filtered:\n%s", c.name, out)
		}
		if m := states(out, "tcp"); len(m) != 0 {
			t.Errorf("%s: nmap -sS found %v", c.name, m)
		}
		out = g.mustRun(g.cli, "nmap", append([]string{"-n", "-Pn", "-sU", "--max-retries", "0", "-p", "53,68,123,161,5353"}, c.args...)...)
		for port, state := range states(out, "udp") {
			if state != "open|filtered" {
				t.Errorf("%s: nmap -sU: port %s %s, want open|filtered:\n%s", c.name, port, state, out)
			}
		}
	}

	// The knock still opens the gate, every port of it.
	g.mustKG(g.cli, "knock", srv4.String(), "9000", "8000")
	g.expect(open, cli4, srv4)
	g.expect(filtered, alt4, srv4)
}

// The flow table is the gate's: a session outlives its grant across a stop
// and a start of run (the gate adopted with its flows), and a reload that
// turns on --protect all keeps it too.
func TestRunKeepsFlows(t *testing.T) {
	netns.Require(t, "ip", "nsenter", "socat")
	t.Parallel()
	g := newGate(t)
	echo(t, g.srv, sessionPort)
	config := func(protect string) string {
		return fmt.Sprintf("interfaces = [%q]\nsequence = \"9000,8000\"\nprotect = %q\nflow_idle_tcp = \"1h\"\n", g.iface, protect)
	}
	s := g.startRun(config(fmt.Sprintf("%d,%d", protected, sessionPort)))
	g.knockTCP(cli4, srv4, 9000, 8000)
	sess := openSession(t, g.cli, srv4, sessionPort)
	sess.exchange("during the grant", "one")
	g.mustKG(g.srv, "revoke", g.iface, cli4.String())
	sess.exchange("after the grant", "two")
	if code := s.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("run exited %d on SIGTERM", code)
	}
	sess.exchange("with run stopped", "three")
	s = g.startRunAt(s.path, nil)
	s.waitLog(time.Second, "gate adopted")
	sess.exchange("after run started again", "four")
	if fs := g.flows(); !fs.Enabled || fs.Count < 1 {
		t.Errorf("flows after the restart: %+v", fs)
	}
	s.reload(config("all"))
	sess.exchange("after a reload to protect all", "five")
	if got := g.dial(cli4, srv4, sessionPort, filteredWait); got != filtered {
		t.Errorf("a new connection after the grant: %s, want filtered", got)
	}
	if code := s.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("run exited %d on SIGTERM", code)
	}
}
