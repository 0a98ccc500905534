package spa

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSum64ReferenceVectors(t *testing.T) {
	var key [16]byte
	for i := range key {
		key[i] = byte(i)
	}
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte(i)
	}
	for n, want := range ReferenceVectors {
		var out [8]byte
		binary.LittleEndian.PutUint64(out[:], Sum64(key, msg[:n]))
		if got := hex.EncodeToString(out[:]); got != want {
			t.Errorf("length %d: %s, want %s", n, got, want)
		}
	}
}

func TestPacketRoundTrip(t *testing.T) {
	secret := [16]byte{1, 2, 3}
	for _, open := range []netip.Addr{{}, netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::9")} {
		p, err := New(77, open)
		if err != nil {
			t.Fatal(err)
		}
		b := p.Marshal(secret)
		if len(b) != Len {
			t.Fatalf("payload %d bytes", len(b))
		}
		if open.Is4() && hex.EncodeToString(b[32:48]) != "00000000000000000000ffffc0000207" {
			t.Errorf("IPv4 address not v4-mapped: %x", b[32:48])
		}
		got, err := Verify(b, secret)
		if err != nil {
			t.Fatal(err)
		}
		if got.KeyID != 77 || got.Open != open || got.Nonce != p.Nonce || got.Time.UnixMilli() != p.Time.UnixMilli() {
			t.Errorf("round trip: %+v, want %+v", got, p)
		}
		if _, err := Verify(b, [16]byte{9}); err != ErrBadTag {
			t.Errorf("other key: %v, want ErrBadTag", err)
		}
		for bit := 0; bit < Len*8; bit++ {
			c := append([]byte(nil), b...)
			c[bit/8] ^= 1 << (bit % 8)
			if _, err := Verify(c, secret); err == nil {
				t.Fatalf("bit %d flipped: still verifies", bit)
			}
		}
	}
}

