package bench

import (
	"math"
	"net/netip"
	"slices"
	"testing"

	"github.com/knockgate/knockgate/test/netns"
)

func TestScalePolicy(t *testing.T) {
	for _, n := range []int{1, 16, 32} {
		p := ScalePolicy(n)
		if err := p.Validate(); err != nil {
			t.Fatalf("%d services: %v", n, err)
		}
		if len(p.Services) != n || p.Services[0].Name != "default" {
			t.Fatalf("%d services: %+v", n, p.Services)
		}
	}
}

func TestAddrPlus(t *testing.T) {
	if got, want := addrPlus(netip.MustParseAddr("10.0.0.1"), 999_999), netip.MustParseAddr("10.15.66.64"); got != want {
		t.Errorf("10.0.0.1 + 999999 = %s, want %s", got, want)
	}
	// The two floods' sources never meet, however many RunScale takes.
	if last := addrPlus(grantedBase, maxScaleSources-1); !last.Less(strangerBase) {
		t.Errorf("granted sources reach %s, past the strangers' %s", last, strangerBase)
	}
}

func TestScaleBounds(t *testing.T) {
	r := ratioOf(map[int]float64{1: 30, 2: 20, 3: 12}, map[int]float64{1: 10, 2: 20, 3: 12, 4: 99}, 1.5)
	if r.PerRound.N != 3 || r.PerRound.Median != 1 || r.PerRound.Max != 3 || r.Diff.Max != 20 || r.Diff.Min != 0 || r.Excess.Median != -6 {
		t.Errorf("ratio %+v", r)
	}
	met := func(num, den map[int]float64, max float64) bool {
		return Bound{Ratio: ratioOf(num, den, max), Max: max}.Met()
	}
	for _, c := range []struct {
		num, den map[int]float64
		max      float64
		want     bool
	}{
		{map[int]float64{1: 30, 2: 20, 3: 12}, map[int]float64{1: 10, 2: 20, 3: 12}, 1.5, true}, // the median round within
		{map[int]float64{1: 2}, map[int]float64{1: 1}, 1.5, false},
		{map[int]float64{1: 10}, map[int]float64{1: -5}, 1.5, false}, // something against nothing
		{map[int]float64{1: -3}, map[int]float64{1: -5}, 1.5, true},  // nothing against nothing
		{map[int]float64{1: 3, 2: 4}, map[int]float64{1: 1, 2: 1}, 0, true},
		{map[int]float64{1: 30, 2: 40}, map[int]float64{1: 10, 2: 10}, 0, false},
		{map[int]float64{1: 230, 2: 240}, map[int]float64{1: 220, 2: 220}, 0, true}, // within a tenth
		{nil, nil, 1.5, false},
	} {
		if got := met(c.num, c.den, c.max); got != c.want {
			t.Errorf("%v against %v, bound %v: met %v, want %v", c.num, c.den, c.max, got, c.want)
		}
	}
	if r := ratioOf(map[int]float64{1: 10}, map[int]float64{1: -5}, 1.5); r.PerRound.N != 0 || !math.IsNaN(r.Medians) {
		t.Errorf("a ratio to a cost below zero: %+v", r)
	}
	// The gates without grants either side of the one with: each round's
	// mean, in the rounds both ran.
	if m := roundMeans(map[int]float64{1: 10, 2: 30, 3: 5}, map[int]float64{1: 20, 2: 50, 4: 7}); len(m) != 2 || m[1] != 15 || m[2] != 40 {
		t.Errorf("round means %v", m)
	}
}

// A small scale gate gives every flood's frames the verdict the benchmark
// counts on: the strangers dropped, each granted source passed on its own
// service's port only.
func TestScaleGate(t *testing.T) {
	netns.Require(t)
	for _, grants := range []uint32{0, 1000} {
		g, err := NewScaleGate(2048, 16, grants)
		if err != nil {
			t.Fatal(err)
		}
		err = g.Check(ScaleOptions{Sources: 1000, Services: 16})
		g.Close()
		if err != nil {
			t.Fatalf("%d grants: %v", grants, err)
		}
	}
}

// Each memory floor runs the two floods of its kind, and nothing else.
func TestScaleProbesRun(t *testing.T) {
	o := ScaleOptions{Sources: 10, Services: 2}
	for _, p := range scaleProbes {
		var ran []string
		for _, f := range o.ScaleFloods() {
			if scaleRuns(p.name, f) {
				if scaleGranted(f) != p.granted {
					t.Errorf("%s runs %s", p.name, f.Name)
				}
				ran = append(ran, f.Name)
			}
		}
		if len(ran) != 2 {
			t.Errorf("%s runs %v, want the two floods of its kind", p.name, ran)
		}
		if !slices.Contains(scaleGates, p.name) {
			t.Errorf("%s is not among the scale gates", p.name)
		}
	}
}
