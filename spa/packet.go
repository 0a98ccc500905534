package spa

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// The wire format (README "Single-packet authorization"): one UDP datagram,
// big-endian fields. Version 1, exactly Len bytes, opens every service of
// its key:
//
//	0 version  1 flags  2 reserved (2)  4 key id (4)  8 Unix ms (8)
//	16 nonce (16)  32 address to open (16, zero: the source)  48 tag (8)
//
// The tag is Sum64 of bytes 0-47 under the key, written little-endian.
// Version 2, exactly LenRequest bytes, asks for some of them: the same to
// byte 47, then up to MaxRequest services by ServiceHash of their names
// (48-63, 4 bytes each, 0: unused), then the tag over bytes 0-63.
const (
	Len     = 56
	Signed  = 48
	Version = 1
	// LenRequest, SignedRequest and VersionRequest are version 2's.
	LenRequest     = 72
	SignedRequest  = 64
	VersionRequest = 2
	// MaxRequest is how many services one packet may ask for.
	MaxRequest = 4
	// DefaultPort is the SPA port when none is given (fwknop's too).
	DefaultPort = 62201
	// DefaultWindow is how far a packet's timestamp may be from the gate's
	// clock, either way, when none is given.
	DefaultWindow = 30 * time.Second
)

// ServiceHash is what a version-2 packet names a service by:
// policy.ServiceHash, FNV-1a (32 bits) of its name, 1 in place of 0 (which
// marks an unused request).
func ServiceHash(name string) uint32 { return policy.ServiceHash(name) }

// Packet is what an SPA datagram says.
type Packet struct {
	KeyID uint32
	// Time is when it was made, to the millisecond.
	Time  time.Time
	Nonce [16]byte
	// Open is the address to open; the zero Addr asks for the packet's
	// source (what a client behind NAT sends).
	Open netip.Addr
	// Request names the services asked for by ServiceHash (at most
	// MaxRequest; none: every service of the key, a version-1 packet).
	Request []uint32
}

// RequestOf is the request for services by name.
func RequestOf(services []string) []uint32 {
	var out []uint32
	for _, s := range services {
		out = append(out, ServiceHash(s))
	}
	return out
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

// Marshal is the packet's payload, tagged under secret: version 2 when it
// has a request (of at most MaxRequest services; more panics), else 1.
func (p *Packet) Marshal(secret [16]byte) []byte {
	if len(p.Request) > MaxRequest {
		panic(fmt.Sprintf("spa: a request for %d services (at most %d a packet)", len(p.Request), MaxRequest))
	}
	n, signed, version := Len, Signed, byte(Version)
	if len(p.Request) > 0 {
		n, signed, version = LenRequest, SignedRequest, VersionRequest
	}
	b := make([]byte, n)
	b[0] = version
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
	for i, h := range p.Request {
		binary.BigEndian.PutUint32(b[Signed+4*i:], h)
	}
	binary.LittleEndian.PutUint64(b[signed:], Sum64(secret, b[:signed]))
	return b
}

// Parse reads a payload's fields without checking its tag (Verify does).
func Parse(b []byte) (Packet, error) {
	version := byte(Version)
	switch len(b) {
	case Len:
	case LenRequest:
		version = VersionRequest
	default:
		return Packet{}, fmt.Errorf("SPA payload is %d bytes, want %d (or %d, with a request)", len(b), Len, LenRequest)
	}
	if b[0] != version || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return Packet{}, fmt.Errorf("SPA version %d flags %d reserved %d in %d bytes: want version %d, 0, 0",
			b[0], b[1], binary.BigEndian.Uint16(b[2:]), len(b), version)
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
	if version == VersionRequest {
		for i := range MaxRequest {
			h := binary.BigEndian.Uint32(b[Signed+4*i:])
			if h == 0 {
				continue
			}
			if len(p.Request) < i {
				// The gate takes gaps; this package never makes them.
				return Packet{}, fmt.Errorf("SPA request %d follows an unused one", i+1)
			}
			p.Request = append(p.Request, h)
		}
		if len(p.Request) == 0 {
			return Packet{}, errors.New("SPA version 2 packet requests no service")
		}
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
	signed := len(b) - 8
	if binary.LittleEndian.Uint64(b[signed:]) != Sum64(secret, b[:signed]) {
		return Packet{}, ErrBadTag
	}
	return p, nil
}
