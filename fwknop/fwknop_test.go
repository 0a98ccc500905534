package fwknop

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FIPS 180-4's examples (and the NIST SHA-256 one- and two-block
// vectors), and the empty message.
var fips = []struct{ msg, digest string }{
	{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	{"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
		"cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
	{strings.Repeat("a", 1000000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
}

func TestSHA256FIPS(t *testing.T) {
	for _, v := range fips {
		h := IV
		for _, b := range chunks(Pad([]byte(v.msg), 0)) {
			Block(&h, b)
		}
		var got [32]byte
		for i, x := range h {
			got[4*i], got[4*i+1], got[4*i+2], got[4*i+3] = byte(x>>24), byte(x>>16), byte(x>>8), byte(x)
		}
		if hex.EncodeToString(got[:]) != v.digest {
			t.Errorf("SHA-256 of %.20q: %x, want %s", v.msg, got, v.digest)
		}
	}
}

// HMAC from the precomputed states is crypto/hmac's, for keys shorter
// than, as long as and longer than a block, and messages of every length
// around the block boundaries the datagrams reach.
func TestHMACStates(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, klen := range []int{1, 16, 32, 63, 64, 65, 100, 128} {
		key := make([]byte, klen)
		for i := range key {
			key[i] = byte(r.Uint32())
		}
		inner, outer := HMACStates(key)
		for mlen := 0; mlen <= MaxMAC; mlen += 1 + mlen/40 {
			msg := make([]byte, mlen)
			for i := range msg {
				msg[i] = byte(r.Uint32())
			}
			m := hmac.New(sha256.New, key)
			m.Write(msg)
			if got := FromStates(inner, outer, msg); !bytes.Equal(got[:], m.Sum(nil)) {
				t.Fatalf("key of %d bytes, message of %d: %x, want %x", klen, mlen, got, m.Sum(nil))
			}
		}
	}
}

// requireClient finds the fwknop client: a test that needs it fails under
// CI=true without it, and skips elsewhere.
func requireClient(t *testing.T) string {
	t.Helper()
	p, err := FindClient()
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs Debian's fwknop-client (CI=true: not skipped)")
	}
	t.Skip("needs Debian's fwknop-client")
	return ""
}

// Fixed keys the tests give the real client.
var (
	testKey     = bytes.Repeat([]byte("k"), 32)
	testHMACKey = []byte(strings.Repeat("0123456789abcdef", 4))
)

func testClient(t *testing.T) *Client {
	return &Client{Path: requireClient(t), Key: base64.StdEncoding.EncodeToString(testKey),
		HMACKey: base64.StdEncoding.EncodeToString(testHMACKey)}
}

// The real client's datagrams verify, decrypt and decode to what it was
// asked for.
func TestRealClient(t *testing.T) {
	c := testClient(t)
	now := time.Now().Unix()
	for _, tc := range []struct {
		args    []string
		allow   string
		access  []string
		typ     int
		timeout int
	}{
		{[]string{"-A", "tcp/22", "-a", "198.51.100.7"}, "198.51.100.7", []string{"tcp/22"}, AccessMsg, 0},
		{[]string{"-A", "tcp/22,udp/1194", "-s"}, "0.0.0.0", []string{"tcp/22", "udp/1194"}, AccessMsg, 0},
		{[]string{"-A", "tcp/443", "-a", "10.0.0.2", "-f", "90"}, "10.0.0.2", []string{"tcp/443"}, ClientTimeoutAccessMsg, 90},
		{[]string{"-A", "tcp/22", "-a", "10.0.0.2", "-U", "alice"}, "10.0.0.2", []string{"tcp/22"}, AccessMsg, 0},
		{[]string{"-A", "tcp/22", "-a", "10.0.0.2", "-m", "sha512"}, "10.0.0.2", []string{"tcp/22"}, AccessMsg, 0},
		{[]string{"-A", "tcp/22", "-a", "10.0.0.2", "-m", "md5"}, "10.0.0.2", []string{"tcp/22"}, AccessMsg, 0},
		{[]string{"-C", "uptime", "-a", "10.0.0.2"}, "10.0.0.2", []string{"uptime"}, CommandMsg, 0},
	} {
		pkt, err := c.Make(tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		if !Form(pkt) || IsGPG(pkt) {
			t.Fatalf("%v: %d bytes: not of a Rijndael datagram's form", tc.args, len(pkt))
		}
		if !Verify(pkt, testHMACKey) {
			t.Fatalf("%v: HMAC does not verify", tc.args)
		}
		if Verify(pkt, []byte("another key")) {
			t.Fatalf("%v: verifies under another key", tc.args)
		}
		_, body, _ := Tag(pkt)
		m, err := Decrypt(body, testKey, CBC)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if m.Allow.String() != tc.allow || strings.Join(m.Access, ",") != strings.Join(tc.access, ",") ||
			m.Type != tc.typ || m.ClientTimeout != tc.timeout || m.Timestamp < now-5 || m.Timestamp > now+5 {
			t.Errorf("%v: decoded %+v", tc.args, m)
		}
		if _, err := Decrypt(body, bytes.Repeat([]byte("x"), 32), CBC); !errors.Is(err, ErrUndecryptable) && !errors.Is(err, ErrBadMessage) {
			t.Errorf("%v: decrypts under another key: %v", tc.args, err)
		}
	}
}

// Seal makes what the client makes: fwknopd-compatible bytes, which Open
// reads back, and the real client's datagrams have the same shape.
func TestSealRoundTrip(t *testing.T) {
	m := &Message{Rand: "1234567890123456", User: "root", Timestamp: 1700000000, Version: "3.0.0",
		Type: AccessMsg, Allow: netip.MustParseAddr("10.1.2.3"), Access: []string{"tcp/22"}}
	pkt, err := Seal(m, testKey, testHMACKey, CBC, rand.NewChaCha8([32]byte{3, 4}))
	if err != nil {
		t.Fatal(err)
	}
	if !Verify(pkt, testHMACKey) {
		t.Fatal("HMAC")
	}
	_, body, _ := Tag(pkt)
	got, err := Decrypt(body, testKey, CBC)
	if err != nil {
		t.Fatal(err)
	}
	if got.Encode() != m.Encode() {
		t.Fatalf("%q, want %q", got.Encode(), m.Encode())
	}
}

// The tag must be canonical: its last character's two spare bits set is
// another text, refused as fwknopd refuses it.
func TestTagCanonical(t *testing.T) {
	c := testClient(t)
	pkt, err := c.Make("-A", "tcp/22", "-a", "10.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	last := pkt[len(pkt)-1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	v := strings.IndexByte(alphabet, last)
	for spare := 1; spare < 4; spare++ {
		q := bytes.Clone(pkt)
		q[len(q)-1] = alphabet[v|spare]
		if Verify(q, testHMACKey) {
			t.Errorf("a tag ending %q for %q verifies", q[len(q)-1], last)
		}
	}
}

func TestParseAccess(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(testKey)
	hk := base64.StdEncoding.EncodeToString(testHMACKey)
	good := "# fwknopd's access.conf\n\nSOURCE ANY\nOPEN_PORTS tcp/22, udp/1194\nKEY_BASE64: " + key +
		"\nHMAC_KEY_BASE64  " + hk + " ; comment\nFW_ACCESS_TIMEOUT 60\nREQUIRE_SOURCE_ADDRESS Y\nGPG_REMOTE_ID ABCD\n" +
		"\nSOURCE 10.0.0.0/255.0.0.0, 192.0.2.1, 2001:db8::/32\nKEY secret\nHMAC_KEY othersecret\nENCRYPTION_MODE cbc\n" +
		"HMAC_DIGEST_TYPE SHA256\nRESTRICT_PORTS tcp/23\nREQUIRE_USERNAME bob\nMAX_FW_TIMEOUT 100\n"
	a, err := ParseAccess("access.conf", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Stanzas) != 2 || len(a.Warnings) != 1 || !strings.Contains(a.Warnings[0], "access.conf:9: GPG_REMOTE_ID ignored") {
		t.Fatalf("%+v", a)
	}
	s0, s1 := a.Stanzas[0], a.Stanzas[1]
	if s0.Num != 1 || s0.Line != 3 || len(s0.Open) != 2 || s0.Open[1] != (Port{"udp", 1194}) || !bytes.Equal(s0.Key, testKey) ||
		!bytes.Equal(s0.HMACKey, testHMACKey) || s0.Timeout != time.Minute || !s0.RequireSource || s0.MaxTimeout != DefaultMaxTimeout {
		t.Errorf("stanza 1: %+v", s0)
	}
	if s1.Name() != "stanza 2 (line 11)" || len(s1.Source) != 3 || s1.Source[0].String() != "10.0.0.0/8" || s1.Mode != CBC ||
		string(s1.Key) != "secret" || s1.RequireUser != "bob" || s1.Restrict[0] != (Port{"tcp", 23}) || s1.Timeout != DefaultTimeout ||
		s1.MaxTimeout != 100*time.Second {
		t.Errorf("stanza 2: %+v", s1)
	}
	keys, users := a.HMACKeys()
	if len(keys) != 2 || users[0][0] != 1 || users[1][0] != 2 {
		t.Errorf("HMAC keys: %q %v", keys, users)
	}
	for _, tc := range []struct{ file, err string }{
		{"SOURCE ANY\nKEY a\n", "access.conf:1: SOURCE: stanza 1 has no HMAC_KEY"},
		{"SOURCE ANY\nHMAC_KEY a\n", "access.conf:1: SOURCE: stanza 1 has no KEY"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY a\n", "access.conf:3: HMAC_KEY: the encryption key and the HMAC key"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nHMAC_DIGEST_TYPE sha512\n", "access.conf:4: HMAC_DIGEST_TYPE: sha512 is not supported"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nENCRYPTION_MODE CTR\n", "access.conf:4: ENCRYPTION_MODE: CTR is not supported"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nENCRYPTION_MODE legacy\n", "access.conf:4: ENCRYPTION_MODE: legacy is not supported"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nFORCE_NAT 192.168.1.2 22\n", "access.conf:4: FORCE_NAT: not supported: NAT"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nCMD_CYCLE_OPEN x\n", "access.conf:4: CMD_CYCLE_OPEN: not supported"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nDESTINATION ANY\n", "access.conf:4: DESTINATION: not supported"},
		{"%include /etc/fwknop/more.conf\n", "access.conf:1: %include: not supported"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nFOO bar\n", "access.conf:4: FOO: unknown key"},
		{"SOURCE 10.0.0.300\nKEY a\nHMAC_KEY b\n", "access.conf:1: SOURCE: \"10.0.0.300\""},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nOPEN_PORTS icmp/0\n", "access.conf:4: OPEN_PORTS: \"icmp/0\": the protocol is tcp or udp"},
		{"SOURCE ANY\nKEY " + strings.Repeat("k", 33) + "\nHMAC_KEY b\n", "access.conf:2: KEY: 33 bytes: fwknop takes 1 to 32"},
		{"SOURCE ANY\nKEY __CHANGEME__\nHMAC_KEY b\n", "access.conf:2: KEY: not set"},
		{"SOURCE ANY\nKEY_BASE64 !!!\nHMAC_KEY b\n", "access.conf:2: KEY_BASE64: not base64"},
		{"SOURCE ANY\nKEY a\nHMAC_KEY b\nFW_ACCESS_TIMEOUT soon\n", "access.conf:4: FW_ACCESS_TIMEOUT: \"soon\": seconds"},
		{"# nothing\n", "access.conf: no SOURCE stanza"},
	} {
		_, err := ParseAccess("access.conf", []byte(tc.file))
		if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
			t.Errorf("%q: %v, want %s...", tc.file, err, tc.err)
		}
	}
}

// ReadAccess takes only a file root alone may read, as knockgate's key
// files.
func TestReadAccessPermissions(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true: not skipped)")
		}
		t.Skip("needs root")
	}
	p := t.TempDir() + "/access.conf"
	if err := os.WriteFile(p, []byte("SOURCE ANY\nKEY a\nHMAC_KEY b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAccess(p); err == nil || !strings.Contains(err.Error(), "open to group or others (mode 0644)") {
		t.Errorf("mode 644: %v", err)
	}
	os.Chmod(p, 0o600)
	if _, err := ReadAccess(p); err != nil {
		t.Errorf("mode 600: %v", err)
	}
	os.Chown(p, 1000, 0)
	if _, err := ReadAccess(p); err == nil || !strings.Contains(err.Error(), "owned by uid 1000, not root") {
		t.Errorf("uid 1000: %v", err)
	}
}

// Decide follows fwknopd's stanza loop and checks.
func TestDecide(t *testing.T) {
	c := testClient(t)
	hk := base64.StdEncoding.EncodeToString(testHMACKey)
	k := base64.StdEncoding.EncodeToString(testKey)
	conf := func(body string) *Access {
		a, err := ParseAccess("access.conf", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	stanza := func(extra string) string {
		return "SOURCE ANY\nKEY_BASE64 " + k + "\nHMAC_KEY_BASE64 " + hk + "\n" + extra
	}
	protects := func(p Port) string {
		switch p {
		case Port{"tcp", 22}:
			return "ssh"
		case Port{"tcp", 443}, Port{"tcp", 8443}:
			return "web"
		}
		return ""
	}
	src := netip.MustParseAddr("203.0.113.9")
	for _, tc := range []struct {
		name, access string
		args         []string
		src          netip.Addr
		skew         time.Duration
		want         Outcome
		addr         string
		services     string
		timeout      time.Duration
	}{
		{"-a", stanza(""), []string{"-A", "tcp/22", "-a", "198.51.100.7"}, src, 0, Accepted, "198.51.100.7", "ssh", DefaultTimeout},
		{"-s", stanza(""), []string{"-A", "tcp/22", "-s"}, src, 0, Accepted, "203.0.113.9", "ssh", DefaultTimeout},
		{"-s over IPv6", stanza(""), []string{"-A", "tcp/22", "-s"}, netip.MustParseAddr("2001:db8::9"), 0, Accepted, "2001:db8::9", "ssh", DefaultTimeout},
		{"-s required", stanza("REQUIRE_SOURCE_ADDRESS Y\n"), []string{"-A", "tcp/22", "-s"}, src, 0, SourceRequired, "", "", 0},
		{"-a required", stanza("REQUIRE_SOURCE_ADDRESS Y\n"), []string{"-A", "tcp/22", "-a", "198.51.100.7"}, src, 0, Accepted, "198.51.100.7", "ssh", DefaultTimeout},
		{"two services", stanza("FW_ACCESS_TIMEOUT 45\n"), []string{"-A", "tcp/22,tcp/443,tcp/8443", "-a", "10.0.0.2"}, src, 0, Accepted, "10.0.0.2", "ssh,web", 45 * time.Second},
		{"client timeout", stanza(""), []string{"-A", "tcp/22", "-a", "10.0.0.2", "-f", "200"}, src, 0, Accepted, "10.0.0.2", "ssh", 200 * time.Second},
		{"client timeout capped", stanza("MAX_FW_TIMEOUT 100\n"), []string{"-A", "tcp/22", "-a", "10.0.0.2", "-f", "200"}, src, 0, Accepted, "10.0.0.2", "ssh", 100 * time.Second},
		{"open ports", stanza("OPEN_PORTS tcp/22\n"), []string{"-A", "tcp/22,tcp/443", "-a", "10.0.0.2"}, src, 0, Ports, "", "", 0},
		{"restrict", stanza("RESTRICT_PORTS tcp/443\n"), []string{"-A", "tcp/22,tcp/443", "-a", "10.0.0.2"}, src, 0, Ports, "", "", 0},
		{"unprotected", stanza(""), []string{"-A", "tcp/80", "-a", "10.0.0.2"}, src, 0, NoService, "", "", 0},
		{"source", strings.Replace(stanza(""), "ANY", "192.0.2.0/24", 1), []string{"-A", "tcp/22", "-s"}, src, 0, NoStanza, "", "", 0},
		{"clock behind", stanza(""), []string{"-A", "tcp/22", "-s", "--time-offset-minus", "200s"}, src, 0, Clock, "", "", 0},
		{"clock ahead", stanza(""), []string{"-A", "tcp/22", "-s", "--time-offset-plus", "200s"}, src, 0, Clock, "", "", 0},
		{"username", stanza("REQUIRE_USERNAME bob\n"), []string{"-A", "tcp/22", "-s", "-U", "alice"}, src, 0, Username, "", "", 0},
		{"command", stanza(""), []string{"-C", "uptime", "-a", "10.0.0.2"}, src, 0, Unsupported, "", "", 0},
		{"wrong key", "SOURCE ANY\nKEY wrong\nHMAC_KEY_BASE64 " + hk + "\n", []string{"-A", "tcp/22", "-s"}, src, 0, Undecryptable, "", "", 0},
		// fwknopd goes on to the next stanza when one refuses: the second
		// allows 443.
		{"next stanza", stanza("OPEN_PORTS tcp/22\n") + stanza("OPEN_PORTS tcp/443\nFW_ACCESS_TIMEOUT 77\n"),
			[]string{"-A", "tcp/443", "-a", "10.0.0.2"}, src, 0, Accepted, "10.0.0.2", "web", 77 * time.Second},
	} {
		pkt, err := c.Make(tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		d := conf(tc.access).Decide(&Datagram{Payload: pkt, Src: tc.src, Now: time.Now().Add(tc.skew),
			Window: 120 * time.Second, Protects: protects})
		if d.Outcome != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, d.Outcome, d.Why, tc.want)
			continue
		}
		if tc.want != Accepted {
			continue
		}
		if d.Addr.String() != tc.addr || strings.Join(d.Services, ",") != tc.services || d.Timeout != tc.timeout {
			t.Errorf("%s: opens %s for %v for %s", tc.name, d.Addr, d.Services, d.Timeout)
		}
	}
}

func TestPortString(t *testing.T) {
	if s := (Port{"tcp", 22}).String(); s != "tcp/22" {
		t.Error(s)
	}
	if _, err := ParsePort("TCP/" + strconv.Itoa(65536)); err == nil {
		t.Error("port 65536")
	}
}
