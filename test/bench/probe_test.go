package bench

import (
	"net"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// The probe gives every frame its one verdict and counts the TCP and UDP
// frames it parsed (the ones it reads a line for), from any source.
func TestProbe(t *testing.T) {
	netns.Require(t)
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for i, pass := range []bool{false, true, true} {
		p := NewProbe("probe", 1<<16, pass)
		if i == 2 {
			p.Filter = 1 << 12 // a word of a filter first
		}
		if err := p.load(); err != nil {
			t.Fatal(err)
		}
		want := uint32(1) // XDP_DROP
		if pass {
			want = 2 // XDP_PASS
		}
		frames := [][]byte{
			TCPFrame(mac, mac, strangerBase, rxAddr, 40000, ScalePort, packet.SYN),
			TCPFrame(mac, mac, addrPlus(strangerBase, 999_999), rxAddr, 40000, ScalePort, packet.SYN),
			TCPFrame(mac, mac, addrPlus(grantedBase, 12345), rxAddr, 40000, ScalePort, packet.ACK),
		}
		for _, f := range frames {
			got, err := p.objs.Probe.Run(&ebpf.RunOptions{Data: f})
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("pass %v: verdict %d, want %d", pass, got, want)
			}
		}
		// Not IP: the fixed verdict, not counted.
		arp := append(append(append([]byte{}, mac...), mac...), 0x08, 0x06)
		arp = append(arp, make([]byte, 46)...)
		if got, err := p.objs.Probe.Run(&ebpf.RunOptions{Data: arp}); err != nil || got != want {
			t.Errorf("pass %v: ARP frame: verdict %d (%v), want %d", pass, got, err, want)
		}
		seen, err := p.Seen()
		if err != nil {
			t.Fatal(err)
		}
		if seen != uint64(len(frames)) {
			t.Errorf("pass %v: saw %d frames, want %d", pass, seen, len(frames))
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A table the probe cannot hash into is refused by size, before anything
// is loaded.
func TestProbeSize(t *testing.T) {
	for _, b := range []uint64{0, 64, 1000, 3 << 20} {
		err := NewProbe("probe", b, false).load()
		if err == nil || !strings.Contains(err.Error(), "table of") || !strings.Contains(err.Error(), "power of two") {
			t.Errorf("%d bytes: %v, want a power-of-two error", b, err)
		}
		if b == 0 {
			continue // no filter
		}
		p := NewProbe("probe", 1<<16, false)
		p.Filter = b
		if err := p.load(); err == nil || !strings.Contains(err.Error(), "filter of") {
			t.Errorf("a filter of %d bytes: %v, want a power-of-two error", b, err)
		}
	}
	if got := probeBytes(1<<20, 64); got != 64<<20 {
		t.Errorf("probe table of 2^20 sources at 64 B: %d bytes", got)
	}
	if got := probeBytes(1_000_000, 4); got != 4<<20 {
		t.Errorf("probe table of 10^6 sources at 4 B: %d bytes", got)
	}
}
