// Package model is the reference model of knockgate's datapath: what the
// XDP and egress programs must do with each packet, written from README's
// rules ("How the gate behaves", "Flows and --protect all", "Single-packet
// authorization", "fwknop clients": what the program decides in XDP and
// the fwknop_grant program run grants through) as plain Go over plain
// state, so that it reads as their specification. It is used only by tests, which run the same scenarios
// through the model and the real program and compare verdicts, counters,
// events and map contents after every step.
package model

import (
	"encoding/binary"
	"net/netip"
)

// Parse outcomes (README: "How the gate behaves").
type Parsed int

const (
	L4        Parsed = iota // TCP or UDP with ports: judged
	Pass                    // not the gate's: non-IP, other protocols, non-first fragments, ICMP but errors
	Malformed               // claims to be IP but cannot be parsed safely: dropped
	ICMPError               // an ICMP error quoting a TCP or UDP packet: judged by the quoted packet's flow
)

// Packet is what the parse takes from a frame. For an ICMP error, the
// addresses, ports and protocol are the quoted packet's.
type Packet struct {
	Src, Dst     netip.Addr // IPv4 as itself (keys map it to ::ffff:a.b.c.d)
	Sport, Dport uint16
	Proto        uint8
	Flags        uint8 // TCP flags
	// UDP: the payload as the UDP header's length gives it, and whether
	// that length fits the packet.
	Payload  []byte
	LenValid bool
}

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	maxVLANs    = 2
	maxIPv6Ext  = 6
)

// cursor walks a frame: end is the frame's end, limit the IP packet's (its
// length field): a header that fits the frame only by reaching past the
// packet (Ethernet padding, appended bytes) is malformed.
type cursor struct {
	b          []byte
	pos, limit int
}

func (c *cursor) fits(n int) bool { return c.pos+n <= len(c.b) && c.pos+n <= c.limit }

// ParseFrame is the parse of README's rules: Ethernet, up to two VLAN tags
// (a third, or a truncated one: malformed), IPv4 or IPv6 (extension headers
// walked, at most 6 and one more header), then TCP, UDP or ICMP.
func ParseFrame(b []byte) (Parsed, Packet) {
	var p Packet
	if len(b) < 14 {
		return Pass, p // not even Ethernet
	}
	c := &cursor{b: b, pos: 14, limit: len(b)}
	etype := binary.BigEndian.Uint16(b[12:])
	for range maxVLANs {
		if etype != 0x8100 && etype != 0x88a8 {
			break
		}
		if c.pos+4 > len(b) {
			return Malformed, p
		}
		etype = binary.BigEndian.Uint16(b[c.pos+2:])
		c.pos += 4
	}
	switch etype {
	case 0x8100, 0x88a8:
		return Malformed, p
	case 0x0800:
		return parseIPv4(c, &p)
	case 0x86dd:
		return parseIPv6(c, &p)
	}
	return Pass, p
}

func parseIPv4(c *cursor, p *Packet) (Parsed, Packet) {
	b := c.b
	if c.pos+20 > len(b) {
		return Malformed, *p
	}
	ip := b[c.pos:]
	hdrLen := int(ip[0]&0xf) * 4
	totLen := int(binary.BigEndian.Uint16(ip[2:]))
	if hdrLen < 20 || (totLen != 0 && totLen < hdrLen) || c.pos+hdrLen > len(b) {
		return Malformed, *p
	}
	if totLen != 0 {
		// 0: a GRO aggregate over 64 KiB, bounded by the frame alone.
		c.limit = c.pos + totLen
		if c.limit > len(b) {
			return Malformed, *p // truncated
		}
	}
	p.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
		return Pass, *p // a non-first fragment: no ports
	}
	proto := ip[9]
	c.pos += hdrLen
	if proto == protoICMP {
		return parseICMP(c, p, false)
	}
	return parseL4(c, proto, p)
}

func parseIPv6(c *cursor, p *Packet) (Parsed, Packet) {
	b := c.b
	if c.pos+40 > len(b) {
		return Malformed, *p
	}
	ip := b[c.pos:]
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	if src.Is4In6() {
		return Malformed, *p // would share an IPv4 address's key
	}
	p.Src, p.Dst = src, netip.AddrFrom16([16]byte(ip[24:40]))
	next := ip[6]
	payload := int(binary.BigEndian.Uint16(ip[4:]))
	c.pos += 40
	if payload != 0 {
		c.limit = c.pos + payload
		if c.limit > len(b) {
			return Malformed, *p
		}
	}
	for range maxIPv6Ext + 1 {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if !c.fits(2) {
				return Malformed, *p
			}
			next = b[c.pos]
			c.pos += (int(b[c.pos+1]) + 1) * 8
		case 44: // fragment
			if !c.fits(8) {
				return Malformed, *p
			}
			if binary.BigEndian.Uint16(b[c.pos+2:])&0xfff8 != 0 {
				return Pass, *p
			}
			next = b[c.pos]
			c.pos += 8
		case protoICMPv6:
			return parseICMP(c, p, true)
		default:
			return parseL4(c, next, p)
		}
	}
	return Malformed, *p // still inside the chain: the ports are hidden
}

func parseL4(c *cursor, proto uint8, p *Packet) (Parsed, Packet) {
	b := c.b
	switch proto {
	case protoTCP:
		if !c.fits(20) {
			return Malformed, *p
		}
		p.Proto = protoTCP
		p.Sport = binary.BigEndian.Uint16(b[c.pos:])
		p.Dport = binary.BigEndian.Uint16(b[c.pos+2:])
		p.Flags = b[c.pos+13]
		return L4, *p
	case protoUDP:
		if !c.fits(8) {
			return Malformed, *p
		}
		p.Proto = protoUDP
		p.Sport = binary.BigEndian.Uint16(b[c.pos:])
		p.Dport = binary.BigEndian.Uint16(b[c.pos+2:])
		n := int(binary.BigEndian.Uint16(b[c.pos+4:]))
		if n >= 8 && c.fits(n) {
			p.Payload, p.LenValid = b[c.pos+8:c.pos+n], true
		}
		return L4, *p
	}
	return Pass, *p
}

// parseICMP: an error (IPv4 types 3, 4, 11, 12; ICMPv6 1-4) is judged by the
// TCP or UDP packet it quotes; everything else passes.
func parseICMP(c *cursor, p *Packet, v6 bool) (Parsed, Packet) {
	b := c.b
	if !c.fits(8) {
		return Malformed, *p
	}
	t := b[c.pos]
	isErr := t == 3 || t == 4 || t == 11 || t == 12
	if v6 {
		isErr = t >= 1 && t <= 4
	}
	if !isErr {
		return Pass, *p
	}
	c.pos += 8
	var proto uint8
	if v6 {
		if !c.fits(40) {
			return Malformed, *p
		}
		q := b[c.pos:]
		p.Src, p.Dst = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40]))
		proto = q[6]
		c.pos += 40
	} else {
		if !c.fits(20) {
			return Malformed, *p
		}
		q := b[c.pos:]
		n := int(q[0]&0xf) * 4
		if n < 20 || !c.fits(n) {
			return Malformed, *p
		}
		p.Src, p.Dst = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))
		proto = q[9]
		c.pos += n
	}
	if proto != protoTCP && proto != protoUDP {
		return Pass, *p
	}
	if !c.fits(4) {
		return Malformed, *p
	}
	p.Proto = proto
	p.Sport = binary.BigEndian.Uint16(b[c.pos:])
	p.Dport = binary.BigEndian.Uint16(b[c.pos+2:])
	p.Flags = 0
	return ICMPError, *p
}
