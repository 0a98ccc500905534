package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

var (
	v4a = netip.MustParseAddr("192.0.2.1")
	v4b = netip.MustParseAddr("198.51.100.2")
	v6a = netip.MustParseAddr("2001:db8::1")
	v6b = netip.MustParseAddr("2001:db8::2")
)

func TestIPv4TCP(t *testing.T) {
	f := TCP(v4a, v4b, 40000, 22, SYN)
	f.Options = []byte{1, 1, 1} // three NOPs, padded to 4
	f.Payload = []byte("hello")
	b := f.Bytes()

	if got := binary.BigEndian.Uint16(b[12:]); got != EtherTypeIPv4 {
		t.Fatalf("ethertype %#x", got)
	}
	ip := b[14:]
	if ihl := int(ip[0]&0xf) * 4; ihl != 24 || f.L4Offset() != 14+24 {
		t.Fatalf("IHL %d bytes, L4 offset %d; want 24 and 38", ihl, f.L4Offset())
	}
	if total := int(binary.BigEndian.Uint16(ip[2:])); total != len(ip) {
		t.Fatalf("total length %d, frame carries %d", total, len(ip))
	}
	if !Verifies(ip[:24], 0) {
		t.Fatal("IPv4 header checksum does not verify")
	}
	tcp := b[f.L4Offset():]
	if sp, dp := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:]); sp != 40000 || dp != 22 {
		t.Fatalf("ports %d->%d", sp, dp)
	}
	if tcp[13] != SYN || tcp[12]>>4 != 5 {
		t.Fatalf("flags %#x data offset %d", tcp[13], tcp[12]>>4)
	}
	pseudo := sum(ip[12:20], 0) + ProtoTCP + uint32(len(tcp))
	if !Verifies(tcp, pseudo) {
		t.Fatal("TCP checksum does not verify")
	}
}

func TestIPv4Fragment(t *testing.T) {
	f := UDP(v4a, v4b, 1, 53)
	f.FragOffset, f.MoreFragments = 185, true
	b := f.Bytes()
	if got := binary.BigEndian.Uint16(b[14+6:]); got != 0x2000|185 {
		t.Fatalf("fragment field %#x", got)
	}
	f.IHL = 4
	if b := f.Bytes(); b[14]&0xf != 4 {
		t.Fatalf("IHL override ignored: %#x", b[14])
	}
}

func TestVLAN(t *testing.T) {
	f := UDP(v4a, v4b, 1, 7000)
	f.VLANs = []VLAN{{EtherTypeQinQ, 100}, {EtherTypeVLAN, 200}}
	b := f.Bytes()
	want := []uint16{EtherTypeQinQ, 100, EtherTypeVLAN, 200, EtherTypeIPv4}
	for i, w := range want {
		if got := binary.BigEndian.Uint16(b[12+2*i:]); got != w {
			t.Fatalf("word %d after the MACs is %#x, want %#x", i, got, w)
		}
	}
	if f.L4Offset() != 14+8+20 {
		t.Fatalf("L4 offset %d", f.L4Offset())
	}
	udp := b[f.L4Offset():]
	pseudo := sum(b[22+12:22+20], 0) + ProtoUDP + uint32(len(udp))
	if !Verifies(udp, pseudo) {
		t.Fatal("UDP checksum does not verify")
	}
}

func TestIPv6ExtensionChain(t *testing.T) {
	f := TCP(v6a, v6b, 40000, 22, SYN)
	f.Ext = []Ext{{Type: ProtoHopOpts}, {Type: ProtoDstOpts, Len: 16}, {Type: ProtoRouting},
		{Type: ProtoFragment, FragOffset: 3, MoreFragments: true}}
	b := f.Bytes()
	if got := binary.BigEndian.Uint16(b[12:]); got != EtherTypeIPv6 {
		t.Fatalf("ethertype %#x", got)
	}
	ip := b[14:]
	if pl := int(binary.BigEndian.Uint16(ip[4:])); pl != len(ip)-40 {
		t.Fatalf("payload length %d, frame carries %d", pl, len(ip)-40)
	}
	// Walk the chain the way a receiver does.
	next, off := ip[6], 40
	var seen []uint8
	for next != ProtoTCP {
		seen = append(seen, next)
		h := ip[off:]
		switch next {
		case ProtoFragment:
			if fo := binary.BigEndian.Uint16(h[2:]); fo != 3<<3|1 {
				t.Fatalf("fragment offset field %#x", fo)
			}
			off += 8
		case ProtoHopOpts, ProtoDstOpts, ProtoRouting:
			off += (int(h[1]) + 1) * 8
		default:
			t.Fatalf("unexpected next header %d at %d", next, off)
		}
		next = h[0]
	}
	if len(seen) != 4 || 14+off != f.L4Offset() {
		t.Fatalf("walked %v to offset %d, L4Offset is %d", seen, 14+off, f.L4Offset())
	}
	tcp := ip[off:]
	pseudo := sum(ip[8:40], 0) + ProtoTCP + uint32(len(tcp))
	if !Verifies(tcp, pseudo) {
		t.Fatal("TCP checksum does not verify")
	}
}

func TestICMPAndARP(t *testing.T) {
	if b := ICMP(v6a, v6b).Bytes(); b[14+6] != ProtoICMPv6 || b[14+40] != 128 {
		t.Fatalf("ICMPv6 echo: next header %d type %d", b[14+6], b[14+40])
	}
	if b := ICMP(v4a, v4b).Bytes(); b[14+9] != ProtoICMP || b[14+20] != 8 || !Verifies(b[34:], 0) {
		t.Fatal("ICMP echo malformed")
	}
	if b := ARP(v4a, v4b); len(b) != 42 || binary.BigEndian.Uint16(b[12:]) != EtherTypeARP {
		t.Fatalf("ARP frame of %d bytes", len(b))
	}
}

func TestTruncated(t *testing.T) {
	f := TCP(v4a, v4b, 1, 22, SYN)
	if b := f.TruncatedL4(10); len(b) != 14+20+10 {
		t.Fatalf("truncated frame is %d bytes", len(b))
	}
	if b := Truncate(f.Bytes(), 1000); len(b) != len(f.Bytes()) {
		t.Fatal("Truncate beyond the end changed the frame")
	}
}
