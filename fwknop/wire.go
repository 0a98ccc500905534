// Package fwknop is fwknop's single-packet authorization (fwknop 2.x, FKO
// protocol 3) in pure Go: the wire format of its Rijndael packets with an
// HMAC, and the access.conf that fwknopd reads, so that knockgate can take
// the packets every fwknop client sends. The XDP program verifies the HMAC
// (bpf/fwknop.h); `run` decrypts and decides with this package. Nothing
// here needs C or OpenSSL: crypto/aes, crypto/cipher, crypto/md5 and
// crypto/sha256 make the bytes fwknop's lib/cipher_funcs.c and
// lib/fko_hmac.c make.
//
// On the wire a packet is one UDP datagram of base64 text, '=' stripped:
//
//	b64(blob)[10:] ‖ b64(HMAC-SHA256(hmac key, b64(blob)))
//
// where blob is "Salted__", an 8-byte salt and the AES-256-CBC cipher text
// (PKCS#7 padding; key and IV from OpenSSL's EVP_BytesToKey with MD5, one
// round, over the key and the salt), and b64(blob) always begins with
// "U2FsdGVkX1" (base64 of "Salted__"), which the client drops after the
// HMAC is made over the whole. The plain text is
//
//	rand16:b64(user):timestamp:version:type:b64(message)[:b64(nat)][:b64(auth)][:timeout]:b64(sha256 of the rest)
//
// with message "ADDR,proto/port[,proto/port...]".
package fwknop

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Wire limits, fwknop's own (server/fwknopd_common.h, lib/fko_limits.h).
const (
	// MinLen and MaxLen bound a datagram fwknopd looks at.
	MinLen = 140
	MaxLen = 1500
	// GPGLen: a datagram this long or longer is GnuPG-encrypted by
	// fwknop's rule (fko_encryption_type: by length, not by a prefix on
	// the wire), which knockgate does not take.
	GPGLen = 400
	// TagLen is the base64 of an HMAC-SHA256, '=' stripped.
	TagLen = 43
	// SaltPrefix is base64 of "Salted__", which the client strips and
	// the HMAC covers.
	SaltPrefix = "U2FsdGVkX1"
	// MaxBody is the longest part before the tag a Rijndael datagram
	// has (GPGLen-1-TagLen), and MaxMAC what the HMAC covers.
	MaxBody = GPGLen - 1 - TagLen
	MaxMAC  = len(SaltPrefix) + MaxBody
)

// Message types (lib/fko.h, fko_message_type_t).
const (
	CommandMsg = iota
	AccessMsg
	NATAccessMsg
	ClientTimeoutAccessMsg
	ClientTimeoutNATAccessMsg
	LocalNATAccessMsg
	ClientTimeoutLocalNATAccessMsg
	lastMsgType
)

// Form reports whether payload, a datagram to the SPA port, is fwknop's
// by its form: 140 to 1500 bytes (knockgate's own are 56 or 72).
func Form(payload []byte) bool { return len(payload) >= MinLen && len(payload) <= MaxLen }

// IsGPG reports whether a datagram of fwknop's form is GnuPG-encrypted by
// fwknop's rule (its length).
func IsGPG(payload []byte) bool { return len(payload) >= GPGLen }

// Tag is the HMAC the datagram carries (its last TagLen characters), and
// the part before it. The tag must be canonical base64: the two bits its
// last character has beyond the HMAC's 256 must be zero (fwknopd compares
// the text, so no other spelling of an HMAC verifies).
func Tag(payload []byte) (tag [32]byte, body []byte, err error) {
	if len(payload) <= TagLen {
		return tag, nil, errors.New("too short for an HMAC")
	}
	body = payload[:len(payload)-TagLen]
	n, err := base64.RawStdEncoding.Strict().Decode(tag[:], payload[len(body):])
	if err != nil || n != 32 {
		return tag, nil, errors.New("the HMAC is not base64")
	}
	return tag, body, nil
}

