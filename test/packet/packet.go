// Package packet builds raw Ethernet frames for BPF_PROG_TEST_RUN: VLAN
// tags, IPv4 with options and fragments, IPv6 with extension-header chains,
// TCP with any flags, UDP, ICMP, ARP, and deliberately broken variants (a
// lying IHL, a truncated header). It uses only the standard library so the
// frames are exactly what the fields say, with nothing filled in behind the
// test's back.
package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// EtherTypes.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100 // 802.1Q customer tag
	EtherTypeQinQ = 0x88a8 // 802.1ad service tag
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers, including the IPv6 extension headers this package
// can emit.
const (
	ProtoHopOpts  = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoICMPv6   = 58
	ProtoNone     = 59
	ProtoDstOpts  = 60
)

// TCP flags (byte 13 of the TCP header).
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

const (
	ethLen  = 14
	vlanLen = 4
	ipv4Len = 20
	ipv6Len = 40
	tcpLen  = 20
	udpLen  = 8
	icmpLen = 8
	fragLen = 8
)

// MACs are fixed: the program never looks at them.
var (
	srcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	dstMAC = [6]byte{0x02, 0, 0, 0, 0, 0x02}
)

// VLAN is one 802.1Q/802.1ad tag.
type VLAN struct {
	TPID uint16 // EtherTypeVLAN or EtherTypeQinQ
	ID   uint16 // 12-bit VLAN identifier
}

// Ext is one IPv6 extension header.
type Ext struct {
	Type uint8 // ProtoHopOpts, ProtoRouting, ProtoDstOpts or ProtoFragment
	// Len is the length in bytes of an options or routing header: a
	// multiple of 8, at least 8; 0 means 8. Ignored for fragment headers.
	Len int
	// FragOffset (in 8-byte units) and MoreFragments, for fragment headers.
	FragOffset    uint16
	MoreFragments bool
}

// Frame describes one Ethernet frame. The IP version follows Src (Src and
// Dst must be the same family). Zero values give a plain, valid frame.
type Frame struct {
	VLANs    []VLAN
	Src, Dst netip.Addr
	// Proto is the transport protocol: ProtoTCP, ProtoUDP, ProtoICMP (on
	// IPv6 it becomes ICMPv6), or any other number with Payload as its body.
	Proto            uint8
	SrcPort, DstPort uint16
	Flags            uint8 // TCP flags
	// ICMPType and ICMPCode, for ICMP: zero is an echo request.
	ICMPType, ICMPCode uint8
	Payload            []byte

	// IPv4 only.
	Options       []byte // IP options, padded with End-of-Options to 4 bytes
	IHL           int    // overrides the header-length field (in 32-bit words) when non-zero
	FragOffset    uint16 // in 8-byte units
	MoreFragments bool

	// IPv6 only: extension headers in order, before the transport header.
	Ext []Ext
}

// TCP is a TCP segment from src:sport to dst:dport with flags.
func TCP(src, dst netip.Addr, sport, dport uint16, flags uint8) Frame {
	return Frame{Src: src, Dst: dst, Proto: ProtoTCP, SrcPort: sport, DstPort: dport, Flags: flags}
}

// UDP is a UDP datagram from src:sport to dst:dport.
func UDP(src, dst netip.Addr, sport, dport uint16) Frame {
	return Frame{Src: src, Dst: dst, Proto: ProtoUDP, SrcPort: sport, DstPort: dport}
}

// ICMP is an ICMP (or ICMPv6) echo request.
func ICMP(src, dst netip.Addr) Frame {
	return Frame{Src: src, Dst: dst, Proto: ProtoICMP}
}

// TooBig is the ICMP error a router at src sends to dst about packet q that
// dst sent: "fragmentation needed" (IPv4) or "packet too big" (ICMPv6),
// quoting q's IP header and its first 8 bytes after it.
func TooBig(src, dst netip.Addr, q Frame) Frame {
	f := Frame{Src: src, Dst: dst, Proto: ProtoICMP, ICMPType: 3, ICMPCode: 4}
	if src.Is6() {
		f.ICMPType, f.ICMPCode = 2, 0
	}
	b := q.Bytes()[q.l3Offset():]
	f.Payload = b[:min(len(b), q.l3Len()+8)]
	return f
}

// ipProto is the protocol number the IP header (or last extension) names.
func (f *Frame) ipProto() uint8 {
	if f.Proto == ProtoICMP && f.Src.Is6() {
		return ProtoICMPv6
	}
	return f.Proto
}

