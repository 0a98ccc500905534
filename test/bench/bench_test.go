package bench

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
)

// checksumsOK verifies the IPv4 header and TCP checksums of a SynFrame-shaped
// frame the way a receiver does: the one's-complement sum including the
// checksum field must be all ones.
func checksumsOK(t *testing.T, frame []byte) {
	t.Helper()
	ip, tcp := frame[14:34], frame[34:54]
	if !packet.Verifies(ip, 0) {
		t.Error("IPv4 header checksum wrong")
	}
	if !packet.Verifies(tcp, packet.PseudoSum4(ip, packet.ProtoTCP, len(tcp))) {
		t.Error("TCP checksum wrong")
	}
}

func TestSynFrame(t *testing.T) {
	src, dst := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.18.0.1")
	f := SynFrame(macA, macB, src, dst, 40000, 22)
	checksumsOK(t, f)
	if got := netip.AddrFrom4([4]byte(f[26:30])); got != src {
		t.Errorf("source %s, want %s", got, src)
	}
	if got := binary.BigEndian.Uint16(f[36:]); got != 22 {
		t.Errorf("destination port %d, want 22", got)
	}
	if f[47] != 0x02 {
		t.Errorf("TCP flags %#x, want SYN only", f[47])
	}
}

// The kernel recycles live frames without restoring them, so each run of the
// flood program sees the frame the previous run left. Feeding every output
// back in reproduces that: the source must walk first..first+n-1 and wrap,
// with both checksums right after every rewrite.
func TestFloodRewritesSources(t *testing.T) {
	netns.Require(t)
	g, err := newLiveGenerator()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	first := netip.MustParseAddr("198.19.0.250") // crosses a byte boundary
	const n = 7
	if err := g.objs.FirstSaddr.Set(binary.BigEndian.Uint32(first.AsSlice())); err != nil {
		t.Fatal(err)
	}
	if err := g.objs.Nsources.Set(uint32(n)); err != nil {
		t.Fatal(err)
	}
	var sent uint64
	if err := g.objs.Sent.Get(&sent); err != nil {
		t.Fatal(err)
	}
	frame := SynFrame(macA, macB, netip.MustParseAddr("10.1.2.3"), rxAddr, 40000, ProtectedPort)
	for i := 0; i < 2*n+3; i++ {
		out := make([]byte, len(frame)+256)
		ret, err := g.objs.Flood.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
		if err != nil {
			t.Fatal(err)
		}
		if ret != xdpTX {
			t.Fatalf("run %d returned %d, want XDP_TX", i, ret)
		}
		frame = out[:len(frame)]
		want := first
		for k := uint64(0); k < (sent+uint64(i))%n; k++ {
			want = want.Next()
		}
		if got := netip.AddrFrom4([4]byte(frame[26:30])); got != want {
			t.Fatalf("run %d: source %s, want %s", i, got, want)
		}
		checksumsOK(t, frame)
	}

	// Anything but an IPv4 TCP frame is refused, never transmitted.
	ret, err := g.objs.Flood.Run(&ebpf.RunOptions{Data: frame[:40]})
	if err != nil {
		t.Fatal(err)
	}
	if ret == xdpTX {
		t.Error("a truncated frame was transmitted")
	}
}

// The probe's run, without live frames (which this machine may refuse):
// accepted by the kernel, refused by the program, so a live run of it sends
// nothing.
func TestProbeSendsNothing(t *testing.T) {
	netns.Require(t)
	g, err := newLiveGenerator()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ret, err := g.objs.Flood.Run(probeOptions())
	if err != nil {
		t.Fatal(err)
	}
	if ret == xdpTX {
		t.Error("the probe's frame was transmitted")
	}
}

// udpChecksumsOK is checksumsOK for a UDPFrame-shaped frame.
func udpChecksumsOK(t *testing.T, frame []byte) {
	t.Helper()
	ip, udp := frame[14:34], frame[34:]
	if !packet.Verifies(ip, 0) {
		t.Error("IPv4 header checksum wrong")
	}
	if !packet.Verifies(udp, packet.PseudoSum4(ip, packet.ProtoUDP, len(udp))) {
		t.Error("UDP checksum wrong")
	}
}

