package maps

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// service is a service for the tests: a sequence of TCP ports and
// protected ports.
func service(name string, seq []uint16, protect ...Port) policy.Service {
	s := policy.Service{Name: name, StepTimeout: 45 * time.Second, Open: 2 * time.Hour, Protect: protect}
	for _, n := range seq {
		s.Sequence = append(s.Sequence, Port{Num: n, Proto: TCP})
	}
	return s
}

func TestConfigRoundTrip(t *testing.T) {
	def := service(policy.DefaultService, nil, Port{Num: 22, Proto: TCP}, Port{Num: 63, Proto: TCP}, Port{Num: 64, Proto: TCP},
		Port{Num: 65535, Proto: TCP}, Port{Num: 53, Proto: UDP})
	def.Sequence = []Port{{Num: 7000, Proto: UDP}, {Num: 8000, Proto: TCP}, {Num: 9000, Proto: TCP}}
	web := service("web", []uint16{7100, 7200}, Port{Num: 443, Proto: TCP}, Port{Num: 8443, Proto: TCP})
	rdp := service("rdp", nil, Port{Num: 3389, Proto: TCP})
	all := service("rest", []uint16{6000})
	all.ProtectAll = true
	c := Config{
		Policy: policy.Policy{Services: []policy.Service{def, web, rdp, all}, SPAPort: 62201, SPAWindow: time.Second,
			Flows: true, FlowIdleTCP: time.Hour, FlowIdleUDP: time.Minute},
		Generation: 7,
		Index:      map[string]int{policy.DefaultService: 0, "web": 3, "rdp": 1, "rest": 31},
	}
	raw, err := c.encode()
	if err != nil {
		t.Fatal(err)
	}
	// The port table the program reads: service + 1 for a protected port,
	// 0x80 | service for a step, the protect-all service's + 1 elsewhere.
	for _, e := range []struct {
		port Port
		want uint8
	}{
		{Port{Num: 22, Proto: TCP}, 1}, {Port{Num: 53, Proto: UDP}, 1}, {Port{Num: 443, Proto: TCP}, 4},
		{Port{Num: 3389, Proto: TCP}, 2}, {Port{Num: 7000, Proto: UDP}, 0x80}, {Port{Num: 7100, Proto: TCP}, 0x83},
		{Port{Num: 6000, Proto: TCP}, 0x80 | 31}, {Port{Num: 80, Proto: TCP}, 32}, {Port{Num: 22, Proto: UDP}, 32},
	} {
		if got := raw.Ports[portTable(e.port.Proto)][e.port.Num]; got != e.want {
			t.Errorf("port table at %s: %#x, want %#x", e.port, got, e.want)
		}
	}
	if raw.LiveServices != 1|1<<1|1<<3|1<<31 || raw.AllService != 32 {
		t.Errorf("live services %#x, all-service %d", raw.LiveServices, raw.AllService)
	}
	if s := raw.Services[3]; s.Nsteps != 2 || s.Steps[1].Port != 7200 || s.NameHash != spa.ServiceHash("web") || s.Live != 1 {
		t.Errorf("service web at 3: %+v", s)
	}
	want := c.Policy.Clone()
	want.Services = []policy.Service{def, rdp, web, all} // by index
	want.Services[3].Protect = nil                       // protect-all lists none
	got := DecodeConfig(raw)
	if d := policy.Diff(&want, &got.Policy); len(d) != 0 || !reflect.DeepEqual(got.Index, c.Index) || got.Generation != 7 {
		t.Errorf("round trip: %v; index %v", d, got.Index)
	}
}

// Indices are stable: a service keeps its index while it exists, a new one
// takes the lowest free, never one the configuration in force holds for
// another name; default is always 0.
func TestAssignIndices(t *testing.T) {
	cur := Config{Policy: policy.Policy{Services: []policy.Service{
		service(policy.DefaultService, []uint16{9000}, Port{Num: 22, Proto: TCP}),
		service("a", []uint16{7000}, Port{Num: 1, Proto: TCP}),
		service("b", []uint16{7001}, Port{Num: 2, Proto: TCP}),
	}}, Index: map[string]int{policy.DefaultService: 0, "a": 1, "b": 2}}
	raw, err := cur.encode()
	if err != nil {
		t.Fatal(err)
	}
	next := policy.Policy{Services: []policy.Service{
		service(policy.DefaultService, []uint16{9000}, Port{Num: 22, Proto: TCP}),
		service("b", []uint16{7001}, Port{Num: 2, Proto: TCP}),
		service("c", []uint16{7002}, Port{Num: 3, Proto: TCP}),
	}}
	index, fresh, err := assignIndices(&next, raw)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{policy.DefaultService: 0, "b": 2, "c": 3}; !reflect.DeepEqual(index, want) || !reflect.DeepEqual(fresh, []int{3}) {
		t.Errorf("indices %v fresh %v, want %v fresh [3] (1 was a's: kept out of use)", index, fresh, want)
	}
	full := policy.Policy{Services: []policy.Service{service(policy.DefaultService, []uint16{9000})}}
	for i := range MaxServices - 1 {
		full.Services = append(full.Services, service(fmt.Sprintf("s%d", i), []uint16{uint16(10000 + i)}))
	}
	if _, _, err := assignIndices(&full, raw); err == nil || !strings.Contains(err.Error(), "no free index") {
		t.Errorf("32 services beside a and b in force: %v, want no free index", err)
	}
}

