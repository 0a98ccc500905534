package spa

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The wire format, version 1 (README "Single-packet authorization"): one UDP
// datagram whose payload is exactly Len bytes, big-endian fields:
//
//	0 version  1 flags  2 reserved (2)  4 key id (4)  8 Unix ms (8)
//	16 nonce (16)  32 address to open (16, zero: the source)  48 tag (8)
//
// The tag is Sum64 of bytes 0-47 under the key, written little-endian.
const (
	Len     = 56
	Signed  = 48
	Version = 1
	// DefaultPort is the SPA port when none is given (fwknop's too).
	DefaultPort = 62201
	// DefaultWindow is how far a packet's timestamp may be from the gate's
	// clock, either way, when none is given.
	DefaultWindow = 30 * time.Second
)

// Packet is what an SPA datagram says.
type Packet struct {
	KeyID uint32
	// Time is when it was made, to the millisecond.
	Time  time.Time
	Nonce [16]byte
	// Open is the address to open; the zero Addr asks for the packet's
	// source (what a client behind NAT sends).
	Open netip.Addr
}

// New is a packet for key id, made now, with a random nonce, opening open
// (the zero Addr: the source).
func New(id uint32, open netip.Addr) (Packet, error) {
	p := Packet{KeyID: id, Time: time.Now(), Open: open}
	if _, err := rand.Read(p.Nonce[:]); err != nil {
		return Packet{}, fmt.Errorf("make nonce: %w", err)
	}
	return p, nil
}

// Marshal is the packet's payload, tagged under secret.
func (p *Packet) Marshal(secret [16]byte) []byte {
	b := make([]byte, Len)
	b[0] = Version
	binary.BigEndian.PutUint32(b[4:], p.KeyID)
	binary.BigEndian.PutUint64(b[8:], uint64(p.Time.UnixMilli()))
	copy(b[16:32], p.Nonce[:])
	if p.Open.IsValid() {
		a := p.Open.Unmap()
		if a.Is4() {
			a = netip.AddrFrom16(a.As16()) // ::ffff:a.b.c.d
		}
		a16 := a.As16()
		copy(b[32:48], a16[:])
	}
	binary.LittleEndian.PutUint64(b[48:], Sum64(secret, b[:Signed]))
	return b
}

// Parse reads a payload's fields without checking its tag (Verify does).
func Parse(b []byte) (Packet, error) {
	if len(b) != Len {
		return Packet{}, fmt.Errorf("SPA payload is %d bytes, want %d", len(b), Len)
	}
	if b[0] != Version || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return Packet{}, fmt.Errorf("SPA version %d flags %d reserved %d: want version %d, 0, 0",
			b[0], b[1], binary.BigEndian.Uint16(b[2:]), Version)
	}
	p := Packet{
		KeyID: binary.BigEndian.Uint32(b[4:]),
		Time:  time.UnixMilli(int64(binary.BigEndian.Uint64(b[8:]))),
	}
	copy(p.Nonce[:], b[16:32])
	var a [16]byte
	copy(a[:], b[32:48])
	if a != [16]byte{} {
		p.Open = netip.AddrFrom16(a).Unmap()
	}
	return p, nil
}

// ErrBadTag: the payload was not made with that key.
var ErrBadTag = errors.New("SPA tag does not match the key")

// Verify parses b and checks its tag under secret.
func Verify(b []byte, secret [16]byte) (Packet, error) {
	p, err := Parse(b)
	if err != nil {
		return Packet{}, err
	}
	if binary.LittleEndian.Uint64(b[48:]) != Sum64(secret, b[:Signed]) {
		return Packet{}, ErrBadTag
	}
	return p, nil
}
