package bpf_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/bpf/sha256test"
	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// The fwknop keys the tests give the real client and the gate.
var (
	fwkKey     = bytes.Repeat([]byte("r"), 32)
	fwkHMACKey = []byte(strings.Repeat("fedcba9876543210", 4))
)

// fwkClient is Debian's fwknop client with the test keys: the test needs
// it (and root), failing under CI=true without them.
func fwkClient(t *testing.T) *fwknop.Client {
	t.Helper()
	netns.Require(t, "fwknop")
	p, _ := fwknop.FindClient()
	return &fwknop.Client{Path: p, Key: base64.StdEncoding.EncodeToString(fwkKey),
		HMACKey: base64.StdEncoding.EncodeToString(fwkHMACKey)}
}

// newFwknopGate is an SPA gate that takes fwknop datagrams under hmacKeys,
// with a reader of what it hands over.
func newFwknopGate(t *testing.T, hmacKeys ...[]byte) (*gate, *maps.FwknopReader) {
	t.Helper()
	g := newSPAGate(t, spaConfig())
	g.setFwknopKeys(hmacKeys...)
	rd, err := g.maps.OpenFwknop()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return g, rd
}

func (g *gate) setFwknopKeys(hmacKeys ...[]byte) {
	g.t.Helper()
	var keys []maps.FwknopKey
	for i, k := range hmacKeys {
		keys = append(keys, maps.FwknopKey{HMACKey: k, Name: fmt.Sprint(i + 1)})
	}
	if err := g.maps.SetFwknopKeys(keys); err != nil {
		g.t.Fatal(err)
	}
}

// handed drains what the program handed over, without blocking.
func handed(t *testing.T, rd *maps.FwknopReader) []maps.FwknopDatagram {
	t.Helper()
	rd.SetDeadline(time.Now())
	var out []maps.FwknopDatagram
	for {
		d, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
}

// seen is the replay map's entry of payload's HMAC.
func (g *gate) seen(payload []byte) (maps.FwknopSeen, bool) {
	g.t.Helper()
	tag, _, err := fwknop.Tag(payload)
	if err != nil {
		return maps.FwknopSeen{}, false
	}
	all, err := g.maps.FwknopSeenAll()
	if err != nil {
		g.t.Fatal(err)
	}
	v, ok := all[maps.FwknopDigest(tag)]
	return v, ok
}

// macd is a datagram of fwknop's form whose body is n base64 characters
// from r and whose tag is its HMAC under key: what the program checks,
// whatever the body decrypts to.
func macd(r *rand.Rand, n int, key []byte) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	body := make([]byte, n)
	for i := range body {
		body[i] = alphabet[r.IntN(64)]
	}
	return withTag(body, key)
}

func withTag(body, key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(fwknop.MACInput(body))
	return append(bytes.Clone(body), base64.RawStdEncoding.EncodeToString(m.Sum(nil))...)
}

// Datagrams made by the real fwknop client verify, over IPv4 and IPv6: the
// program hands each over once, with its source, and drops it; a copy of
// one, from the same source or another, is a replay and goes no further.
func TestFwknopRealClientVerifies(t *testing.T) {
	c := fwkClient(t)
	forFamilies(t, func(t *testing.T, f family) {
		g, rd := newFwknopGate(t, fwkHMACKey)
		for _, args := range [][]string{
			{"-A", "tcp/22", "-a", "198.51.100.7"},
			{"-A", "tcp/22,udp/1194", "-s"},
			{"-A", "tcp/443", "-a", "10.0.0.2", "-f", "90", "-U", "someone-with-a-long-name"},
			{"-C", "uptime", "-a", "10.0.0.2"},
		} {
			pkt, err := c.Make(args...)
			if err != nil {
				t.Fatal(err)
			}
			what := strings.Join(args, " ")
			frame := f.spaFrame(f.src, pkt).Bytes()
			g.expect(what, frame, xdpDrop, "dropped_spa", "fwknop_passed")
			got := handed(t, rd)
			if len(got) != 1 || got[0].Src != f.src || got[0].Dst != f.dst || got[0].Key != 0 || !bytes.Equal(got[0].Payload, pkt) {
				t.Fatalf("%s: handed over %+v", what, got)
			}
			if v, ok := g.seen(pkt); !ok || v.Seen == 0 || !v.KeepUntil.IsZero() {
				t.Errorf("%s: replay entry %+v %v", what, v, ok)
			}
			g.expect(what+" again", frame, xdpDrop, "dropped_spa", "fwknop_replay")
			g.expect(what+" from another source", f.spaFrame(f.other, pkt).Bytes(), xdpDrop, "dropped_spa", "fwknop_replay")
			if got := handed(t, rd); len(got) != 0 {
				t.Errorf("%s: a replay was handed over: %+v", what, got)
			}
			g.noGrant(what, f.src)
			g.expectEvents(what)
		}
	})
}