// Config.Validate is the policy's (policy's tests have the rules).
func TestConfigValidate(t *testing.T) {
	c := Config{Policy: policy.Policy{Services: []policy.Service{service(policy.DefaultService, []uint16{9000, 8000}, Port{Num: 22, Proto: TCP})}}}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	c.Policy.Services[0].Protect = []Port{{Num: 8000, Proto: TCP}}
	c.Index = map[string]int{policy.DefaultService: 0}
	if _, err := c.encode(); err == nil || err.Error() != "port 8000 is both a knock step and protected" {
		t.Errorf("encode() = %v, want the policy's refusal", err)
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
	for _, k := range []bpf.KnockgateGrantKey{GrantKey(v4, 0), GrantKey(v6, 31)} {
		if w, m := HintOf(k, 1<<16); w >= 1<<16 || m == 0 || bits.OnesCount64(m) > hintBits {
			t.Errorf("hint of %v: word %d, mask %#x", k, w, m)
		}
	}
	w0, m0 := HintOf(GrantKey(v4, 0), 1<<16)
	if w1, m1 := HintOf(GrantKey(v4, 1), 1<<16); w0 == w1 && m0 == m1 {
		t.Error("a source's grants of two services have one hint")
	}
	for _, c := range []struct{ sources, words uint32 }{{1, 1024}, {4096, 1024}, {4097, 2048}, {65536, 1 << 14}, {1 << 20, 1 << 18}} {
		if got := HintWords(c.sources); got != c.words {
			t.Errorf("HintWords(%d) = %d, want %d", c.sources, got, c.words)
		}
	}
}

// The hint bitmap's point: with as many grants as --max-sources, strangers
// rarely find their bits set. Sequential IPv4 strangers (a scan, a spoofed
// flood's counter) against random grants of 16 services, and the other way
// round.
func TestHintFalsePositives(t *testing.T) {
	const n = 1 << 16
	words := HintWords(n)
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		name            string
		grant, stranger func(i int) bpf.KnockgateGrantKey
	}{
		{"random grants, sequential strangers",
			func(int) bpf.KnockgateGrantKey { return GrantKey(netip.AddrFrom4(randV4(r)), r.IntN(16)) },
			func(i int) bpf.KnockgateGrantKey { return GrantKey(v4Plus(0xc6336400, i), i%16) }},
		{"sequential grants, random IPv6 strangers",
			func(i int) bpf.KnockgateGrantKey { return GrantKey(v4Plus(0x0a000001, i), i%16) },
			func(int) bpf.KnockgateGrantKey {
				var a [16]byte
				binary.NativeEndian.PutUint64(a[:8], r.Uint64())
				binary.NativeEndian.PutUint64(a[8:], r.Uint64())
				return GrantKey(netip.AddrFrom16(a), 0)
			}},
	} {
		half := make([]uint64, words)
		for i := range n {
			w, m := HintOf(c.grant(i), words)
			half[w] |= m
		}
		fp := 0
		const tries = 1 << 18
		for i := range tries {
			w, m := HintOf(c.stranger(i), words)
			if half[w]&m == m {
				fp++
			}
		}
		if rate := float64(fp) / tries; rate > 0.01 {
			t.Errorf("%s: %.2f %% of strangers hinted, want under 1 %%", c.name, 100*rate)
		} else {
			t.Logf("%s: %.3f %% of strangers hinted", c.name, 100*rate)
		}
	}
}

func randV4(r *rand.Rand) [4]byte {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], r.Uint32())
	return a
}

func v4Plus(base uint32, i int) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], base+uint32(i))
	return netip.AddrFrom4(a)
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
