package model_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/packet"
)

// fwknop's clients in the random scenarios: datagrams of fwknop's form to
// the SPA port, made with package fwknop as a client makes them, under
// the scenario's HMAC keys (some configured, one never), and forged,
// replayed, GnuPG-long or at the edges of the form's lengths; the keys run
// writes, and the grants run asks of fwknop_grant for what it accepts.

// fwknopKeys is how many HMAC keys a scenario has: the last is never
// configured (a datagram under it is a wrong key's).
const fwknopKeys = 4

// fwknopKey is one of a scenario's keys: a Rijndael key and an HMAC key.
type fwknopKey struct{ enc, mac []byte }

func newFwknopKeys(r *rand.Rand) []fwknopKey {
	out := make([]fwknopKey, fwknopKeys)
	for i := range out {
		out[i] = fwknopKey{enc: randBytes(r, 32), mac: randBytes(r, 32+r.IntN(33))}
	}
	return out
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randReader reads from r: fwknop.Seal's salt, the same for a seed.
type randReader struct{ r *rand.Rand }

func (rr randReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(rr.r.Uint32())
	}
	return len(p), nil
}

const b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// fwknopKeysStep is run writing its HMAC keys: a random order of some of
// the configured ones (never the last), now and then none.
func (g *gen) fwknopKeysStep() step {
	var keys []int
	if g.r.IntN(8) != 0 {
		perm := g.r.Perm(fwknopKeys - 1)
		keys = perm[:1+g.r.IntN(len(perm))]
	}
	return step{Kind: "fwknop-keys", Keys: keys}
}

// fwknopPayload is an fwknop datagram from src: mostly a client's, under a
// key of the scenario's, now and then forged, replayed, or made to a
// length of interest; and, for one that may be handed over, the grant run
// would ask for next.
func (g *gen) fwknopPayload(src netip.Addr) ([]byte, string) {
	r := g.r
	ki := r.IntN(fwknopKeys)
	k := g.sc.fwknop[ki]
	what := fmt.Sprintf("fwknop key %d", ki)
	var b []byte
	switch n := r.IntN(20); {
	case n < 3 && len(g.fwknopSent) > 0:
		// A datagram sent before, again: from its source or another.
		b = slices.Clone(g.fwknopSent[r.IntN(len(g.fwknopSent))])
		return b, fmt.Sprintf("fwknop replay of %d bytes", len(b))
	case n < 6:
		// A body of any length the form may have (and just outside it),
		// with a valid HMAC: the program verifies, it never decrypts.
		lens := []int{fwknop.MinLen - 1, fwknop.MinLen, fwknop.MinLen + 1, fwknop.GPGLen - 2, fwknop.GPGLen - 1,
			fwknop.GPGLen, fwknop.GPGLen + 1, fwknop.MaxLen, fwknop.MaxLen + 1, fwknop.MinLen + r.IntN(fwknop.MaxLen-fwknop.MinLen)}
		l := lens[r.IntN(len(lens))]
		body := make([]byte, l-fwknop.TagLen)
		for i := range body {
			body[i] = b64chars[r.IntN(64)]
		}
		m := hmac.New(sha256.New, k.mac)
		m.Write([]byte(fwknop.SaltPrefix))
		m.Write(body)
		b = append(body, base64.RawStdEncoding.EncodeToString(m.Sum(nil))...)
		what += fmt.Sprintf(" random body, %d bytes", l)
	default:
		// A client's datagram: access to some ports, for its source, -s,
		// or another address; a long list of ports reaches GnuPG's length.
		allow := src
		switch r.IntN(4) {
		case 0:
			allow = netip.IPv4Unspecified()
		case 1:
			allow = g.src()
		}
		if !allow.Is4() {
			allow = netip.IPv4Unspecified() // fwknop's message holds IPv4 alone
		}
		ports := []string{"tcp/22"}
		for range r.IntN(4) + r.IntN(2)*r.IntN(30) {
			p := g.portsToProbe()[r.IntN(len(g.portsToProbe()))]
			ports = append(ports, fmt.Sprintf("%s/%d", map[maps.Proto]string{maps.TCP: "tcp", maps.UDP: "udp"}[p.Proto], p.Num))
		}
		msg := &fwknop.Message{Rand: fmt.Sprintf("%016d", r.Uint64()%1e16), User: []string{"alice", "bob", "a-rather-long-user-name"}[r.IntN(3)],
			Timestamp: int64(g.tai / 1e9), Version: "3.0.0", Type: fwknop.AccessMsg, Allow: allow, Access: ports}
		var err error
		if b, err = fwknop.Seal(msg, k.enc, k.mac, fwknop.CBC, randReader{r}); err != nil {
			panic(err)
		}
		what += fmt.Sprintf(" client's, %d bytes, asks %v for %s", len(b), ports, allow)
	}
	body := len(b) - fwknop.TagLen
	switch r.IntN(8) {
	case 0:
		// A character of the tag changed to another of base64's (or, one
		// time in eight, to one outside it); one time in four the last,
		// to one that differs only in the two bits past the HMAC's 256,
		// which a lax decoder ignores.
		i := body + r.IntN(fwknop.TagLen)
		c := b64chars[r.IntN(64)]
		switch r.IntN(8) {
		case 0:
			c = "=.-_ \x00\xff"[r.IntN(7)]
		case 1, 2:
			i = len(b) - 1
			v := strings.IndexByte(b64chars, b[i])
			c = b64chars[v&^3|(v+1+r.IntN(3))&3]
		}
		if c != b[i] {
			what += fmt.Sprintf(" tag char %d %q->%q", i-body, b[i], c)
			b[i] = c
		}
	case 1:
		i := r.IntN(body)
		if c := b64chars[r.IntN(64)]; c != b[i] {
			what += fmt.Sprintf(" char %d %q->%q", i, b[i], c)
			b[i] = c
		}
	default:
		if ki < fwknopKeys-1 && fwknop.Form(b) && !fwknop.IsGPG(b) {
			if g.fwknopSent = append(g.fwknopSent, b); len(g.fwknopSent) > 8 {
				g.fwknopSent = g.fwknopSent[1:]
			}
			if r.IntN(2) == 0 {
				g.pending = append(g.pending, g.fwknopGrant(src))
			}
		}
	}
	return b, what
}