// Every single-character change of a real datagram, in its base64 body or
// in its tag, is refused in the program: to another base64 character, to
// a byte that is not base64, and (for the tag's last character) to each
// spelling of the same HMAC with spare bits set.
func TestFwknopEveryCharacterChangeRefused(t *testing.T) {
	c := fwkClient(t)
	g, rd := newFwknopGate(t, fwkHMACKey)
	pkt, err := c.Make("-A", "tcp/22", "-a", "198.51.100.7")
	if err != nil {
		t.Fatal(err)
	}
	f := families[0]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	before := g.counters()
	runs := 0
	for i := range pkt {
		v := strings.IndexByte(alphabet, pkt[i])
		subs := []byte{alphabet[(v+1)%64], alphabet[(v+37)%64], '=', 0, '\n', pkt[i] ^ 0x80}
		if i == len(pkt)-1 {
			subs = append(subs, alphabet[v|1], alphabet[v|2], alphabet[v|3])
		}
		for _, b := range subs {
			if b == pkt[i] {
				continue
			}
			q := bytes.Clone(pkt)
			q[i] = b
			c0 := g.counters()
			if v := g.run(f.spaFrame(f.src, q).Bytes()); v != xdpDrop {
				t.Fatalf("byte %d to %q: %s", i, b, verdictName(v))
			}
			if c1 := g.counters(); c1.Counter(bpf.KnockgateCounterCOUNTER_FWKNOP_PASSED) != c0.Counter(bpf.KnockgateCounterCOUNTER_FWKNOP_PASSED) {
				t.Errorf("byte %d of %d (%q) to %q: handed over", i, len(pkt), pkt[i], b)
			}
			runs++
		}
	}
	after := g.counters()
	want := make([]string, 0, 2*runs)
	for range runs {
		want = append(want, "dropped_spa", "fwknop_bad_hmac")
	}
	g.counted(fmt.Sprintf("%d changed datagrams", runs), before, after, want...)
	if got := handed(t, rd); len(got) != 0 {
		t.Errorf("changed datagrams handed over: %d", len(got))
	}
	if all, _ := g.maps.FwknopSeenAll(); len(all) != 0 {
		t.Errorf("changed datagrams remembered: %d", len(all))
	}
	g.expect("the datagram itself", f.spaFrame(f.src, pkt).Bytes(), xdpDrop, "dropped_spa", "fwknop_passed")
}

// Keys: a datagram under another key is refused; with several keys, the
// one that verifies is named, whichever place it has (the right one last
// of 16); with none, fwknop datagrams are what they were before fwknop,
// datagrams of a bad length.
func TestFwknopKeys(t *testing.T) {
	c := fwkClient(t)
	f := families[0]
	r := rand.New(rand.NewPCG(5, 6))
	others := make([][]byte, 15)
	for i := range others {
		others[i] = make([]byte, 16+r.IntN(100))
		for j := range others[i] {
			others[i][j] = byte(r.Uint32())
		}
	}
	g, rd := newFwknopGate(t, others...)
	mk := func() []byte {
		pkt, err := c.Make("-A", "tcp/22", "-s")
		if err != nil {
			t.Fatal(err)
		}
		return pkt
	}
	g.expect("wrong keys", f.spaFrame(f.src, mk()).Bytes(), xdpDrop, "dropped_spa", "fwknop_bad_hmac")
	g.setFwknopKeys(append(others, fwkHMACKey)...)
	g.expect("right key last of 16", f.spaFrame(f.src, mk()).Bytes(), xdpDrop, "dropped_spa", "fwknop_passed")
	if got := handed(t, rd); len(got) != 1 || got[0].Key != 15 {
		t.Errorf("handed over %+v, want key 15", got)
	}
	g.setFwknopKeys(fwkHMACKey, others[0])
	g.expect("right key first", f.spaFrame(f.src, mk()).Bytes(), xdpDrop, "dropped_spa", "fwknop_passed")
	if got := handed(t, rd); len(got) != 1 || got[0].Key != 0 {
		t.Errorf("handed over %+v, want key 0", got)
	}
	names, err := g.maps.FwknopKeyNames()
	if err != nil || strings.Join(names, " ") != "1 2" {
		t.Errorf("key names %q, %v", names, err)
	}
	g.setFwknopKeys()
	g.expect("no keys", f.spaFrame(f.src, mk()).Bytes(), xdpDrop, "dropped_spa", "spa_bad_length")
	// Keys of every length: as long as a block and longer (hashed first).
	for _, n := range []int{1, 63, 64, 65, 128} {
		k := bytes.Repeat([]byte{byte(n)}, n)
		g.setFwknopKeys(k)
		g.expect(fmt.Sprintf("a key of %d bytes", n), f.spaFrame(f.src, macd(r, 161, k)).Bytes(), xdpDrop, "dropped_spa", "fwknop_passed")
	}
	handed(t, rd)
}

