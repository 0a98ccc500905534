package bpf_test

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/bpf/siphashtest"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/packet"
)

const spaPort = 62201

// The test keys: a plain one, and one that may open any address.
var (
	plainKey = spa.Key{ID: 7, Name: "laptop", Secret: [16]byte{0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87, 0x98, 0xa9, 0xba, 0xcb, 0xdc, 0xed, 0xfe, 0x0f}}
	anyKey   = spa.Key{ID: 0xfeedbeef, Name: "nat-box", AnyAddress: true, Open: 2 * time.Hour,
		Secret: [16]byte{1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 121, 98, 219}}
)

func spaConfig() conf {
	c := defaultConfig()
	c.SPAPort, c.SPAWindow = spaPort, 30*time.Second
	return c
}

// newSPAGate is a gate with SPA on and the test keys.
func newSPAGate(t *testing.T, cfg conf) *gate {
	t.Helper()
	return newSPAGateTuned(t, loader.Tuning{}, cfg)
}

// newSPAGateTuned is newSPAGate with load-time constants (a test clock).
func newSPAGateTuned(t *testing.T, tuning loader.Tuning, cfg conf) *gate {
	t.Helper()
	g := newGateTuned(t, tuning, conf{})
	g.configure(cfg)
	if err := g.maps.SetSPAKeys([]spa.Key{plainKey, anyKey}); err != nil {
		t.Fatal(err)
	}
	return g
}

// spaPayload is a packet of key stamped at ts asking to open open.
func spaPayload(key *spa.Key, ts time.Time, open netip.Addr) []byte {
	p := spa.Packet{KeyID: key.ID, Time: ts, Open: open}
	rand.Read(p.Nonce[:])
	return p.Marshal(key.Secret)
}

// spaFrame carries payload from src to the SPA port.
func (f family) spaFrame(src netip.Addr, payload []byte) packet.Frame {
	fr := packet.UDP(src, f.dst, 40000, spaPort)
	fr.Payload = payload
	return fr
}

// lastAccepted is the replay state of key id (Unix ms).
func (g *gate) lastAccepted(id uint32) uint64 {
	g.t.Helper()
	var v uint64
	if err := g.maps.SPALast.Lookup(id, &v); err != nil {
		g.t.Fatalf("replay state of key %d: %v", id, err)
	}
	return v
}

// refused runs an SPA frame that must be refused for reason: dropped, the
// one counter, and nothing else changed (no grant, replay state as it was).
func (g *gate) refused(what string, f family, src netip.Addr, frame []byte, reason string) {
	g.t.Helper()
	before := [2]uint64{g.lastAccepted(plainKey.ID), g.lastAccepted(anyKey.ID)}
	g.expect(what, frame, xdpDrop, "dropped_spa", reason)
	if after := [2]uint64{g.lastAccepted(plainKey.ID), g.lastAccepted(anyKey.ID)}; after != before {
		g.t.Errorf("%s: replay state moved from %v to %v", what, before, after)
	}
	g.noGrant(what, src)
	g.noProgress(what, src)
	g.expectEvents(what)
}

func TestSPAGrants(t *testing.T) {
	forFamilies(t, func(t *testing.T, f family) {
		frames := map[string]func(packet.Frame) packet.Frame{
			"plain": func(fr packet.Frame) packet.Frame { return fr },
			"behind two VLAN tags": func(fr packet.Frame) packet.Frame {
				fr.VLANs = []packet.VLAN{{TPID: packet.EtherTypeQinQ, ID: 10}, {TPID: packet.EtherTypeVLAN, ID: 20}}
				return fr
			},
		}
		if f.name == "ipv6" {
			frames["through extension headers"] = func(fr packet.Frame) packet.Frame {
				fr.Ext = []packet.Ext{{Type: packet.ProtoHopOpts}, {Type: packet.ProtoDstOpts, Len: 16}, {Type: packet.ProtoFragment}}
				return fr
			}
		}
		for name, shape := range frames {
			t.Run(name, func(t *testing.T) {
				g := newSPAGate(t, spaConfig())
				g.expect("ssh before", f.tcp(f.src, ssh.Num, packet.SYN), xdpDrop, "dropped_protected")
				start := maps.BootNow()
				ts := time.Now()
				frame := shape(f.spaFrame(f.src, spaPayload(&plainKey, ts, netip.Addr{}))).Bytes()
				g.expect("valid SPA", frame, xdpDrop, "dropped_spa", "spa_accepted", "granted")
				gr, ok := g.grant(f.src)
				if !ok {
					t.Fatal("no grant after a valid SPA packet")
				}
				if lo, hi := start+uint64(g.cfg.Open), maps.BootNow()+uint64(g.cfg.Open); gr.ExpiresNs < lo || gr.ExpiresNs > hi {
					t.Errorf("grant until %d, want within [%d, %d] (the gate's open window)", gr.ExpiresNs, lo, hi)
				}
				if got := g.lastAccepted(plainKey.ID); got != uint64(ts.UnixMilli()) {
					t.Errorf("replay state %d, want the packet's timestamp %d", got, ts.UnixMilli())
				}
				evs := g.expectEvents("valid SPA", "open")
				if len(evs) == 1 && (evs[0].KeyID != plainKey.ID || evs[0].Src != f.src || evs[0].Port != udp(spaPort)) {
					t.Errorf("open event %+v, want key %d, src %s, port %d/udp", evs[0].Event, plainKey.ID, f.src, spaPort)
				}
				g.expect("ssh after", f.tcp(f.src, ssh.Num, packet.SYN), xdpPass, "passed_granted")
				g.expect("another source", f.tcp(f.other, ssh.Num, packet.SYN), xdpDrop, "dropped_protected")
				g.refused("the same packet again", f, f.other, frame, "spa_replay")
			})
		}
	})
}