// l3Offset is where the IP header starts.
func (f *Frame) l3Offset() int { return ethLen + vlanLen*len(f.VLANs) }

// l3Len is the length of the IP header including options or extensions.
func (f *Frame) l3Len() int {
	if f.Src.Is4() {
		return ipv4Len + pad4(len(f.Options))
	}
	n := ipv6Len
	for _, e := range f.Ext {
		n += e.size()
	}
	return n
}

// L4Offset is where the transport header starts in Bytes().
func (f Frame) L4Offset() int { return f.l3Offset() + f.l3Len() }

func (e Ext) size() int {
	if e.Type == ProtoFragment || e.Len == 0 {
		return 8
	}
	return e.Len
}

func pad4(n int) int { return (n + 3) &^ 3 }

// l4 encodes the transport header and payload (checksum zero).
func (f *Frame) l4() []byte {
	var b []byte
	switch f.Proto {
	case ProtoTCP:
		b = make([]byte, tcpLen)
		binary.BigEndian.PutUint16(b[0:], f.SrcPort)
		binary.BigEndian.PutUint16(b[2:], f.DstPort)
		binary.BigEndian.PutUint32(b[4:], 1000) // sequence number
		if f.Flags&ACK != 0 {
			binary.BigEndian.PutUint32(b[8:], 2000)
		}
		b[12] = (tcpLen / 4) << 4
		b[13] = f.Flags
		binary.BigEndian.PutUint16(b[14:], 64240) // window
	case ProtoUDP:
		b = make([]byte, udpLen)
		binary.BigEndian.PutUint16(b[0:], f.SrcPort)
		binary.BigEndian.PutUint16(b[2:], f.DstPort)
		binary.BigEndian.PutUint16(b[4:], uint16(udpLen+len(f.Payload)))
	case ProtoICMP:
		b = make([]byte, icmpLen)
		b[0] = 8 // echo request
		if f.Src.Is6() {
			b[0] = 128
		}
		if f.ICMPType != 0 {
			b[0], b[1] = f.ICMPType, f.ICMPCode
		}
		if f.ICMPType == 3 && f.ICMPCode == 4 || f.ICMPType == 2 && f.Src.Is6() {
			binary.BigEndian.PutUint16(b[6:], 1280) // the next hop's MTU
			if f.Src.Is6() {
				binary.BigEndian.PutUint32(b[4:], 1280)
			}
		}
	}
	return append(b, f.Payload...)
}

// Bytes encodes the frame. It panics on a description it cannot encode
// (mixed address families, a bad extension length): those are test bugs.
func (f Frame) Bytes() []byte {
	if f.Src.Is4() != f.Dst.Is4() || !f.Src.IsValid() {
		panic(fmt.Sprintf("packet: src %s and dst %s must be valid and of one family", f.Src, f.Dst))
	}
	l4 := f.l4()
	b := make([]byte, 0, f.L4Offset()+len(l4))

	b = append(b, dstMAC[:]...)
	b = append(b, srcMAC[:]...)
	for _, v := range f.VLANs {
		b = binary.BigEndian.AppendUint16(b, v.TPID)
		b = binary.BigEndian.AppendUint16(b, v.ID&0x0fff)
	}
	l3 := len(b) + 2
	if f.Src.Is4() {
		b = binary.BigEndian.AppendUint16(b, EtherTypeIPv4)
		b = f.appendIPv4(b, len(l4))
	} else {
		b = binary.BigEndian.AppendUint16(b, EtherTypeIPv6)
		b = f.appendIPv6(b, len(l4))
	}
	l4Off := len(b)
	b = append(b, l4...)
	f.checksumL4(b[l3:], b[l4Off:])
	return b
}

func (f *Frame) appendIPv4(b []byte, l4Len int) []byte {
	start := len(b)
	hlen := f.l3Len()
	ihl := hlen / 4
	if f.IHL != 0 {
		ihl = f.IHL
	}
	b = append(b, byte(4<<4|ihl&0xf), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(hlen+l4Len))
	b = binary.BigEndian.AppendUint16(b, 0x1234) // identification
	frag := f.FragOffset & 0x1fff
	if f.MoreFragments {
		frag |= 0x2000
	}
	b = binary.BigEndian.AppendUint16(b, frag)
	b = append(b, 64, f.ipProto(), 0, 0) // TTL, protocol, checksum
	src, dst := f.Src.As4(), f.Dst.As4()
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	b = append(b, f.Options...)
	for len(b)-start < hlen {
		b = append(b, 0) // End of Options List
	}
	binary.BigEndian.PutUint16(b[start+10:], ^fold(sum(b[start:start+hlen], 0)))
	return b
}