// Lengths: the form is 140 to 1500 bytes; from 400 on a datagram is
// GnuPG's by fwknop's rule, whatever it begins with ("hQ", the prefix its
// client strips, or not); below 400 a valid HMAC passes whatever the body
// begins with. Every body length from the shortest to the longest, so the
// SHA-256 padding crosses each block boundary.
func TestFwknopLengths(t *testing.T) {
	netns.Require(t)
	g, rd := newFwknopGate(t, fwkHMACKey)
	f := families[0]
	r := rand.New(rand.NewPCG(7, 8))
	send := func(what string, payload []byte, counters ...string) {
		t.Helper()
		g.expect(what, f.spaFrame(f.src, payload).Bytes(), xdpDrop, append([]string{"dropped_spa"}, counters...)...)
	}
	send("139 bytes", macd(r, 139-fwknop.TagLen, fwkHMACKey), "spa_bad_length")
	send("1501 bytes", macd(r, 1501-fwknop.TagLen, fwkHMACKey), "spa_bad_length")
	send("400 bytes", macd(r, 400-fwknop.TagLen, fwkHMACKey), "fwknop_gpg")
	send("1500 bytes", macd(r, 1500-fwknop.TagLen, fwkHMACKey), "fwknop_gpg")
	gpg := macd(r, 450-fwknop.TagLen, fwkHMACKey)
	copy(gpg, "hQ")
	send("GnuPG's prefix, 450 bytes", gpg, "fwknop_gpg")
	short := withTag(append([]byte("hQ"), macd(r, 200-2-fwknop.TagLen, fwkHMACKey)[:200-2-fwknop.TagLen]...), fwkHMACKey)
	send("GnuPG's prefix, 200 bytes: Rijndael by its length", short, "fwknop_passed")
	handed(t, rd)
	send("knockgate's own length (56)", macd(r, 56-fwknop.TagLen, fwkHMACKey), "spa_bad_version")
	passed := 0
	for n := fwknop.MinLen; n < fwknop.GPGLen; n++ {
		send(fmt.Sprintf("%d bytes", n), macd(r, n-fwknop.TagLen, fwkHMACKey), "fwknop_passed")
		passed += len(handed(t, rd))
		if n == fwknop.MinLen || n == fwknop.GPGLen-1 {
			continue
		}
		bad := macd(r, n-fwknop.TagLen, fwkHMACKey)
		bad[r.IntN(n-fwknop.TagLen)] ^= 1
		send(fmt.Sprintf("%d bytes, a bit flipped", n), bad, "fwknop_bad_hmac")
	}
	if passed != fwknop.GPGLen-fwknop.MinLen {
		t.Errorf("handed over %d datagrams, want %d", passed, fwknop.GPGLen-fwknop.MinLen)
	}
}

// A replay map that is full refuses a new datagram (never forgets an
// entry to make room), and a ring run does not read loses what does not
// fit, each counted; the datagram lost stays remembered.
func TestFwknopFull(t *testing.T) {
	netns.Require(t)
	g, rd := newFwknopGate(t, fwkHMACKey)
	f := families[0]
	r := rand.New(rand.NewPCG(9, 10))
	lost := 0
	for i := 0; lost == 0; i++ {
		p := macd(r, 300, fwkHMACKey)
		before := g.counters()
		g.run(f.spaFrame(f.src, p).Bytes())
		after := g.counters()
		if after.Counter(bpf.KnockgateCounterCOUNTER_FWKNOP_LOST) > before.Counter(bpf.KnockgateCounterCOUNTER_FWKNOP_LOST) {
			lost++
			if _, ok := g.seen(p); !ok {
				t.Error("a datagram lost on the ring is not remembered")
			}
		}
		if i > maps.FwknopKeys*100 {
			t.Fatal("the ring never filled")
		}
	}
	n := len(handed(t, rd))
	t.Logf("the ring took %d datagrams", n)
	var d maps.FwknopDigest
	for i := 0; ; i++ {
		binary.LittleEndian.PutUint64(d[:], uint64(i))
		if _, err := g.maps.FwknopRemember(d, time.Unix(1, 0)); err != nil {
			break // full
		}
	}
	g.expect("replay map full", f.spaFrame(f.src, macd(r, 300, fwkHMACKey)).Bytes(), xdpDrop, "dropped_spa", "fwknop_replay_full")
}

