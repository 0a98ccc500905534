//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/netns"
)

// closedPort finds a port with nothing listening on it: bind, note, close.
func closedPort(t *testing.T, network, addr string) uint16 {
	t.Helper()
	var ap netip.AddrPort
	if strings.HasPrefix(network, "udp") {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Skipf("%s %s: %v", network, addr, err)
		}
		ap = netip.MustParseAddrPort(c.LocalAddr().String())
		c.Close()
	} else {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Skipf("%s %s: %v", network, addr, err)
		}
		ap = netip.MustParseAddrPort(l.Addr().String())
		l.Close()
	}
	return ap.Port()
}

func TestKnockLocal(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			tcpNet, udpNet := "tcp4", "udp4"
			if strings.Contains(host, ":") {
				tcpNet, udpNet = "tcp6", "udp6"
			}
			tcp := closedPort(t, tcpNet, net.JoinHostPort(host, "0"))
			udp := closedPort(t, udpNet, net.JoinHostPort(host, "0"))
			// A closed port answers with RST or ICMP: a knock does not care.
			r := invoke(t, nil, "knock", host, fmt.Sprint(tcp), fmt.Sprintf("%d/udp", udp), fmt.Sprintf("%d:tcp", tcp), "--delay", "0")
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			want := fmt.Sprintf("knock %s %d/tcp\nknock %s %d/udp\nknock %s %d/tcp\n", host, tcp, host, udp, host, tcp)
			if r.stdout != want {
				t.Errorf("stdout %q, want %q", r.stdout, want)
			}
		})
	}
}

func TestKnockListener(t *testing.T) {
	// A knock at an open TCP port is a SYN like any other; whatever the
	// listener makes of it, knocking must succeed.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := netip.MustParseAddrPort(l.Addr().String()).Port()
	if err := knock(t.Context(), netip.MustParseAddr("127.0.0.1"), policy.Port{Num: port, Proto: policy.TCP}); err != nil {
		t.Fatal(err)
	}
}

func TestKnockBadHost(t *testing.T) {
	// Not a valid domain name: the resolver rejects it without asking DNS.
	r := invoke(t, nil, "knock", "bad..host", "9000")
	if r.code != 1 || !strings.HasPrefix(r.stderr, `knockgate: resolve "bad..host": `) || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestResolveLiterals(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":        "192.0.2.1",
		"[2001:db8::1]":    "2001:db8::1",
		"::ffff:192.0.2.1": "192.0.2.1",
		"fe80::1%lo":       "fe80::1%lo",
	} {
		got, err := resolve(t.Context(), in, false, false)
		if err != nil || got.String() != want {
			t.Errorf("%q: %v, %v; want %s", in, got, err, want)
		}
	}
}

