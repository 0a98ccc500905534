package spa

import (
	"strconv"
	"strings"
	"testing"
)

// Key files: no panic; a rejection names the source and the line, and
// never repeats a secret-looking field; what is accepted prints back to
// itself.
func FuzzParseKeys(f *testing.F) {
	f.Add("1 000102030405060708090a0b0c0d0e0f laptop\n")
	f.Add("# c\n42 ffffffffffffffffffffffffffffffff nat any-address open=2h\n")
	f.Add("7 000102030405060708090a0b0c0d0e0f web services=web,rdp\n")
	f.Add("000102030405060708090a0b0c0d0e0f 1 a\n1 00 a\n")
	f.Fuzz(func(t *testing.T, text string) {
		keys, err := ParseKeys(strings.NewReader(text), "keys")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "keys") {
				t.Errorf("ParseKeys: %q does not name the source", err)
			}
			for _, field := range strings.Fields(text) {
				if LooksLikeSecret(field) && strings.Contains(err.Error(), strconv.Quote(field)) {
					t.Errorf("ParseKeys: %q repeats the secret-looking %q", err, field)
				}
			}
			return
		}
		for _, k := range keys {
			again, err := ParseLine(k.Line())
			if err != nil || !again.Equal(&k) {
				t.Errorf("key %+v prints as %q, which parses to %+v, %v", k, k.Line(), again, err)
			}
		}
	})
}

// SPA payloads: no panic, only 56-byte (version 1) and 72-byte (version 2)
// payloads parse, a payload made from what parsed marshals to the same bytes
// but for the tag.
func FuzzParsePacket(f *testing.F) {
	p := Packet{KeyID: 7}
	f.Add(p.Marshal([16]byte{1}))
	p.Request = RequestOf([]string{"web", "rdp"})
	f.Add(p.Marshal([16]byte{1}))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Parse(b)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error")
			}
			return
		}
		if len(b) != Len && len(b) != LenRequest {
			t.Fatalf("a %d-byte payload parsed", len(b))
		}
		again := got.Marshal([16]byte{})
		signed := len(b) - 8
		if len(again) != len(b) || string(again[:signed]) != string(b[:signed]) {
			t.Errorf("payload %x parses to %+v, which marshals to %x", b[:signed], got, again)
		}
		if _, err := Verify(b, [16]byte{}); err != nil && err != ErrBadTag {
			t.Errorf("Verify of a payload that parses: %v", err)
		}
	})
}