// The C SHA-256 core against FIPS 180-4's vectors (the Go core's, the
// same table).
func TestSHA256CoreFIPS(t *testing.T) {
	netns.Require(t)
	var objs sha256test.Sha256Objects
	if err := sha256test.LoadSha256Objects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	const maxBlocks = 32
	for _, v := range []struct{ msg, digest string }{
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
		{"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
			"cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
		{strings.Repeat("a", 1000000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
	} {
		padded := fwknop.Pad([]byte(v.msg), 0)
		st := fwknop.IV
		for len(padded) > 0 {
			n := min(len(padded)/64, maxBlocks)
			var frame bytes.Buffer
			binary.Write(&frame, binary.NativeEndian, st)
			binary.Write(&frame, binary.NativeEndian, [2]uint32{uint32(n), 0})
			for i := range maxBlocks * 16 {
				var w uint32
				if i < n*16 {
					w = binary.BigEndian.Uint32(padded[4*i:])
				}
				binary.Write(&frame, binary.NativeEndian, w)
			}
			out := make([]byte, frame.Len())
			if ret, err := objs.Sha256.Run(&ebpf.RunOptions{Data: frame.Bytes(), DataOut: out}); err != nil || ret != xdpPass {
				t.Fatalf("run: %d, %v", ret, err)
			}
			binary.Read(bytes.NewReader(out), binary.NativeEndian, &st)
			padded = padded[n*64:]
		}
		var got [32]byte
		for i, x := range st {
			binary.BigEndian.PutUint32(got[4*i:], x)
		}
		if fmt.Sprintf("%x", got) != v.digest {
			t.Errorf("SHA-256 of %.20q: %x, want %s", v.msg, got, v.digest)
		}
	}
}

// The grant program: each service the request names that the
// configuration in force has, for the window asked, with an open event
// naming the stanza; a request made under another generation grants
// nothing.
func TestFwknopGrantProgram(t *testing.T) {
	netns.Require(t)
	cfg := spaConfig()
	g := newSPAGate(t, cfg)
	f := families[0]
	req := &maps.FwknopGrant{Addr: f.src, Stanza: 3, Open: 45e9, Generation: g.cfg.Generation + 1,
		Services: map[int]maps.Port{0: ssh}}
	if _, err := maps.RunFwknopGrant(g.objs.FwknopGrant, req); !errors.Is(err, maps.ErrStaleGeneration) {
		t.Fatalf("a stale generation: %v", err)
	}
	g.noGrant("stale", f.src)
	req.Generation = g.cfg.Generation
	before := g.counters()
	start := maps.BootNow()
	n, err := maps.RunFwknopGrant(g.objs.FwknopGrant, req)
	if err != nil || n != 1 {
		t.Fatalf("grant: %d, %v", n, err)
	}
	g.counted("grant", before, g.counters(), "granted")
	gr, ok := g.grant(f.src)
	if !ok {
		t.Fatal("no grant")
	}
	within(t, "expiry", gr.ExpiresNs, start+45e9, maps.BootNow()+45e9)
	evs := g.expectEvents("grant", "open")
	if len(evs) == 1 && (evs[0].raw.Fwknop != 1 || evs[0].Stanza != 3 || evs[0].KeyID != 0 || evs[0].Port != ssh || evs[0].Src != f.src) {
		t.Errorf("open event %+v", evs[0])
	}
	g.expect("ssh after", f.tcp(f.src, ssh.Num, packet.SYN), xdpPass, "passed_granted")
	req.Services = map[int]maps.Port{5: ssh}
	if n, err := maps.RunFwknopGrant(g.objs.FwknopGrant, req); err != nil || n != 0 {
		t.Errorf("a service the gate lacks: %d, %v", n, err)
	}
}
