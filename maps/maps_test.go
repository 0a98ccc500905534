package maps

import (
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParsePorts(t *testing.T) {
	good := map[string][]Port{
		"9000,8000":          {{9000, TCP}, {8000, TCP}},
		"7000/udp, 8000/TCP": {{7000, UDP}, {8000, TCP}},
		"9000:udp":           {{9000, UDP}},
		"1,65535":            {{1, TCP}, {65535, TCP}},
	}
	for in, want := range good {
		got, err := ParsePorts(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, _ := ParsePorts(FormatPorts(got)); !reflect.DeepEqual(back, want) {
			t.Errorf("FormatPorts(%v) = %q does not parse back", got, FormatPorts(got))
		}
	}
	bad := map[string]string{
		"":         "empty port list",
		"70000":    "port 70000 out of range",
		"0":        "port 0 out of range",
		"22/sctp":  `unknown protocol "sctp"`,
		"ssh":      `port "ssh" is not a number`,
		"9000,,80": `empty item 2 in port list "9000,,80"`,
		"-1":       `port "-1" is not a number`,
	}
	for in, want := range bad {
		_, err := ParsePorts(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePorts(%q) error = %v, want one containing %q", in, err, want)
		}
	}
}

func TestConfigRoundTrip(t *testing.T) {
	c := Config{
		Sequence:    []Port{{7000, UDP}, {8000, TCP}, {9000, TCP}},
		StepTimeout: 45 * time.Second,
		Open:        2 * time.Hour,
		Protected:   []Port{{22, TCP}, {63, TCP}, {64, TCP}, {65535, TCP}, {53, UDP}},
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
	want.Protected = []Port{{22, TCP}, {63, TCP}, {64, TCP}, {65535, TCP}, {53, UDP}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		return Config{Sequence: []Port{{9000, TCP}, {8000, TCP}}, StepTimeout: time.Minute, Open: time.Minute, Protected: []Port{{22, TCP}}}
	}
	cases := map[string]func(*Config){
		"nothing could ever open the gate": func(c *Config) { c.Sequence = nil },
		"both a knock step and the SPA port": func(c *Config) {
			c.SPAPort, c.SPAWindow, c.Sequence = 9000, time.Second, []Port{{Num: 9000, Proto: UDP}}
		},
		"both protected and the SPA port": func(c *Config) {
			c.SPAPort, c.SPAWindow, c.Protected = 53, time.Second, []Port{{Num: 53, Proto: UDP}}
		},
		"SPA window 2h0m0s must be whole milliseconds, from 1ms to 1h": func(c *Config) { c.SPAPort, c.SPAWindow = 62201, 2*time.Hour },
		"SPA window 500µs must be whole milliseconds":                  func(c *Config) { c.SPAPort, c.SPAWindow = 62201, 500*time.Microsecond },
		"SPA window 1.5ms must be whole milliseconds":                  func(c *Config) { c.SPAPort, c.SPAWindow = 62201, 1500*time.Microsecond },
		"at most 8 allowed":                func(c *Config) { c.Sequence = make([]Port, 9) },
		"step 2 (9000) repeats step 1":     func(c *Config) { c.Sequence = []Port{{9000, TCP}, {9000, TCP}} },
		"step 3 (9000) repeats step 1":     func(c *Config) { c.Sequence = []Port{{9000, TCP}, {8000, TCP}, {9000, TCP}} },
		"both a knock step and protected":  func(c *Config) { c.Protected = []Port{{8000, TCP}} },
		"step timeout 0s must be positive": func(c *Config) { c.StepTimeout = 0 },
		"open window -1s must be positive": func(c *Config) { c.Open = -time.Second },
	}
	for want, mutate := range cases {
		c := base()
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want an error containing %q", err, want)
		}
	}
	c := base()
	c.Sequence = []Port{{9000, TCP}, {9000, UDP}, {8000, TCP}} // same number, other protocol: fine
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(%v) = %v", c.Sequence, err)
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
