package maps

import (
	"math"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func TestConfigRoundTrip(t *testing.T) {
	c := Config{
		Sequence:    []Port{{Num: 7000, Proto: UDP}, {Num: 8000, Proto: TCP}, {Num: 9000, Proto: TCP}},
		StepTimeout: 45 * time.Second,
		Open:        2 * time.Hour,
		Protected:   []Port{{Num: 22, Proto: TCP}, {Num: 63, Proto: TCP}, {Num: 64, Proto: TCP}, {Num: 65535, Proto: TCP}, {Num: 53, Proto: UDP}},
		AllowCount:  3,
		Generation:  7,
	}
	raw, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// Bit layout the program reads: word port>>6, bit port&63.
	if raw.ProtectedTcp[0]&(1<<22) == 0 || raw.ProtectedTcp[1]&1 == 0 || raw.ProtectedTcp[1023]&(1<<63) == 0 ||
		raw.ProtectedUdp[0]&(1<<53) == 0 || raw.ProtectedUdp[0]&(1<<22) != 0 {
		t.Fatalf("protected bitmaps wrong: tcp[0]=%#x tcp[1]=%#x udp[0]=%#x", raw.ProtectedTcp[0], raw.ProtectedTcp[1], raw.ProtectedUdp[0])
	}
	if raw.Nsteps != 3 || raw.Steps[0].Port != 7000 || raw.Steps[0].Proto != uint8(UDP) {
		t.Fatalf("steps wrong: %+v", raw.Steps[:raw.Nsteps])
	}
	got := DecodeConfig(raw)
	// Decoding lists protected ports TCP first, each ascending.
	want := c
	want.Protected = []Port{{Num: 22, Proto: TCP}, {Num: 63, Proto: TCP}, {Num: 64, Proto: TCP}, {Num: 65535, Proto: TCP}, {Num: 53, Proto: UDP}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

// Config.Validate is the policy's (policy's tests have the rules).
func TestConfigValidate(t *testing.T) {
	c := Config{Sequence: []Port{{Num: 9000, Proto: TCP}, {Num: 8000, Proto: TCP}}, StepTimeout: time.Minute, Open: time.Minute, Protected: []Port{{Num: 22, Proto: TCP}}}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	c.Protected = []Port{{Num: 8000, Proto: TCP}}
	if _, err := c.Encode(); err == nil || err.Error() != "port 8000 is both a knock step and protected" {
		t.Errorf("Encode() = %v, want the policy's refusal", err)
	}
}

func TestKeys(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.7")
	k := Key(v4)
	if want := netip.MustParseAddr("::ffff:192.0.2.7").As16(); k.Addr != want {
		t.Errorf("Key(%s) = %x, want v4-mapped %x", v4, k.Addr, want)
	}
	if got := AddrOf(k.Addr); got != v4 {
		t.Errorf("AddrOf(Key(%s)) = %s", v4, got)
	}
	if Key(netip.MustParseAddr("::ffff:192.0.2.7")) != k {
		t.Error("a v4-mapped address must key like its IPv4 form")
	}
	v6 := netip.MustParseAddr("2001:db8::1")
	if got := AddrOf(Key(v6).Addr); got != v6 {
		t.Errorf("AddrOf(Key(%s)) = %s", v6, got)
	}
	if HintSlot(v4) >= 1<<16 || HintSlot(v6) >= 1<<16 {
		t.Error("hint slot out of range")
	}
}

func TestBootClock(t *testing.T) {
	// A stamp one hour ahead converts to about one hour from now.
	got := time.Until(BootToTime(BootAfter(time.Hour)))
	if got < 59*time.Minute || got > 61*time.Minute {
		t.Errorf("BootToTime(BootAfter(1h)) is %s from now", got)
	}
}

// Addresses that differ anywhere — the last byte of an IPv4 address, the
// interface id of an IPv6 one, the network — spread over the knock table's
// sets at least as well as random ones would: they reach no fewer sets than
// uniform hashing gives, less 2%. (Multiplicative hashing spreads runs of
// neighbouring addresses better than that.)
func TestKnockPlaceSpreads(t *testing.T) {
	const slots = 1 << 17
	const sets = slots / KnockWays
	key, err := NewSlotKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, gen := range map[string]func(i int) netip.Addr{
		"consecutive IPv4": func(i int) netip.Addr {
			return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		},
		"IPv4 networks": func(i int) netip.Addr {
			return netip.AddrFrom4([4]byte{byte(i >> 8), byte(i), 7, 1})
		},
		"IPv6 interface ids": func(i int) netip.Addr {
			b := netip.MustParseAddr("2001:db8::").As16()
			b[14], b[15], b[13] = byte(i>>8), byte(i), byte(i>>16)
			return netip.AddrFrom16(b)
		},
		"IPv6 prefixes": func(i int) netip.Addr {
			b := netip.MustParseAddr("2001:db8::1").As16()
			b[6], b[7] = byte(i>>8), byte(i)
			return netip.AddrFrom16(b)
		},
	} {
		for _, k := range [][2]uint64{{}, key} {
			const n = 1 << 15
			used := map[uint32]bool{}
			tags := map[uint8]int{}
			for i := range n {
				set, tag := KnockPlace(k, slots, gen(i))
				if set >= sets || tag == 0 {
					t.Fatalf("%s: set %d of %d, tag %d", name, set, sets, tag)
				}
				used[set] = true
				tags[tag]++
			}
			want := sets * (1 - math.Exp(-float64(n)/sets))
			if got := float64(len(used)); got < want*0.98 {
				t.Errorf("%s, key %x: %d addresses in %.0f sets, want about %.0f", name, k, n, got, want)
			}
			if len(tags) < 250 {
				t.Errorf("%s, key %x: only %d distinct tags", name, k, len(tags))
			}
		}
	}
}