func (f *Frame) appendIPv6(b []byte, l4Len int) []byte {
	next := f.ipProto()
	if len(f.Ext) > 0 {
		next = f.Ext[0].Type
	}
	b = append(b, 6<<4, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(f.l3Len()-ipv6Len+l4Len))
	b = append(b, next, 64)
	src, dst := f.Src.As16(), f.Dst.As16()
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	for i, e := range f.Ext {
		next := f.ipProto()
		if i+1 < len(f.Ext) {
			next = f.Ext[i+1].Type
		}
		size := e.size()
		if e.Type == ProtoFragment {
			off := e.FragOffset << 3
			if e.MoreFragments {
				off |= 1
			}
			b = append(b, next, 0)
			b = binary.BigEndian.AppendUint16(b, off)
			b = binary.BigEndian.AppendUint32(b, 0xabcd) // identification
			continue
		}
		if size < 8 || size%8 != 0 || size > 2048 {
			panic(fmt.Sprintf("packet: extension header length %d is not a multiple of 8 in 8..2048", size))
		}
		hdr := make([]byte, size)
		hdr[0], hdr[1] = next, byte(size/8-1)
		switch e.Type {
		case ProtoRouting:
			hdr[2] = 4 // segment routing type, no segments left: nothing to process
		default:
			// Options: a PadN spanning the rest keeps the header valid.
			hdr[2], hdr[3] = 1, byte(size-4)
		}
		b = append(b, hdr...)
	}
	return b
}

// checksumL4 fills the TCP/UDP/ICMP checksum; ip is the frame from the IP
// header on, l4 the transport header and payload.
func (f *Frame) checksumL4(ip, l4 []byte) {
	var at int
	switch f.Proto {
	case ProtoTCP:
		at = 16
	case ProtoUDP:
		at = 6
	case ProtoICMP:
		at = 2
	default:
		return
	}
	var s uint32
	if f.Proto != ProtoICMP || f.Src.Is6() {
		// Pseudo-header: addresses, protocol, length.
		if f.Src.Is4() {
			s = sum(ip[12:20], 0)
		} else {
			s = sum(ip[8:40], 0)
		}
		s += uint32(f.ipProto()) + uint32(len(l4))
	}
	c := ^fold(sum(l4, s))
	if c == 0 && f.Proto == ProtoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at:], c)
}

// Verifies reports whether the one's-complement sum over b, started at s, is
// all ones: what a receiver checks of a header with its checksum in place.
func Verifies(b []byte, s uint32) bool { return fold(sum(b, s)) == 0xffff }

// PseudoSum4 is the one's-complement sum of the IPv4 pseudo-header of the
// header ip for a transport header of proto and length l4Len: the s to give
// Verifies for a TCP or UDP checksum.
func PseudoSum4(ip []byte, proto uint8, l4Len int) uint32 {
	return sum(ip[12:20], 0) + uint32(proto) + uint32(l4Len)
}

func sum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// Truncate returns the first n bytes of a frame.
func Truncate(frame []byte, n int) []byte {
	if n > len(frame) {
		n = len(frame)
	}
	return append([]byte(nil), frame[:n]...)
}

// TruncatedL4 is f cut n bytes into its transport header: a runt whose IP
// header is intact but whose ports or flags are missing.
func (f Frame) TruncatedL4(n int) []byte {
	return Truncate(f.Bytes(), f.L4Offset()+n)
}

// ARP is a broadcast ARP request from src asking for dst (both IPv4).
func ARP(src, dst netip.Addr) []byte {
	b := make([]byte, 0, ethLen+28)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, srcMAC[:]...)
	b = binary.BigEndian.AppendUint16(b, EtherTypeARP)
	b = binary.BigEndian.AppendUint16(b, 1)             // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, EtherTypeIPv4) // protocol
	b = append(b, 6, 4)                                 // address lengths
	b = binary.BigEndian.AppendUint16(b, 1)             // request
	s, d := src.As4(), dst.As4()
	b = append(b, srcMAC[:]...)
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = append(b, d[:]...)
	return b
}
