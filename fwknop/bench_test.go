package fwknop

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

// BenchmarkHMAC is what the HMAC of a forged 204-byte datagram costs in
// software, to set beside what the XDP program pays for it (go test -bench
// Fwknop ./bpf/): crypto/hmac over crypto/sha256, which uses the CPU's
// SHA extensions where it has them (no BPF program can; run with -tags
// purego for Go's portable code), and FromStates, plain code as the
// program's, from the same precomputed inner and outer states: three
// blocks and the outer one.
func BenchmarkHMAC(b *testing.B) {
	key := bytes.Repeat([]byte{0x5a}, 64)
	msg := MACInput(bytes.Repeat([]byte{'A'}, 204-TagLen))
	var want [32]byte
	b.Run("crypto_sha256", func(b *testing.B) {
		m := hmac.New(sha256.New, key)
		var sum []byte
		for b.Loop() {
			m.Reset()
			m.Write(msg)
			sum = m.Sum(sum[:0])
		}
		copy(want[:], sum)
	})
	b.Run("from_states", func(b *testing.B) {
		inner, outer := HMACStates(key)
		var sum [32]byte
		for b.Loop() {
			sum = FromStates(inner, outer, msg)
		}
		if sum != want {
			b.Fatalf("FromStates %x, crypto/hmac %x", sum, want)
		}
	})
}