// fwknopGrant is what run asks fwknop_grant for after accepting a
// datagram from src: some services of the last configuration made, each
// with a port, for a timeout and a stanza; now and then an index no
// service holds, or a generation run read before the configuration
// changed.
func (g *gen) fwknopGrant(src netip.Addr) step {
	r := g.r
	s := step{Kind: "fwknop-grant", Addr: src, D: time.Duration(5+r.IntN(300)) * time.Second, Stanza: uint32(1 + r.IntN(3)),
		Stale: r.IntN(10) == 0}
	if r.IntN(4) == 0 {
		s.Addr = g.src()
	}
	probe := g.portsToProbe()
	names := g.names()
	for _, i := range r.Perm(len(names))[:1+r.IntN(min(3, len(names)))] {
		s.Grants = append(s.Grants, fwknopGrantOf{Service: names[i], Port: probe[r.IntN(len(probe))]})
	}
	if r.IntN(8) == 0 {
		s.Grants = append(s.Grants, fwknopGrantOf{Index: 5 + r.IntN(maps.MaxServices-5), Port: probe[0]})
	}
	g.open(s.Addr)
	return s
}

// fwknopFleet is a datagram the fleet shares (step fwknop-fleet, its
// payload in Frame): one sent before, or (then sent next, from anywhere)
// a new one, which the gate must then take for a replay.
func (g *gen) fwknopFleet() step {
	r := g.r
	s := step{Kind: "fwknop-fleet", Until: time.Unix(0, int64(g.tai)).Add(time.Duration(r.IntN(600)) * time.Second)}
	if len(g.fwknopSent) > 0 && r.IntN(3) == 0 {
		s.Frame = slices.Clone(g.fwknopSent[r.IntN(len(g.fwknopSent))])
		return s
	}
	src := g.src()
	k := g.sc.fwknop[r.IntN(fwknopKeys-1)]
	msg := &fwknop.Message{Rand: fmt.Sprintf("%016d", r.Uint64()%1e16), User: "carol", Timestamp: int64(g.tai / 1e9),
		Version: "3.0.0", Type: fwknop.AccessMsg, Allow: netip.IPv4Unspecified(), Access: []string{"tcp/22"}}
	b, err := fwknop.Seal(msg, k.enc, k.mac, fwknop.CBC, randReader{r})
	if err != nil {
		panic(err)
	}
	s.Frame = b
	f := packet.UDP(src, g.dstFor(src), 40000, spaPort)
	f.Payload = b
	g.pending = append(g.pending, step{Kind: "in", Frame: f.Bytes(), What: fmt.Sprintf("fwknop datagram the fleet shared, from %s", src)})
	return s
}

// fwknopGrantOf is a service a grant asks for: by name (its index is the
// configuration's in force when the step runs, as run reads it), or by a
// raw index when Service is "".
type fwknopGrantOf struct {
	Service string
	Index   int
	Port    maps.Port
}
