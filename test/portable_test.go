package test

import (
	"encoding/binary"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/netns"
)

// portableBin is knockgate built with its portable TCP knock, beside kgBin.
var portableBin = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "knockgate-portable")
	out, err := exec.Command("go", "build", "-tags", "knockgate_portable", "-o", bin, "github.com/knockgate/knockgate/cmd/knockgate").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build with -tags knockgate_portable: %v\n%s", err, out)
	}
	return bin, nil
})

// A TCP knock is exactly one SYN, on Linux's path and on the portable one
// (what Windows, macOS and the BSDs run; built here with -tags
// knockgate_portable): a capture on the client's veth shows, per step, one
// SYN and nothing else, no retransmission and no RST; and the gate opens.
// The capture ends at a marker datagram sent after the knocking process
// exited: a socket left behind could still retransmit, but none outlives
// its process, so whatever the knock sends is seen before the marker.
func TestKnockIsOneSYNPerStep(t *testing.T) {
	for _, c := range []struct{ name, bin string }{{"linux", ""}, {"portable", "portable"}} {
		t.Run(c.name, func(t *testing.T) {
			netns.Require(t, "ip", "nsenter")
			t.Parallel()
			bin := kgBin
			if c.bin == "portable" {
				var err error
				if bin, err = portableBin(); err != nil {
					t.Fatal(err)
				}
			}
			g := newGate(t)
			g.attach("--sequence", "9000,8000,7000", "--step-timeout", "30s", "--open", "1m")
			const marker = 9999
			packets, stop := captureTCP(t, g.cli, g.cliIface, marker)
			r := run(t, g.cli.Cmd(bin, "knock", srv4.String(), "9000", "8000", "7000"))
			if r.code != 0 {
				t.Fatalf("knock: %s", r)
			}
			g.sendUDP(cli4, srv4, marker, []byte("mark"))
			seen := map[uint16][]string{}
			for p := range packets {
				seen[p.dport] = append(seen[p.dport], p.flags)
			}
			stop()
			for _, port := range []uint16{9000, 8000, 7000} {
				if got := seen[port]; len(got) != 1 || got[0] != "SYN" {
					t.Errorf("to port %d: %q, want one SYN", port, got)
				}
			}
			for port, got := range seen {
				if port != 9000 && port != 8000 && port != 7000 {
					t.Errorf("to port %d: %q, want nothing", port, got)
				}
			}
			g.expect(open, cli4, srv4)
			if n := g.status().Counters["knock_repeated"]; n != 0 {
				t.Errorf("knock_repeated = %d: the gate saw a SYN again", n)
			}
		})
	}
}

// tcpPacket is a captured TCP segment from the client: its destination port
// and flags ("SYN", "RST", "SYN|ACK", ...).
type tcpPacket struct {
	dport uint16
	flags string
}

// captureTCP captures, on iface in ns, the outgoing IPv4 TCP segments until
// a UDP datagram to port marker goes out; the channel is closed then.
func captureTCP(t *testing.T, ns *netns.NS, iface string, marker uint16) (<-chan tcpPacket, func()) {
	t.Helper()
	// Only a safety net against a hang: the marker ends the capture.
	fd := packetSocket(t, ns, iface, unix.Timeval{Sec: 30})
	out := make(chan tcpPacket, 64)
	go func() {
		defer close(out)
		buf := make([]byte, 2048)
		for {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				t.Errorf("capture on %s: %v (no marker seen)", iface, err)
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_OUTGOING {
				continue
			}
			if n < 14 || binary.BigEndian.Uint16(buf[12:]) != unix.ETH_P_IP {
				continue
			}
			ip := buf[14:n]
			if len(ip) < 20 || ip[0]>>4 != 4 {
				continue
			}
			l4 := ip[int(ip[0]&0xf)*4:]
			switch {
			case ip[9] == unix.IPPROTO_UDP && len(l4) >= 8 && binary.BigEndian.Uint16(l4[2:]) == marker:
				return
			case ip[9] == unix.IPPROTO_TCP && len(l4) >= 14:
				out <- tcpPacket{binary.BigEndian.Uint16(l4[2:]), tcpFlags(l4[13])}
			}
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { unix.Close(fd) }) }
	t.Cleanup(stop)
	return out, stop
}

func tcpFlags(b byte) string {
	var f []string
	for i, name := range []string{"FIN", "SYN", "RST", "PSH", "ACK"} {
		if b&(1<<i) != 0 {
			f = append(f, name)
		}
	}
	return strings.Join(f, "|")
}