// A TCP knock is exactly one SYN: no retransmission, and no RST when the
// socket is abandoned. Watched with a raw socket in a fresh namespace, so
// that no other traffic is seen.
func TestKnockSendsOneSYN(t *testing.T) {
	netns.Require(t, "ip")
	ns := netns.NewT(t, fmt.Sprintf("kgc-tk-%d", os.Getpid()))
	const knockPort, markPort = 9000, 9001
	lo := netip.MustParseAddr("127.0.0.1")
	err := ns.Do(func() error {
		raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(raw)
		// Only a safety net against a hang; nothing is timed.
		tv := unix.Timeval{Sec: 30}
		if err := unix.SetsockoptTimeval(raw, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		// Closed ports: the RSTs they answer with go the other way
		// (source port knockPort), so a packet *to* knockPort can only
		// come from the knocking socket.
		if err := knock(t.Context(), lo, policy.Port{Num: knockPort, Proto: policy.TCP}); err != nil {
			return err
		}
		// The marker: once it is seen, everything the first knock sent
		// before it has been seen too.
		if err := knock(t.Context(), lo, policy.Port{Num: markPort, Proto: policy.TCP}); err != nil {
			return err
		}
		var toKnock []string
		buf := make([]byte, 1500)
		for {
			n, _, err := unix.Recvfrom(raw, buf, 0)
			if err != nil {
				return fmt.Errorf("read raw socket: %w", err)
			}
			pkt := buf[:n]
			ihl := int(pkt[0]&0x0f) * 4
			if n < ihl+14 {
				continue
			}
			dport := binary.BigEndian.Uint16(pkt[ihl+2:])
			flags := pkt[ihl+13]
			if dport == knockPort {
				toKnock = append(toKnock, fmt.Sprintf("flags %#x", flags))
			}
			if dport == markPort {
				break
			}
		}
		if len(toKnock) != 1 || toKnock[0] != "flags 0x2" {
			return fmt.Errorf("packets to the knock port: %v, want one SYN (flags 0x2)", toKnock)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// --service asks for services in version-2 packets, spa.MaxRequest each,
// stamped 1 ms apart; without it, one version-1 packet asks for all.
func TestKnockSPAServices(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := fmt.Sprint(netip.MustParseAddrPort(conn.LocalAddr().String()).Port())
	const hexKey = "00112233445566778899aabbccddeeff"
	secret, _ := spa.ParseSecret(hexKey)
	read := func(n int) []spa.Packet {
		t.Helper()
		var out []spa.Packet
		buf := make([]byte, 1500)
		for range n {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // a safety net, not a measurement
			m, err := conn.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			p, err := spa.Verify(buf[:m], secret)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}

	names := []string{"web", "rdp", "a", "b", "c", "d"}
	r := invoke(t, nil, "knock", "127.0.0.1", "--spa-key", hexKey, "--key-id", "7", "--spa-port", port, "--service", strings.Join(names, ","))
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := fmt.Sprintf("spa 127.0.0.1 %s/udp key 7 (key) services web,rdp,a,b\nspa 127.0.0.1 %s/udp key 7 (key) services c,d\n", port, port)
	if r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	ps := read(2)
	if !reflect.DeepEqual(ps[0].Request, spa.RequestOf(names[:4])) || !reflect.DeepEqual(ps[1].Request, spa.RequestOf(names[4:])) {
		t.Errorf("requests %v, %v", ps[0].Request, ps[1].Request)
	}
	if d := ps[1].Time.Sub(ps[0].Time); d < time.Millisecond {
		t.Errorf("second packet stamped %s after the first, want at least 1ms", d)
	}

	r = invoke(t, nil, "knock", "127.0.0.1", "--spa-key", hexKey, "--key-id", "7", "--spa-port", port)
	if r.code != 0 || r.stdout != fmt.Sprintf("spa 127.0.0.1 %s/udp key 7 (key)\n", port) {
		t.Fatalf("without --service: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if p := read(1)[0]; p.Request != nil {
		t.Errorf("without --service, a request %v", p.Request)
	}
}

// From a namespace with only a loopback, no address outside it has a
// route: every kind of packet the client sends says so in the user's terms.
func TestKnockNoRoute(t *testing.T) {
	netns.Require(t, "ip")
	ns := netns.NewT(t, fmt.Sprintf("kgc-nr-%d", os.Getpid()))
	for _, args := range [][]string{
		{"knock", "192.0.2.1", "9000"},
		{"knock", "192.0.2.1", "9000/udp"},
		{"knock", "2001:db8::1", "9000"},
		{"knock", "192.0.2.1", "--spa-key", "00112233445566778899aabbccddeeff", "--key-id", "7"},
	} {
		var r result
		if err := ns.Do(func() error { r = invoke(t, nil, args...); return nil }); err != nil {
			t.Fatal(err)
		}
		addr := args[1]
		if r.code != 1 || !strings.Contains(r.stderr, "no route from this machine to "+addr+" (") ||
			!strings.Contains(r.stderr, "is this machine on a network that reaches the gate") {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// A key file of another user's is refused before anything is sent, saying
// whose it is.
func TestKnockKeyNotYours(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file away")
	}
	k, err := spa.NewKey(9, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/laptop.key"
	if err := os.WriteFile(path, []byte(k.Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	r := invoke(t, nil, "knock", "127.0.0.1", "--spa-key", path)
	if r.code != 2 || !strings.Contains(r.stderr, "is not yours: it belongs to uid 1000 and you are uid 0") || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