// The AF_PACKET generator rewrites its frames in place call after call, each
// slot from whatever source it last had; the sources must walk
// first..first+n-1 over the frames sent and wrap, with every checksum right.
func TestFrameBatchRewritesSources(t *testing.T) {
	first := netip.MustParseAddr("198.19.255.252") // crosses a 16-bit word
	base := binary.BigEndian.Uint32(first.AsSlice())
	const n, slots = 7, 5
	for _, tmpl := range [][]byte{
		SynFrame(macA, macB, floodBase, rxAddr, 40000, ProtectedPort),
		UDPFrame(macA, macB, floodBase, rxAddr, 40000, SPAPort, []byte("forged spa payload")),
	} {
		udp := tmpl[23] == packet.ProtoUDP
		r := newFrameBatch(tmpl, slots)
		var sent uint64
		for call := range 6 {
			for i := range r.frames {
				r.setSource(i, base+uint32((sent+uint64(i))%n))
			}
			for i, f := range r.frames {
				want := first
				for range (sent + uint64(i)) % n {
					want = want.Next()
				}
				if got := netip.AddrFrom4([4]byte(f[26:30])); got != want {
					t.Fatalf("udp %v, call %d, frame %d: source %s, want %s", udp, call, i, got, want)
				}
				if udp {
					udpChecksumsOK(t, f)
				} else {
					checksumsOK(t, f)
				}
			}
			sent += uint64(call % slots) // as if the kernel took only some
		}
	}
}

// The AF_PACKET generator's frames are the flood program's, byte for byte:
// the same source for the same count, the same checksum arithmetic.
func TestFrameBatchMatchesFloodProgram(t *testing.T) {
	netns.Require(t)
	g, err := newLiveGenerator()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	first := netip.MustParseAddr("198.19.255.252")
	base := binary.BigEndian.Uint32(first.AsSlice())
	const n = 7
	if err := g.objs.FirstSaddr.Set(base); err != nil {
		t.Fatal(err)
	}
	if err := g.objs.Nsources.Set(uint32(n)); err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range [][]byte{
		TCPFrame(macA, macB, floodBase, rxAddr, 40000, ProtectedPort, packet.ACK),
		UDPFrame(macA, macB, floodBase, rxAddr, 40000, SPAPort, []byte("forged spa payload")),
	} {
		var sent uint64
		if err := g.objs.Sent.Get(&sent); err != nil {
			t.Fatal(err)
		}
		frame := tmpl
		r := newFrameBatch(tmpl, 1)
		for i := range 2*n + 3 {
			out := make([]byte, len(frame)+256)
			if _, err := g.objs.Flood.Run(&ebpf.RunOptions{Data: frame, DataOut: out}); err != nil {
				t.Fatal(err)
			}
			frame = out[:len(frame)]
			r.setSource(0, base+uint32((sent+uint64(i))%n))
			if !bytes.Equal(frame, r.frames[0]) {
				t.Fatalf("frame %d:\nflood.c    %x\nframeBatch %x", i, frame, r.frames[0])
			}
		}
	}
}

func TestFloorDropsAndCounts(t *testing.T) {
	netns.Require(t)
	g := NewXDPDrop()
	if err := loadFloorObjects(&g.objs, nil); err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	syn := SynFrame(macA, macB, floodBase, rxAddr, 40000, ProtectedPort)
	arp := make([]byte, 60)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	for _, f := range [][]byte{syn, syn, syn, arp} {
		ret, err := g.objs.FloorDrop.Run(&ebpf.RunOptions{Data: f})
		if err != nil {
			t.Fatal(err)
		}
		if ret != xdpDrop {
			t.Fatalf("returned %d, want XDP_DROP", ret)
		}
	}
	if n, err := g.Seen(); err != nil || n != 3 {
		t.Errorf("floor counted %d TCP frames (err %v), want 3", n, err)
	}
}

func TestSummarise(t *testing.T) {
	s := Summarise([]float64{5, 1, 4, 2, 3})
	if s != (Stat{Median: 3, Min: 1, Max: 5, N: 5}) {
		t.Errorf("odd: %+v", s)
	}
	s = Summarise([]float64{4, 1, 3, 2})
	if s != (Stat{Median: 2.5, Min: 1, Max: 4, N: 4}) {
		t.Errorf("even: %+v", s)
	}
	if s := Summarise(nil); s.N != 0 {
		t.Errorf("empty: %+v", s)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Microsecond}, {99, 99 * time.Microsecond}, {100, 100 * time.Microsecond}, {1, time.Microsecond}} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%g = %s, want %s", c.p, got, c.want)
		}
	}
}

func TestSnmpField(t *testing.T) {
	text := "Ip: Forwarding DefaultTTL\nIp: 2 64\n" +
		"Tcp: RtoAlgorithm RtoMin InSegs OutSegs\nTcp: 1 200 12345 678\n"
	if v, err := snmpField(text, "Tcp", "InSegs"); err != nil || v != 12345 {
		t.Errorf("InSegs = %d, %v", v, err)
	}
	if _, err := snmpField(text, "Udp", "InDatagrams"); err == nil {
		t.Error("found a field that is not there")
	}
}

func TestParsePeerNAPI(t *testing.T) {
	for _, s := range []string{"gro", "xdp-pass"} {
		if _, err := ParsePeerNAPI(s); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParsePeerNAPI("busy-poll"); err == nil {
		t.Error("accepted an unknown mode")
	}
}