// MACInput is what the HMAC covers: SaltPrefix and body.
func MACInput(body []byte) []byte { return append([]byte(SaltPrefix), body...) }

// Verify checks the datagram's HMAC under hmacKey (SHA-256), in constant
// time.
func Verify(payload, hmacKey []byte) bool {
	tag, body, err := Tag(payload)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, hmacKey)
	m.Write(MACInput(body))
	return subtle.ConstantTimeCompare(m.Sum(nil), tag[:]) == 1
}

// Mode is an encryption mode fwknop's access.conf may name. The gate
// takes CBC, the default, alone: legacy is CBC with the key padded with
// '0', which the fwknop client refuses to combine with an HMAC (and the
// gate needs the HMAC); the other modes are fwknop's own constructions.
type Mode int

const CBC Mode = 0

func (m Mode) String() string { return "CBC" }

// bytesToKey is OpenSSL's EVP_BytesToKey with MD5, one round: AES-256's
// key and the IV.
func bytesToKey(pass, salt []byte) (key, iv []byte) {
	var out, prev []byte
	for len(out) < 48 {
		h := md5.New()
		h.Write(prev)
		h.Write(pass)
		h.Write(salt)
		prev = h.Sum(nil)
		out = append(out, prev...)
	}
	return out[:32], out[32:48]
}

// ErrUndecryptable is a body that does not decrypt under the key to an
// fwknop message: the wrong key (or mode), or bytes nobody encrypted.
var ErrUndecryptable = errors.New("does not decrypt to an fwknop message")

// Decrypt decrypts the body of a datagram (what precedes the tag) under
// key and decodes the message, its digest checked.
func Decrypt(body, key []byte, mode Mode) (*Message, error) {
	blob, err := base64.RawStdEncoding.DecodeString(SaltPrefix + string(body))
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrUndecryptable)
	}
	if len(blob) < 32 || len(blob)%aes.BlockSize != 0 || string(blob[:8]) != "Salted__" {
		return nil, fmt.Errorf("%w: %d bytes of cipher text", ErrUndecryptable, len(blob))
	}
	k, iv := bytesToKey(key, blob[8:16])
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	pt := make([]byte, len(blob)-16)
	cipher.NewCBCDecrypter(blk, iv).CryptBlocks(pt, blob[16:])
	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > aes.BlockSize || !bytes.Equal(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, fmt.Errorf("%w: bad padding", ErrUndecryptable)
	}
	return Decode(pt[:len(pt)-pad])
}

// Message is a decrypted SPA message's fields.
type Message struct {
	Rand      string // 16 decimal digits
	User      string
	Timestamp int64 // Unix seconds
	Version   string
	Type      int
	// Allow is the address the client asks to open: 0.0.0.0 (fwknop -s)
	// for the datagram's source.
	Allow netip.Addr
	// Access is the rest of the message: "proto/port" items (access
	// messages), or the command (a command message).
	Access        []string
	NAT           string
	ServerAuth    string
	ClientTimeout int // seconds; 0: none asked for
	Digest        string
}

// ErrBadMessage is a plain text that is not an fwknop message, or one
// whose digest does not match.
var ErrBadMessage = errors.New("not a valid fwknop message")

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, a...))
}

// digests are the inner digests by the length of their base64: fwknop's
// client picks one (-m), the server tells it by length, and a SHA-256 or
// SHA-512 length may be SHA3's (lib/fko_decode.c).
var digests = map[int][]func() hash.Hash{
	22: {md5.New},
	27: {sha1.New},
	43: {sha256.New, func() hash.Hash { return sha3.New256() }},
	64: {sha512.New384},
	86: {sha512.New, func() hash.Hash { return sha3.New512() }},
}