func TestSPAOtherAddress(t *testing.T) {
	forFamilies(t, func(t *testing.T, f family) {
		g := newSPAGate(t, spaConfig())
		// The source's own address written out is the same as zero.
		g.expect("own address", f.spaFrame(f.src, spaPayload(&plainKey, time.Now(), f.src)).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvents("own address", "open")
		g.refused("other address, plain key", f, f.other,
			f.spaFrame(f.src, spaPayload(&plainKey, time.Now().Add(time.Millisecond), f.other)).Bytes(), "spa_bad_address")
		start := maps.BootNow()
		g.expect("other address, any-address key", f.spaFrame(f.src, spaPayload(&anyKey, time.Now(), f.other)).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		gr, ok := g.grant(f.other)
		if !ok {
			t.Fatalf("%s not granted", f.other)
		}
		if gr.ExpiresNs < start+uint64(anyKey.Open) {
			t.Errorf("grant until %d: shorter than the key's own window %s", gr.ExpiresNs, anyKey.Open)
		}
		if evs := g.expectEvents("other address", "open"); len(evs) == 1 && (evs[0].Src != f.other || evs[0].KeyID != anyKey.ID) {
			t.Errorf("open event %+v, want %s by key %d", evs[0].Event, f.other, anyKey.ID)
		}
	})
}

// The window's edges are checked on the program's test clock: the gate's
// time stays at now however long the packets before them take.
func TestSPARefusals(t *testing.T) {
	forFamilies(t, func(t *testing.T, f family) {
		g := newSPAGateTuned(t, loader.Tuning{TestClock: true}, spaConfig())
		now := time.Now()
		g.setClock(now)
		valid := spaPayload(&plainKey, now, netip.Addr{})

		// Every single-bit flip of a valid packet: refused by the first
		// check it breaks, and nothing but that counter changes.
		for bit := range spa.Len * 8 {
			b := append([]byte(nil), valid...)
			b[bit/8] ^= 1 << (bit % 8)
			reason := "spa_bad_tag"
			switch {
			case bit < 32:
				reason = "spa_bad_version"
			case bit < 64:
				reason = "spa_unknown_key"
			}
			g.refused(fmt.Sprintf("bit %d flipped", bit), f, f.src, f.spaFrame(f.src, b).Bytes(), reason)
		}
		for _, n := range []int{0, 1, 55, 57, 64, 1400} {
			b := make([]byte, n)
			copy(b, valid)
			g.refused(fmt.Sprintf("%d bytes", n), f, f.src, f.spaFrame(f.src, b).Bytes(), "spa_bad_length")
		}
		unknown := plainKey
		unknown.ID = 8
		g.refused("unknown key", f, f.src, f.spaFrame(f.src, spaPayload(&unknown, now, netip.Addr{})).Bytes(), "spa_unknown_key")
		wrongSecret := plainKey
		wrongSecret.Secret[3] ^= 0x40
		g.refused("wrong secret", f, f.src, f.spaFrame(f.src, spaPayload(&wrongSecret, now, netip.Addr{})).Bytes(), "spa_bad_tag")
		// The window is ±30 s, both ends included: a millisecond past either
		// end is out.
		edge := 30*time.Second + time.Millisecond
		g.refused("30.001 s ahead", f, f.src, f.spaFrame(f.src, spaPayload(&plainKey, now.Add(edge), netip.Addr{})).Bytes(), "spa_clock")
		g.refused("30.001 s behind", f, f.src, f.spaFrame(f.src, spaPayload(&plainKey, now.Add(-edge), netip.Addr{})).Bytes(), "spa_clock")

		// Within the window both ways, each newer than the last.
		now = now.Add(time.Minute)
		g.setClock(now)
		g.expect("30 s behind (the other key)", f.spaFrame(f.src, spaPayload(&anyKey, now.Add(-30*time.Second), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvents("30 s behind (the other key)", "open")
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		g.expect("29 s behind", f.spaFrame(f.src, spaPayload(&plainKey, now.Add(-29*time.Second), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvents("29 s behind", "open")
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		g.refused("older than the last accepted", f, f.src,
			f.spaFrame(f.src, spaPayload(&plainKey, now.Add(-29*time.Second-time.Millisecond), netip.Addr{})).Bytes(), "spa_replay")
		g.refused("as old as the last accepted", f, f.src,
			f.spaFrame(f.src, spaPayload(&plainKey, now.Add(-29*time.Second), netip.Addr{})).Bytes(), "spa_replay")
		g.expect("30 s ahead", f.spaFrame(f.src, spaPayload(&plainKey, now.Add(30*time.Second), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_accepted", "granted")
		g.expectEvents("30 s ahead", "open")
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		// The key removed: refused at once, its replay state gone with it.
		if err := g.maps.SetSPAKeys([]spa.Key{anyKey}); err != nil {
			t.Fatal(err)
		}
		var last uint64
		if err := g.maps.SPALast.Lookup(plainKey.ID, &last); err == nil {
			t.Errorf("removed key's replay state is still there (%d)", last)
		}
		g.expect("removed key", f.spaFrame(f.src, spaPayload(&plainKey, now.Add(30*time.Second), netip.Addr{})).Bytes(), xdpDrop,
			"dropped_spa", "spa_unknown_key")
		g.noGrant("removed key", f.src)

		// Datagrams to other ports are not SPA, and SPA off is no SPA.
		g.expect("to another port", f.knock(f.src, udp(spaPort+1)), xdpPass, "passed")
		off := spaConfig()
		off.SPAPort = 0
		g.configure(off)
		g.expect("SPA off", f.spaFrame(f.src, spaPayload(&anyKey, now, netip.Addr{})).Bytes(), xdpPass, "passed")
	})
}

// A key rewritten (renamed, another window) keeps its replay state: the
// rewrite cannot reopen a replay.
func TestSPAKeyRewriteKeepsReplayState(t *testing.T) {
	f := families[0]
	g := newSPAGate(t, spaConfig())
	frame := f.spaFrame(f.src, spaPayload(&plainKey, time.Now(), netip.Addr{})).Bytes()
	g.expect("valid", frame, xdpDrop, "dropped_spa", "spa_accepted", "granted")
	g.expectEvents("valid", "open")
	if _, err := g.maps.Revoke(f.src, ""); err != nil {
		t.Fatal(err)
	}
	renamed := plainKey
	renamed.Name, renamed.Open = "renamed", time.Hour
	if err := g.maps.SetSPAKeys([]spa.Key{renamed, anyKey}); err != nil {
		t.Fatal(err)
	}
	g.refused("replayed after the rewrite", f, f.src, frame, "spa_replay")
	keys, err := g.maps.ReadSPAKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || !keys[0].Key.Equal(&renamed) || keys[0].LastAccepted.IsZero() || !keys[1].Key.Equal(&anyKey) {
		t.Errorf("keys read back: %+v", keys)
	}
}

// Replay state from the fleet (maps.Set.AdvanceReplay) and the program's
// acceptances move one value forward together: an older remote timestamp
// does not lower what the program accepted, a newer one makes the program
// refuse packets up to it. Each packet's timestamp is taken when it is
// sent, and every step is milliseconds from it: all inside the window.
func TestSPAReplayStateFromTheFleet(t *testing.T) {
	f := families[0]
	g := newSPAGate(t, spaConfig())
	at := func(ts time.Time) []byte {
		return f.spaFrame(f.src, spaPayload(&plainKey, ts, netip.Addr{})).Bytes()
	}
	ts := time.Now()
	g.expect("valid", at(ts), xdpDrop, "dropped_spa", "spa_accepted", "granted")
	g.expectEvents("valid", "open")
	if _, err := g.maps.Revoke(f.src, ""); err != nil { // refused below checks no grant appears
		t.Fatal(err)
	}
	accepted := uint64(ts.UnixMilli())
	if moved, err := g.maps.AdvanceReplay(plainKey.ID, accepted-1000); err != nil || moved {
		t.Errorf("an older remote timestamp: moved %v, %v", moved, err)
	}
	if got := g.lastAccepted(plainKey.ID); got != accepted {
		t.Errorf("replay state %d after an older remote one, want %d (the program's)", got, accepted)
	}
	remote := accepted + 5000
	if moved, err := g.maps.AdvanceReplay(plainKey.ID, remote); err != nil || !moved {
		t.Errorf("a newer remote timestamp: moved %v, %v", moved, err)
	}
	g.refused("older than the remote timestamp", f, f.src, at(ts.Add(2*time.Second)), "spa_replay")
	g.refused("at the remote timestamp", f, f.src, at(time.UnixMilli(int64(remote))), "spa_replay")
	g.expect("newer than the remote timestamp", at(time.UnixMilli(int64(remote+1))), xdpDrop, "dropped_spa", "spa_accepted", "granted")
	g.expectEvents("newer than the remote timestamp", "open")
	if got := g.lastAccepted(plainKey.ID); got != remote+1 {
		t.Errorf("replay state %d, want %d", got, remote+1)
	}
}

// The gate's Unix time is CLOCK_TAI less the TAI offset the configuration
// recorded: recorded wrong (as if the kernel's offset had moved by an hour
// since), every packet is outside the window; RefreshClock puts it right
// without a new generation, and packets are taken again.
func TestSPAClockFollowsTAIOffset(t *testing.T) {
	f := families[0]
	g := newSPAGate(t, spaConfig())
	g.staleTAIOffset()
	g.refused("clock an hour off", f, f.src, f.spaFrame(f.src, spaPayload(&plainKey, time.Now(), netip.Addr{})).Bytes(), "spa_clock")
	changed, err := g.maps.RefreshClock()
	if err != nil || !changed {
		t.Fatalf("RefreshClock: %v, %v; want a change", changed, err)
	}
	cfg, err := g.maps.ReadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Generation != g.cfg.Generation {
		t.Errorf("generation %d after RefreshClock, want %d kept", cfg.Generation, g.cfg.Generation)
	}
	g.expect("clock right again", f.spaFrame(f.src, spaPayload(&plainKey, time.Now(), netip.Addr{})).Bytes(), xdpDrop,
		"dropped_spa", "spa_accepted", "granted")
	if changed, err := g.maps.RefreshClock(); err != nil || changed {
		t.Errorf("RefreshClock again: %v, %v; want no change", changed, err)
	}
}

// SPA alone: no sequence at all.
func TestSPAOnly(t *testing.T) {
	f := families[1]
	cfg := spaConfig()
	cfg.Sequence = nil
	g := newSPAGate(t, cfg)
	g.expect("a former knock port", f.knock(f.src, seq[0]), xdpPass, "passed")
	g.expect("ssh", f.tcp(f.src, ssh.Num, packet.SYN), xdpDrop, "dropped_protected")
	g.expect("SPA", f.spaFrame(f.src, spaPayload(&plainKey, time.Now(), netip.Addr{})).Bytes(), xdpDrop, "dropped_spa", "spa_accepted", "granted")
	g.expect("ssh after SPA", f.tcp(f.src, ssh.Num, packet.SYN), xdpPass, "passed_granted")
}

// The program's tag is the Go one: random keys, ids, times and addresses,
// every one accepted, and each with its tag off by one refused.
func TestSPAMatchesGo(t *testing.T) {
	f := families[0]
	g := newSPAGate(t, spaConfig())
	r := mrand.New(mrand.NewPCG(1, 2))
	var keys []spa.Key
	for i := range 50 {
		k := spa.Key{ID: uint32(100 + i), Name: fmt.Sprintf("k%d", i), AnyAddress: true}
		for j := range k.Secret {
			k.Secret[j] = byte(r.Uint32())
		}
		keys = append(keys, k)
	}
	if err := g.maps.SetSPAKeys(keys); err != nil {
		t.Fatal(err)
	}
	for i := range 400 {
		k := &keys[r.IntN(len(keys))]
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], 0xc0000200|uint32(r.IntN(250)+1))
		open := netip.AddrFrom4(a)
		b := spaPayload(k, time.Now().Add(time.Duration(i)*time.Millisecond), open)
		forged := append([]byte(nil), b...)
		binary.LittleEndian.PutUint64(forged[48:], binary.LittleEndian.Uint64(b[48:])+1)
		before := g.counters()
		g.run(f.spaFrame(f.src, forged).Bytes())
		g.run(f.spaFrame(f.src, b).Bytes())
		after := g.counters()
		g.counted(fmt.Sprintf("packet %d (key %d, %x)", i, k.ID, b), before, after, "dropped_spa", "dropped_spa", "spa_bad_tag", "spa_accepted", "granted")
		g.events()
	}
}

// Two CPUs cannot both accept one packet: the replay state moves by an
// atomic compare-and-swap (BPF_CMPXCHG, which the JIT makes a locked
// cmpxchg). A race of two runs is too narrow to hit from user space on
// demand, so the test reads the program itself: the SPA function must hold
// a 64-bit compare-and-swap (replacing it by a plain store fails here; that
// no other store reaches the replay state is the code's to show, in
// spa.h).
func TestSPAReplayStateMovesByCompareAndSwap(t *testing.T) {
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	insns := spec.Programs[bpf.KnockgateProgKnockgate].Instructions
	in, cmpxchg := false, 0
	for _, ins := range insns {
		if sym := ins.Symbol(); sym != "" {
			in = sym == "spa"
		}
		if !in {
			continue
		}
		if ins.OpCode.Class() == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode {
			if ins.OpCode.AtomicOp() == asm.CmpXchg && ins.OpCode.Size() == asm.DWord {
				cmpxchg++
			}
		}
	}
	if cmpxchg == 0 {
		t.Errorf("the spa function has no 64-bit compare-and-swap: two CPUs could both accept one packet")
	}
}

// The C SipHash (bpf/siphash.h, run by the kernel) against the reference
// vectors, and against the Go one on random input.
func TestSipHashInC(t *testing.T) {
	var objs siphashtest.SiphashObjects
	if err := siphashtest.LoadSiphashObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	// hash is siphash_bytes' result and, for 48 bytes, siphash48's, which
	// must agree.
	hash := func(key [16]byte, msg []byte) uint64 {
		t.Helper()
		in := make([]byte, 16+1+63)
		copy(in, key[:])
		in[16] = byte(len(msg))
		copy(in[17:], msg)
		out := make([]byte, len(in))
		if _, err := objs.Siphash.Run(&ebpf.RunOptions{Data: in, DataOut: out}); err != nil {
			t.Fatal(err)
		}
		h := binary.LittleEndian.Uint64(out)
		if h48 := binary.LittleEndian.Uint64(out[8:]); len(msg) == 48 && h48 != h {
			t.Errorf("key %x msg %x: siphash48 %#x, siphash_bytes %#x", key, msg, h48, h)
		}
		return h
	}
	var key [16]byte
	msg := make([]byte, 63)
	for i := range key {
		key[i] = byte(i)
	}
	for i := range msg {
		msg[i] = byte(i)
	}
	for n, want := range spa.ReferenceVectors {
		var out [8]byte
		binary.LittleEndian.PutUint64(out[:], hash(key, msg[:n]))
		if got := hex.EncodeToString(out[:]); got != want {
			t.Errorf("length %d: %s, want %s", n, got, want)
		}
	}
	r := mrand.New(mrand.NewPCG(3, 4))
	for range 500 {
		for i := range key {
			key[i] = byte(r.Uint32())
		}
		n := r.IntN(64)
		if r.IntN(4) == 0 {
			n = 48 // the program's own length, through siphash48 too
		}
		m := make([]byte, n)
		for i := range m {
			m[i] = byte(r.Uint32())
		}
		if c, g := hash(key, m), spa.Sum64(key, m); c != g {
			t.Fatalf("key %x msg %x: C %#x, Go %#x", key, m, c, g)
		}
	}
}

// A full key table replaced by another full one: the removed keys make the
// room, so the change goes through whole.
func TestSPAKeysReplaceAll(t *testing.T) {
	g := newSPAGate(t, spaConfig())
	batch := func(first uint32) []spa.Key {
		keys := make([]spa.Key, spa.MaxKeys)
		for i := range keys {
			keys[i] = spa.Key{ID: first + uint32(i), Name: fmt.Sprintf("k%d", first+uint32(i))}
			keys[i].Secret[0] = byte(i)
		}
		return keys
	}
	for _, first := range []uint32{1, 5001} {
		if err := g.maps.SetSPAKeys(batch(first)); err != nil {
			t.Fatalf("keys from %d: %v", first, err)
		}
		got, err := g.maps.ReadSPAKeys()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != spa.MaxKeys || got[0].ID != first || got[len(got)-1].ID != first+spa.MaxKeys-1 {
			t.Fatalf("keys from %d: read %d keys, %d..%d", first, len(got), got[0].ID, got[len(got)-1].ID)
		}
	}
}
