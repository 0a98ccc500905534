package model

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/netip"
)

// fwknop's clients (README: "fwknop clients"), as the XDP program must
// treat their datagrams, written from fwknop's wire format rather than from
// the program's way of computing it: the HMAC here is the standard
// library's over the text, compared as text, where the program runs its
// own SHA-256 from precomputed states and compares decoded words.
const (
	fwknopMinLen = 140  // shorter: knockgate's own form
	fwknopMaxLen = 1500 // longer: knockgate's own form
	fwknopGPGLen = 400  // this long or longer: GnuPG's, not taken
	fwknopTagLen = 43   // base64 of an HMAC-SHA256, '=' stripped
	// fwknopSaltPrefix is base64 of "Salted__": the client drops it from
	// the datagram after making the HMAC over it.
	fwknopSaltPrefix = "U2FsdGVkX1"
	// FwknopSeenMax is how many datagrams the gate remembers against
	// replays; past it a new one is refused, never an old one forgotten.
	FwknopSeenMax = 16384
)

// FwknopSeen is a datagram handed over, remembered by its HMAC: whence
// and when it came (zero: the fleet shared it), and until when run keeps
// it (Unix seconds; 0: run has not said).
type FwknopSeen struct {
	Src       Addr
	At        uint64 // CLOCK_BOOTTIME
	KeepUntil int64
}

// FwknopRecord is a datagram handed over to run.
type FwknopRecord struct {
	Time     uint64 // CLOCK_BOOTTIME
	Src, Dst Addr
	Key      int // the index of the HMAC key that verified it
	Data     []byte
}

func (r FwknopRecord) String() string {
	return fmt.Sprintf("{time %d src %s dst %s key %d %q}", r.Time, netip.AddrFrom16(r.Src).Unmap(), netip.AddrFrom16(r.Dst).Unmap(), r.Key, r.Data)
}

// SetFwknopKeys is run writing the HMAC keys of its access.conf, in order
// (a record names a key by its place); none: fwknop datagrams are not
// taken.
func (g *Gate) SetFwknopKeys(keys [][]byte) {
	g.FwknopKeys = keys
}

// fwknopForm: a datagram to the SPA port is fwknop's by its length alone
// (one whose UDP length does not fit the packet is nobody's).
func fwknopForm(p *Packet) bool {
	return p.LenValid && len(p.Payload) >= fwknopMinLen && len(p.Payload) <= fwknopMaxLen
}

// fwknop judges an fwknop datagram: handed over to run when the HMAC under
// one of the keys (the first that matches) is its last 43 characters and
// it was never handed over before (whatever its source); every outcome
// counted. The packet is dropped either way.
func (g *Gate) fwknop(p *Packet) {
	b := p.Payload
	switch {
	case len(g.FwknopKeys) == 0:
		g.path("fwknop: no keys, counted as before there were any")
		g.count("spa_bad_length")
		return
	case len(b) >= fwknopGPGLen:
		g.count("fwknop_gpg")
		return
	}
	body, tag := b[:len(b)-fwknopTagLen], string(b[len(b)-fwknopTagLen:])
	found := -1
	for i, k := range g.FwknopKeys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(fwknopSaltPrefix))
		m.Write(body)
		if base64.RawStdEncoding.EncodeToString(m.Sum(nil)) == tag {
			found = i
			break
		}
	}
	if found < 0 {
		g.count("fwknop_bad_hmac")
		return
	}
	if found > 0 {
		g.path("fwknop: verified under a key after the first")
	}
	if seen, ok := g.FwknopSeen[tag]; ok {
		switch {
		case seen.At == 0:
			g.path("fwknop_replay: of a datagram the fleet shared")
		case seen.Src != key(p.Src):
			g.path("fwknop_replay: from another source")
		}
		g.count("fwknop_replay")
		return
	}
	if len(g.FwknopSeen) >= FwknopSeenMax {
		g.count("fwknop_replay_full")
		return
	}
	g.FwknopSeen[tag] = FwknopSeen{Src: key(p.Src), At: g.Clock.Boot}
	if p.Src.Is6() && !p.Src.Is4In6() {
		g.path("fwknop: handed over from an IPv6 source")
	}
	g.FwknopOut = append(g.FwknopOut, FwknopRecord{Time: g.Clock.Boot, Src: key(p.Src), Dst: key(p.Dst), Key: found, Data: append([]byte(nil), b...)})
	g.count("fwknop_passed")
}

// FwknopRemember is run taking a datagram another member of its fleet
// handed over (by its HMAC's text): remembered until until, unless the
// gate remembers it already. added: it was new.
func (g *Gate) FwknopRemember(tag string, until int64) (added bool) {
	if _, ok := g.FwknopSeen[tag]; ok {
		g.path("fwknop: the fleet shared a datagram the gate had")
		return false
	}
	g.FwknopSeen[tag] = FwknopSeen{KeepUntil: until}
	return true
}

// FwknopGrantReq is what run asks of the fwknop_grant program for a
// datagram it accepted: addr granted each service of Services (by index,
// with the port asked for that it protects) for Open, under the
// configuration of Generation.
type FwknopGrantReq struct {
	Addr       Addr
	Stanza     uint32
	Open       uint64
	Generation uint32
	Services   map[int]FwknopPort
}

// FwknopPort is a port asked for, for its open event.
type FwknopPort struct {
	Num   uint16
	Proto uint8
}

// FwknopGrant is the fwknop_grant program: nothing when the configuration
// in force is not the one run picked the services by (stale: true);
// else each service asked for that the configuration has is granted as an
// SPA packet's would be (never shortened; an open event naming the stanza,
// in index order). It returns how many were granted.
func (g *Gate) FwknopGrant(req FwknopGrantReq) (granted int, stale bool) {
	if req.Generation != g.Cfg.Generation {
		g.path("fwknop_grant: a stale generation refused")
		return 0, true
	}
	live := g.liveMask()
	for s := range MaxServices {
		p, ok := req.Services[s]
		if !ok {
			continue
		}
		if live&(1<<s) == 0 {
			g.path("fwknop_grant: a service the configuration lacks skipped")
			continue
		}
		if s != 0 {
			g.path("fwknop_grant: another service than default")
		}
		g.grant(req.Addr, s, req.Open, Event{Port: p.Num, Proto: p.Proto, KeyID: req.Stanza, Fwknop: true})
		granted++
	}
	if granted > 1 {
		g.path("fwknop_grant: several services at once")
	}
	return granted, false
}

// TakeFwknop returns the datagrams handed over and not yet read.
func (g *Gate) TakeFwknop() []FwknopRecord {
	out := g.FwknopOut
	g.FwknopOut = nil
	return out
}