// A version-2 packet carries its request inside the tagged bytes: every
// bit of it counts, and it parses back to the same services.
func TestPacketRequest(t *testing.T) {
	secret := [16]byte{4, 5, 6}
	p, err := New(9, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	p.Request = RequestOf([]string{"web", "rdp"})
	b := p.Marshal(secret)
	if len(b) != LenRequest || b[0] != VersionRequest {
		t.Fatalf("payload %d bytes, version %d", len(b), b[0])
	}
	if got := binary.BigEndian.Uint32(b[Signed:]); got != ServiceHash("web") || got == 0 {
		t.Errorf("first request %08x, want web's hash %08x", got, ServiceHash("web"))
	}
	got, err := Verify(b, secret)
	if err != nil || !slices.Equal(got.Request, p.Request) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for bit := 0; bit < LenRequest*8; bit++ {
		c := append([]byte(nil), b...)
		c[bit/8] ^= 1 << (bit % 8)
		if _, err := Verify(c, secret); err == nil {
			t.Fatalf("bit %d flipped: still verifies", bit)
		}
	}
	// The same fields in the other length, or the other version in this
	// one, are refused.
	for _, c := range [][]byte{b[:Len], append([]byte{Version}, b[1:]...)} {
		if _, err := Parse(c); err == nil {
			t.Errorf("%d bytes, version %d: parsed", len(c), c[0])
		}
	}
	if ServiceHash("") == 0 || ServiceHash("default") == ServiceHash("web") {
		t.Error("service hashes: 0 for the empty name, or two names alike")
	}
}

func TestParseKeys(t *testing.T) {
	good := "# keys\n1 000102030405060708090a0b0c0d0e0f laptop\n\n42 ffffffffffffffffffffffffffffffff nat-box any-address open=2h # behind NAT\n" +
		"9 0f0e0d0c0b0a09080706050403020100 contractor services=web,rdp\n"
	keys, err := ParseKeys(strings.NewReader(good), "keys")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys[0].ID != 1 || keys[0].Name != "laptop" || keys[0].Secret[15] != 15 ||
		keys[1].ID != 42 || !keys[1].AnyAddress || keys[1].Open != 2*time.Hour ||
		!slices.Equal(keys[2].Services, []string{"web", "rdp"}) {
		t.Fatalf("parsed %+v", keys)
	}
	if got := keys[0].Scope(); !slices.Equal(got, []string{"default"}) {
		t.Errorf("scope of a key without services=: %v, want default", got)
	}
	for _, k := range keys {
		again, err := ParseLine(k.Line())
		if err != nil || !again.Equal(&k) {
			t.Errorf("Line %q parses to %+v, %v", k.Line(), again, err)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"1 0001 a", "line 1: bad key: want 32 hex digits"},
		{"0 000102030405060708090a0b0c0d0e0f a", `line 1: bad key id "0"`},
		{"x 000102030405060708090a0b0c0d0e0f a", `line 1: bad key id "x"`},
		{"1 000102030405060708090a0b0c0d0e0f", "line 1: want ID HEX NAME"},
		{"1 000102030405060708090a0b0c0d0e0f a b", `line 1: unknown key option "b"`},
		{"1 000102030405060708090a0b0c0d0e0f a open=-1s", `line 1: bad open= "-1s"`},
		// Fields out of order, or a key pasted where it does not belong: the
		// error says where, never what.
		{"000102030405060708090a0b0c0d0e0f 1 a", "line 1: bad key id (a 32-digit hex string: a key in the wrong place?)"},
		{"1 a 000102030405060708090a0b0c0d0e0f", "line 1: bad key: want 32 hex digits"},
		{"1 000102030405060708090a0b0c0d0e0f 000102030405060708090a0b0c0d0e0f", "line 1: bad key name (a 32-digit hex string"},
		{"1 000102030405060708090a0b0c0d0e0f a 000102030405060708090a0b0c0d0e0f", "line 1: unknown key option (a 32-digit hex string"},
		{"1 000102030405060708090a0b0c0d0e0f a open=000102030405060708090a0b0c0d0e0f", "line 1: bad open= (a 32-digit hex string"},
		{"1 000102030405060708090a0b0c0d0e0f a/b", `line 1: bad key name "a/b"`},
		{"1 000102030405060708090a0b0c0d0e0f a\n1 000102030405060708090a0b0c0d0e0f b", "line 2: key id 1 is on line 1 already"},
		{"1 000102030405060708090a0b0c0d0e0f a services=", `line 1: services=: service name "": use a-z, 0-9`},
		{"1 000102030405060708090a0b0c0d0e0f a services=Web", `line 1: services=: service name "Web": use a-z, 0-9`},
		{"1 000102030405060708090a0b0c0d0e0f a services=web,web", `line 1: services=: service "web" named twice`},
		{"1 000102030405060708090a0b0c0d0e0f a services=web,000102030405060708090a0b0c0d0e0f", "line 1: services=: bad service name (a 32-digit hex string"},
	} {
		_, err := ParseKeys(strings.NewReader(c.in), "f")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "000102030405060708090a0b0c0d0e0f") {
			t.Errorf("%q: error repeats the secret: %v", c.in, err)
		}
	}
}

func TestReadKeyFileAccess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys")
	k, err := NewKey(0, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(k.Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if keys, err := ReadKeyFile(path, OwnerOnly); err != nil || len(keys) != 1 || !keys[0].Equal(&k) {
		t.Fatalf("ReadKeyFile: %v %v", keys, err)
	}
	if os.Getuid() == 0 {
		if _, err := ReadKeyFile(path, RootOnly); err != nil {
			t.Fatalf("root's own 0600 file refused: %v", err)
		}
		if err := os.Chown(path, 1000, 1000); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadKeyFile(path, RootOnly); err == nil || !strings.Contains(err.Error(), "owned by uid 1000, not root") {
			t.Errorf("file of uid 1000: %v", err)
		}
		// Not the reader's: its owner could read or change the key.
		if _, err := ReadKeyFile(path, OwnerOnly); err == nil || !strings.Contains(err.Error(), "is not yours: it belongs to uid 1000 and you are uid 0") {
			t.Errorf("uid 1000's file read by root: %v", err)
		}
		os.Chown(path, 0, 0)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(path, mode)
		if _, err := ReadKeyFile(path, OwnerOnly); err == nil || !strings.Contains(err.Error(), "open to group or others") {
			t.Errorf("mode %o: %v", mode, err)
		}
	}
}
