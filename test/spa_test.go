package test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/netns"
)

const spaPort = 62201

// keyFile writes keys (key-file lines) to a new file of mode 0600 and
// returns its path.
func keyFile(t *testing.T, name string, keys ...spa.Key) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# test keys\n")
	for _, k := range keys {
		b.WriteString(k.Line() + "\n")
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newKey(t *testing.T, id uint32, name string) spa.Key {
	t.Helper()
	k, err := spa.NewKey(id, name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// spaCounter is one counter of the gate on the server interface.
func (g *gate) spaCounter(name string) uint64 {
	g.t.Helper()
	return g.status().Counters[name]
}

// natGate is a gate whose client sits behind a masquerading router: the
// server sees the router's address, never the client's.
type natGate struct {
	*gate
	router      *netns.NS
	client      *netns.NS
	routerOut4  netip.Addr // the router's address on the server's side
	routerOut6  netip.Addr
	client4     netip.Addr
	client6     netip.Addr
	serverIface string
}

func newNATGate(t *testing.T) *natGate {
	t.Helper()
	netns.Require(t, "nft", "sysctl")
	g := newGate(t)
	n := &natGate{gate: g,
		// Masquerade takes the outside interface's preferred address.
		routerOut4: cli4, routerOut6: cli6,
		client4: netip.MustParseAddr("192.168.77.2"), client6: netip.MustParseAddr("fd00:78::2")}
	// The router takes the place of the plain client: its outside end is
	// the veth newGate made (on the server's subnet), its inside end a new
	// pair to a client of its own.
	n.router = g.cli
	n.client = netns.NewT(t, g.cli.Name+"n")
	in, out := g.cliIface[:len(g.cliIface)-1]+"r", g.cliIface[:len(g.cliIface)-1]+"n"
	if err := netns.Veth(n.router, in, n.client, out); err != nil {
		t.Fatal(err)
	}
	ruleset := fmt.Sprintf("table inet kgtnat { chain post { type nat hook postrouting priority srcnat; oifname %q masquerade; }; }", g.cliIface)
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{n.router, []string{"ip", "addr", "add", "192.168.77.1/24", "dev", in}},
		{n.router, []string{"ip", "-6", "addr", "add", "fd00:78::1/64", "dev", in, "nodad"}},
		{n.router, []string{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"}},
		{n.router, []string{"nft", ruleset}},
		{n.client, []string{"ip", "addr", "add", n.client4.String() + "/24", "dev", out}},
		{n.client, []string{"ip", "-6", "addr", "add", n.client6.String() + "/64", "dev", out, "nodad"}},
		{n.client, []string{"ip", "route", "add", "default", "via", "192.168.77.1"}},
		{n.client, []string{"ip", "-6", "route", "add", "default", "via", "fd00:78::1"}},
	} {
		if _, err := c.ns.Run(c.args[0], c.args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// dialFrom connects from the NATed client to the server's protected port.
func (n *natGate) dialFrom(dst netip.Addr, wait time.Duration) string {
	n.t.Helper()
	var outcome string
	err := n.client.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, protected).String(), wait)
		if err == nil {
			c.Close()
			outcome = open
			return nil
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			outcome = filtered
			return nil
		}
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return outcome
}

// A client behind NAT sends SPA with the address left zero: the gate opens
// the address the packet arrives from (the router's), over IPv4 and IPv6,
// and the client's connection through the router gets in.
func TestSPAThroughNAT(t *testing.T) {
	n := newNATGate(t)
	key := newKey(t, 11, "roadwarrior")
	srvKeys := keyFile(t, "server.keys", key)
	cliKey := keyFile(t, "client.key", key)
	n.attach("--sequence", "none", "--spa-keys", srvKeys)
	st := n.status()
	if len(st.Config.Sequence) != 0 {
		t.Errorf("sequence %v, want none", st.Config.Sequence)
	}
	for _, c := range []struct {
		srv, outside netip.Addr
	}{{srv4, n.routerOut4}, {srv6, n.routerOut6}} {
		if got := n.dialFrom(c.srv, filteredWait); got != filtered {
			t.Fatalf("before SPA, [%s]:%d: %s, want filtered", c.srv, protected, got)
		}
		r := run(t, n.client.Cmd(kgBin, "knock", c.srv.String(), "--spa-key", cliKey, "--check", strconv.Itoa(protected)))
		if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("spa %s %d/udp key 11 (roadwarrior)", c.srv, spaPort)) ||
			!strings.Contains(r.stdout, fmt.Sprintf("open %s %d/tcp", c.srv, protected)) {
			t.Fatalf("knock --spa-key through NAT: %s", r)
		}
		if got := n.dialFrom(c.srv, openWait); got != open {
			t.Fatalf("after SPA, [%s]:%d: %s, want open", c.srv, protected, got)
		}
		st := n.status()
		if _, ok := st.source(c.outside); !ok {
			t.Errorf("the router's address %s is not granted: %+v", c.outside, st.Sources)
		}
		if _, ok := st.source(n.client4); ok {
			t.Errorf("the client's own address was granted: the gate cannot have seen it")
		}
	}
	if got := n.spaCounter("spa_accepted"); got != 2 {
		t.Errorf("spa_accepted %d, want 2", got)
	}
}

// A wrong key: the port stays shut, and the client's error names the clock
// window and where to look, so a user can tell a key from a clock problem.
func TestSPAWrongKeySaysWhy(t *testing.T) {
	g := newGate(t)
	key := newKey(t, 5, "right")
	g.attach("--spa-keys", keyFile(t, "server.keys", key))
	wrong := key
	wrong.Secret[0] ^= 1
	r := run(t, g.cli.Cmd(kgBin, "knock", srv4.String(), "--spa-key", keyFile(t, "client.key", wrong), "--check", strconv.Itoa(protected)))
	if r.code != 1 || !strings.Contains(r.stderr, "did not open within 3s of the SPA packet") ||
		!strings.Contains(r.stderr, "more than its window (30s") || !strings.Contains(r.stderr, "spa_bad_tag") {
		t.Fatalf("knock with a wrong key: %s", r)
	}
	if got := g.spaCounter("spa_bad_tag"); got != 1 {
		t.Errorf("spa_bad_tag %d, want 1", got)
	}
	// A client key file others can read is refused before anything is sent.
	loose := keyFile(t, "loose.key", key)
	os.Chmod(loose, 0o644)
	r = run(t, g.cli.Cmd(kgBin, "knock", srv4.String(), "--spa-key", loose))
	if r.code != 2 || !strings.Contains(r.stderr, "is open to group or others (mode 0644)") {
		t.Errorf("knock with a loose key file: %s", r)
	}
}

// packetSocket is an AF_PACKET socket in ns bound to iface, seeing every
// frame (ETH_P_ALL: only such sockets see outgoing frames too), whose reads
// time out after timeout.
func packetSocket(t *testing.T, ns *netns.NS, iface string, timeout unix.Timeval) int {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", iface, err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &timeout); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}

// capture reads, in ns, the UDP payloads sent to port on iface (outgoing
// frames included), until stop.
func capture(t *testing.T, ns *netns.NS, iface string, port uint16) (payloads chan []byte, stop func()) {
	t.Helper()
	// A read times out now and then, so the reader sees stop.
	fd := packetSocket(t, ns, iface, unix.Timeval{Usec: 100000})
	payloads = make(chan []byte, 16)
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fd)
		buf := make([]byte, 2048)
		for !stopped.Load() {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // timed out: look at stop again
			}
			if p := udpPayload(buf[:n], port); p != nil {
				select {
				case payloads <- p:
				default:
				}
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { stopped.Store(true); <-done }) }
	t.Cleanup(stop)
	return payloads, stop
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// udpPayload is the payload of an Ethernet frame's IPv4 or IPv6 UDP
// datagram to port, or nil.
func udpPayload(f []byte, port uint16) []byte {
	if len(f) < 14 {
		return nil
	}
	var l4 []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		ihl := int(f[14]&0xf) * 4
		if len(f) < 14+ihl+8 || f[14+9] != 17 {
			return nil
		}
		l4 = f[14+ihl:]
	case 0x86dd:
		if len(f) < 14+40+8 || f[14+6] != 17 {
			return nil
		}
		l4 = f[14+40:]
	default:
		return nil
	}
	if binary.BigEndian.Uint16(l4[2:]) != port {
		return nil
	}
	n := int(binary.BigEndian.Uint16(l4[4:]))
	if n < 8 || n > len(l4) {
		return nil
	}
	return append([]byte(nil), l4[8:n]...)
}

// sendUDP sends payload from the client namespace to dst:port (from src, or
// the default source when src is invalid).
func (g *gate) sendUDP(src, dst netip.Addr, port uint16, payload []byte) {
	g.t.Helper()
	err := g.cli.Do(func() error {
		var laddr *net.UDPAddr
		if src.IsValid() {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, port)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
	if err != nil {
		g.t.Fatal(err)
	}
}

// A packet captured on the wire and sent again, from the same source or
// another, opens nothing: the gate took its timestamp already.
func TestSPAReplayFromTheWire(t *testing.T) {
	g := newGate(t)
	key := newKey(t, 21, "phone")
	g.attach("--spa-keys", keyFile(t, "server.keys", key))
	for _, c := range []struct{ srv, cli, alt netip.Addr }{{srv4, cli4, alt4}, {srv6, cli6, alt6}} {
		payloads, stop := capture(t, g.cli, g.cliIface, spaPort)
		g.mustKG(g.cli, "knock", c.srv.String(), "--spa-key", keyFile(t, "client.key", key))
		var wire []byte
		select {
		case wire = <-payloads:
		case <-time.After(5 * time.Second):
			t.Fatal("no SPA datagram seen on the wire")
		}
		stop()
		if len(wire) != spa.Len {
			t.Fatalf("captured %d bytes, want %d", len(wire), spa.Len)
		}
		if p, err := spa.Verify(wire, key.Secret); err != nil || p.KeyID != key.ID {
			t.Fatalf("captured packet: %+v, %v", p, err)
		}
		g.expect(open, c.cli, c.srv)
		replays := g.spaCounter("spa_replay")
		g.mustKG(g.srv, "revoke", g.iface, c.cli.String())
		g.expect(filtered, c.cli, c.srv)
		g.sendUDP(c.cli, c.srv, spaPort, wire)
		g.sendUDP(c.alt, c.srv, spaPort, wire)
		eventually(t, 2*time.Second, "both replays counted", func() bool { return g.spaCounter("spa_replay") == replays+2 })
		g.expect(filtered, c.cli, c.srv)
		g.expect(filtered, c.alt, c.srv)
	}
}

// Keys change live with set: a removed key stops at once, a new one works,
// a key file others can read is refused and changes nothing; and a reload
// of run does the same from its config file.
func TestSPAKeyRotation(t *testing.T) {
	g := newGate(t)
	old, next := newKey(t, 1, "old"), newKey(t, 2, "next")
	srvKeys := keyFile(t, "server.keys", old)
	g.attach("--spa-keys", srvKeys)
	oldKey, nextKey := keyFile(t, "old.key", old), keyFile(t, "next.key", next)
	knock := func(keyPath string, want string) {
		t.Helper()
		g.mustKG(g.cli, "knock", srv4.String(), "--spa-key", keyPath)
		g.expect(want, cli4, srv4)
		g.kg(g.srv, "revoke", g.iface, cli4.String())
	}
	knock(oldKey, open)
	gen := g.status().Config.Generation
	out := g.mustKG(g.srv, "set", g.iface, "--spa-keys", keyFile(t, "rotated.keys", next))
	if !strings.Contains(out, "1 SPA keys from") {
		t.Errorf("set --spa-keys: %q", out)
	}
	if st := g.status(); st.Config.Generation != gen {
		t.Errorf("a key change alone wrote the configuration (generation %d -> %d)", gen, st.Config.Generation)
	}
	unknown := g.spaCounter("spa_unknown_key")
	knock(oldKey, filtered)
	if got := g.spaCounter("spa_unknown_key"); got != unknown+1 {
		t.Errorf("spa_unknown_key %d, want %d", got, unknown+1)
	}
	knock(nextKey, open)
	// attach on the gate with other keys is refused, not silently ignored.
	if r := g.kg(g.srv, "attach", g.iface, "--spa-keys", srvKeys); r.code == 0 || !strings.Contains(r.stderr, "other SPA keys") {
		t.Errorf("attach with other keys on the existing gate: %s", r)
	}

	loose := keyFile(t, "loose.keys", old)
	os.Chmod(loose, 0o640)
	r := g.kg(g.srv, "set", g.iface, "--spa-keys", loose)
	if r.code != 2 || !strings.Contains(r.stderr, "is open to group or others (mode 0640)") {
		t.Errorf("set with a group-readable key file: %s", r)
	}
	knock(nextKey, open)

	// The same through run's config file and a reload.
	g.mustKG(g.srv, "detach", g.iface)
	both := keyFile(t, "run.keys", old)
	s := g.startRun(fmt.Sprintf("interfaces = [%q]\nprotect = \"%d\"\nspa_keys = %q\n", g.iface, protected, both))
	knock(oldKey, open)
	knock(nextKey, filtered)
	if err := os.WriteFile(both, []byte(next.Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.reload("")
	knock(oldKey, filtered)
	knock(nextKey, open)
	s.stop(unix.SIGTERM)
}
