package fwknop

import "encoding/binary"

// The SHA-256 compression function (FIPS 180-4, 6.2.2), for what
// crypto/sha256 does not expose: the chaining state after a block, which is
// what the XDP program takes for each key (HMAC's inner and outer states
// after the padded key, so the key itself never needs to be read per
// packet). bpf/sha256.h is its C twin; both are checked against FIPS
// 180-4's vectors.

// IV is SHA-256's initial hash value.
var IV = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

var k256 = [64]uint32{
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

func rotr(x uint32, n uint) uint32 { return x>>n | x<<(32-n) }

// Block runs the compression function over one 64-byte block p,
// updating h.
func Block(h *[8]uint32, p []byte) {
	var w [64]uint32
	for i := range 16 {
		w[i] = binary.BigEndian.Uint32(p[4*i:])
	}
	for i := 16; i < 64; i++ {
		s0 := rotr(w[i-15], 7) ^ rotr(w[i-15], 18) ^ w[i-15]>>3
		s1 := rotr(w[i-2], 17) ^ rotr(w[i-2], 19) ^ w[i-2]>>10
		w[i] = w[i-16] + s0 + w[i-7] + s1
	}
	a, b, c, d, e, f, g, hh := h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
	for i := range 64 {
		t1 := hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + (e&f ^ ^e&g) + k256[i] + w[i]
		t2 := (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + (a&b ^ a&c ^ b&c)
		hh, g, f, e, d, c, b, a = g, f, e, d+t1, c, b, a, t1+t2
	}
	h[0] += a
	h[1] += b
	h[2] += c
	h[3] += d
	h[4] += e
	h[5] += f
	h[6] += g
	h[7] += hh
}

// Pad is msg padded as SHA-256 pads a message that prefix bytes (whole
// blocks already hashed) precede: 0x80, zeros, and the length in bits of
// prefix+msg, big-endian, to a whole number of blocks.
func Pad(msg []byte, prefix int) []byte {
	n := len(msg)
	out := make([]byte, (n+9+63)/64*64)
	copy(out, msg)
	out[n] = 0x80
	binary.BigEndian.PutUint64(out[len(out)-8:], uint64(prefix+n)*8)
	return out
}

// HMACStates are the SHA-256 states of HMAC under key after its first
// block: the inner (key ^ ipad) and the outer (key ^ opad). A key longer
// than a block is hashed first, as HMAC (RFC 2104) and fwknop do.
func HMACStates(key []byte) (inner, outer [8]uint32) {
	var k [64]byte
	if len(key) > 64 {
		h := IV
		for _, blk := range chunks(Pad(key, 0)) {
			Block(&h, blk)
		}
		for i, x := range h {
			binary.BigEndian.PutUint32(k[4*i:], x)
		}
	} else {
		copy(k[:], key)
	}
	var ipad, opad [64]byte
	for i := range k {
		ipad[i], opad[i] = k[i]^0x36, k[i]^0x5c
	}
	inner, outer = IV, IV
	Block(&inner, ipad[:])
	Block(&outer, opad[:])
	return inner, outer
}

// FromStates is HMAC-SHA256 of msg from the states HMACStates gives: what
// the XDP program computes.
func FromStates(inner, outer [8]uint32, msg []byte) [32]byte {
	h := inner
	for _, blk := range chunks(Pad(msg, 64)) {
		Block(&h, blk)
	}
	var d [32]byte
	for i, x := range h {
		binary.BigEndian.PutUint32(d[4*i:], x)
	}
	o := outer
	for _, blk := range chunks(Pad(d[:], 64)) {
		Block(&o, blk)
	}
	for i, x := range o {
		binary.BigEndian.PutUint32(d[4*i:], x)
	}
	return d
}

func chunks(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 64 {
		out = append(out, b[:64])
		b = b[64:]
	}
	return out
}