// Decode parses a plain text as fwknop's decoder does (fko_decode.c): the
// digest (its type by its length) first, then the fields in order.
func Decode(pt []byte) (*Message, error) {
	for _, c := range pt {
		if c < 0x20 || c > 0x7e {
			return nil, bad("a byte that is not printable ASCII")
		}
	}
	s := string(pt)
	if len(s) < 17 || s[16] != ':' || strings.Trim(s[:16], "0123456789") != "" {
		return nil, bad("no random value")
	}
	colon := strings.LastIndexByte(s, ':')
	data, digest := s[:colon], s[colon+1:]
	if strings.Count(s, ":") < 6 {
		return nil, bad("fewer than %d fields", 6)
	}
	hs, ok := digests[len(digest)]
	if !ok {
		return nil, bad("a digest of %d characters", len(digest))
	}
	match := false
	for _, h := range hs {
		d := h()
		d.Write([]byte(data))
		want := base64.RawStdEncoding.EncodeToString(d.Sum(nil))
		if subtle.ConstantTimeCompare([]byte(want), []byte(digest)) == 1 {
			match = true
		}
	}
	if !match {
		return nil, bad("the digest does not match")
	}
	f := strings.Split(data, ":")
	m := &Message{Rand: f[0], Digest: digest}
	var err error
	if m.User, err = b64Field(f[1], 64, "user"); err != nil {
		return nil, err
	}
	if !validUser(m.User) {
		return nil, bad("user %q", m.User)
	}
	if len(f[2]) < 1 || len(f[2]) > 12 {
		return nil, bad("timestamp %q", f[2])
	}
	if m.Timestamp, err = strconv.ParseInt(f[2], 10, 64); err != nil || m.Timestamp < 0 || m.Timestamp > 1<<32-1 {
		return nil, bad("timestamp %q", f[2])
	}
	if len(f[3]) < 1 || len(f[3]) > 8 {
		return nil, bad("version %q", f[3])
	}
	m.Version = f[3]
	if len(f[4]) < 1 || len(f[4]) > 2 {
		return nil, bad("message type %q", f[4])
	}
	if m.Type, err = strconv.Atoi(f[4]); err != nil || m.Type < 0 || m.Type >= lastMsgType {
		return nil, bad("message type %q", f[4])
	}
	rest := f[5:] // message [nat] [auth] [timeout]
	maxRest := map[int]int{CommandMsg: 2, AccessMsg: 2, NATAccessMsg: 3, LocalNATAccessMsg: 3,
		ClientTimeoutAccessMsg: 3, ClientTimeoutNATAccessMsg: 4, ClientTimeoutLocalNATAccessMsg: 4}[m.Type]
	if len(rest) > maxRest {
		return nil, bad("%d fields for message type %d", 5+len(rest), m.Type)
	}
	msg, err := b64Field(rest[0], 256, "message")
	if err != nil {
		return nil, err
	}
	if err := m.parseMessage(msg); err != nil {
		return nil, err
	}
	rest = rest[1:]
	nat := m.Type == NATAccessMsg || m.Type == LocalNATAccessMsg || m.Type == ClientTimeoutNATAccessMsg ||
		m.Type == ClientTimeoutLocalNATAccessMsg
	if nat {
		if len(rest) == 0 {
			return nil, bad("no NAT access field")
		}
		if m.NAT, err = b64Field(rest[0], 256, "NAT access"); err != nil {
			return nil, err
		}
		rest = rest[1:]
	}
	timeout := m.Type == ClientTimeoutAccessMsg || m.Type == ClientTimeoutNATAccessMsg ||
		m.Type == ClientTimeoutLocalNATAccessMsg
	if timeout {
		if len(rest) == 0 {
			return nil, bad("no client timeout")
		}
		t := rest[len(rest)-1]
		if t == "" || strings.Trim(t, "0123456789") != "" || len(t) > 6 {
			return nil, bad("client timeout %q", t)
		}
		if m.ClientTimeout, err = strconv.Atoi(t); err != nil || m.ClientTimeout > 2<<15 {
			return nil, bad("client timeout %q", t)
		}
		rest = rest[:len(rest)-1]
	}
	if len(rest) > 0 && rest[0] != "" {
		if m.ServerAuth, err = b64Field(rest[0], 256, "server auth"); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func b64Field(s string, max int, what string) (string, error) {
	if s == "" {
		return "", bad("no %s", what)
	}
	if len(s) > max {
		return "", bad("%s too long", what)
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return "", bad("%s not base64", what)
	}
	return string(b), nil
}

// validUser is lib/fko_user.c's rule.
func validUser(u string) bool {
	if u == "" {
		return false
	}
	for _, c := range []byte(u) {
		if c < 0x20 || c > 0x7e || strings.IndexByte(`"/\[]:;|=,+*?<>`, c) >= 0 {
			return false
		}
	}
	return true
}

// parseMessage reads "ADDR,item[,item...]" (fko_message.c's rules: an
// IPv4 address, then items).
func (m *Message) parseMessage(s string) error {
	addr, items, ok := strings.Cut(s, ",")
	if !ok || items == "" {
		return bad("message %q", s)
	}
	if len(addr) < 7 || len(addr) > 15 || strings.Trim(addr, "0123456789.") != "" {
		return bad("address %q", addr)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return bad("address %q", addr)
	}
	m.Allow = a
	if m.Type == CommandMsg {
		m.Access = []string{items}
		return nil
	}
	for _, it := range strings.Split(items, ",") {
		if !validPortSpec(it) {
			return bad("access %q", it)
		}
		m.Access = append(m.Access, it)
	}
	return nil
}

// validPortSpec is fko_message.c's validate_proto_port_spec: the text
// starts with tcp, udp, icmp or none and its '/' comes within 4
// characters (so icmp and none never pass: only tcp/PORT and udp/PORT),
// and the port is 1 to 5 digits, 1-65535.
func validPortSpec(s string) bool {
	proto, port, ok := strings.Cut(s, "/")
	if !ok || proto != "tcp" && proto != "udp" {
		return false
	}
	if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}

// Encode makes the plain text of m (its Digest ignored): what the client
// encrypts.
func (m *Message) Encode() string {
	enc := func(s string) string { return base64.RawStdEncoding.EncodeToString([]byte(s)) }
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%s:%d:%s:%d:%s", m.Rand, enc(m.User), m.Timestamp, m.Version, m.Type,
		enc(m.Allow.String()+","+strings.Join(m.Access, ",")))
	if m.NAT != "" {
		b.WriteString(":" + enc(m.NAT))
	}
	if m.ServerAuth != "" {
		b.WriteString(":" + enc(m.ServerAuth))
	}
	if m.Type == ClientTimeoutAccessMsg || m.Type == ClientTimeoutNATAccessMsg || m.Type == ClientTimeoutLocalNATAccessMsg {
		fmt.Fprintf(&b, ":%d", m.ClientTimeout)
	}
	d := sha256.Sum256([]byte(b.String()))
	return b.String() + ":" + base64.RawStdEncoding.EncodeToString(d[:])
}

// Seal makes the datagram a client sends for m: encrypted under key (CBC,
// a salt read from rnd) and its HMAC under hmacKey. Tests use it where the
// real client cannot be run.
func Seal(m *Message, key, hmacKey []byte, mode Mode, rnd io.Reader) ([]byte, error) {
	salt := make([]byte, 8)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return nil, err
	}
	pt := []byte(m.Encode())
	pad := aes.BlockSize - len(pt)%aes.BlockSize
	pt = append(pt, bytes.Repeat([]byte{byte(pad)}, pad)...)
	k, iv := bytesToKey(key, salt)
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(ct, pt)
	full := base64.RawStdEncoding.EncodeToString(append(append([]byte("Salted__"), salt...), ct...))
	mac := hmac.New(sha256.New, hmacKey)
	mac.Write([]byte(full))
	return []byte(full[len(SaltPrefix):] + base64.RawStdEncoding.EncodeToString(mac.Sum(nil))), nil
}
