package loader

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
)

// requireRoot fails in CI (CI=true) and skips elsewhere without root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (CI=true: not skipped)")
	}
	t.Skip("needs root")
}

// Verifier budgets: the instructions the verifier processes for each
// program (global functions included) and the stack all its frames use
// together, as the kernel's own statistics give them. A change that grows
// one past its budget fails here; raise the budget knowingly, in the same
// commit, with the figure this test prints.
var verifierBudgets = map[string]struct{ insns, stack int }{
	// 140 506 and 1 008 with fwknop (130 358 and 624 before): its global
	// function (112), the bpf_loop callback (40) and SHA-256's schedule
	// (64) and rounds (168); the deepest chains, main, fwknop and the
	// schedule (336), and the callback and the rounds (208), are well
	// within the kernel's 512.
	bpf.KnockgateProgKnockgate:   {insns: 200_000, stack: 1024},
	bpf.EgressProgEgress:         {insns: 30_000, stack: 300}, // 26 932 and 256
	bpf.KnockgateProgFwknopGrant: {insns: 4_000, stack: 160},  // 2 995 and 104
}

var (
	processedRE = regexp.MustCompile(`processed (\d+) insns`)
	stackRE     = regexp.MustCompile(`stack depth ([0-9+]+)`)
)

func TestVerifierBudgets(t *testing.T) {
	requireRoot(t)
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	if err := sizeSpec(spec, KnockSlots(DefaultMaxSources), DefaultMaxSources, FlowSlots(DefaultMaxFlows), Tuning{}); err != nil {
		t.Fatal(err)
	}
	stats := ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats, LogSizeStart: 1 << 16}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: stats})
	if err != nil {
		t.Fatal(loadError(err))
	}
	defer coll.Close()
	egSpec, err := egressSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	repl := map[string]*ebpf.Map{}
	for name := range egSpec.Maps {
		if name != ".rodata" {
			repl[name] = coll.Maps[name]
		}
	}
	eg, err := ebpf.NewCollectionWithOptions(egSpec, ebpf.CollectionOptions{Programs: stats, MapReplacements: repl})
	if err != nil {
		t.Fatal(loadError(err))
	}
	defer eg.Close()
	programs := map[string]*ebpf.Program{}
	for _, c := range []*ebpf.Collection{coll, eg} {
		for name, p := range c.Programs {
			programs[name] = p
		}
	}
	for name, budget := range verifierBudgets {
		log := programs[name].VerifierLog
		m := processedRE.FindStringSubmatch(log)
		s := stackRE.FindStringSubmatch(log)
		if m == nil || s == nil {
			t.Fatalf("%s: no statistics in the verifier log:\n%s", name, log)
		}
		insns, _ := strconv.Atoi(m[1])
		stack := 0
		for _, part := range strings.Split(s[1], "+") {
			n, _ := strconv.Atoi(part)
			stack += n
		}
		t.Logf("%s: %d instructions processed (budget %d), stack %s = %d bytes (budget %d)", name, insns, budget.insns, s[1], stack, budget.stack)
		if insns > budget.insns {
			t.Errorf("%s: the verifier processed %d instructions, over the budget of %d", name, insns, budget.insns)
		}
		if stack > budget.stack {
			t.Errorf("%s: stack %s = %d bytes, over the budget of %d", name, s[1], stack, budget.stack)
		}
	}
	for name := range programs {
		if _, ok := verifierBudgets[name]; !ok {
			t.Errorf("program %s has no verifier budget: add one", name)
		}
	}
}

// --max-sources at its ends: 1 and 2^20 load, the limit loads or fails
// with an error that names the size, one more is refused by name; and the
// memory per source is what README says (33 bytes per knock slot, 3 slots
// per source; 104 per grant of a (source, service); within 5 %).
func TestMaxSourcesLimits(t *testing.T) {
	requireRoot(t)
	for _, n := range []uint32{1, 2, 1 << 20} {
		objs, err := LoadTuned(Sizes{MaxSources: n}, Tuning{})
		if err != nil {
			t.Fatalf("--max-sources %d: %v", n, err)
		}
		knocks, grants := memlock(t, objs.Knocks), memlock(t, objs.Grants)
		tags, cache := memlock(t, objs.KnockTags), memlock(t, objs.GrantCache)
		objs.Close()
		if n < 1<<20 {
			continue
		}
		perSource := float64(knocks+tags) / float64(n)
		perGrant := float64(grants) / float64(n)
		perCache := float64(cache) / float64(n)
		t.Logf("--max-sources %d: knock table %.1f B per source (3 slots), grants %.1f B per grant, grant cache %.1f B",
			n, perSource, perGrant, perCache)
		if perCache < 64 || perCache > 1.05*64 {
			t.Errorf("the grant cache takes %.1f B per grant, README says 64", perCache)
		}
		if perSource < 0.95*99 || perSource > 1.05*99 {
			t.Errorf("knock table takes %.1f B per source, README says 99", perSource)
		}
		if perGrant < 0.95*104 || perGrant > 1.05*104 {
			t.Errorf("grants take %.1f B per grant, README says 104", perGrant)
		}
	}
	objs, err := LoadTuned(Sizes{MaxSources: MaxSourcesLimit}, Tuning{})
	if err == nil {
		objs.Close()
	} else if !strings.Contains(err.Error(), strconv.Itoa(MaxSourcesLimit)) {
		t.Errorf("--max-sources %d failed without naming the size: %v", MaxSourcesLimit, err)
	} else {
		t.Logf("--max-sources %d: %v", MaxSourcesLimit, err)
	}
	if _, err := LoadTuned(Sizes{MaxSources: MaxSourcesLimit + 1}, Tuning{}); err == nil ||
		!strings.Contains(err.Error(), "max sources 16777217 out of range (1-16777216)") {
		t.Errorf("--max-sources %d: %v", MaxSourcesLimit+1, err)
	}
}

func memlock(t *testing.T, m *ebpf.Map) uint64 {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	b, ok := info.Memlock()
	if !ok {
		t.Fatal("no memlock in the map's info")
	}
	return b
}
