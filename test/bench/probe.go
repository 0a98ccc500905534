package bench

import (
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf/link"
)

// Probe is a gate that only reads memory: knockgate's parser, then one
// 8-byte read from a table of Bytes at a line hashed from the source (one
// line a packet, the least a gate keeping per-source state can touch), then
// XDP_PASS (Pass) or XDP_DROP. Beside knockgate in the same round it says
// what reading one line of a table that size costs under a flood, and so
// whether a design reading one line per packet could meet a bound there.
type Probe struct {
	name  string
	Bytes uint64 // the table's size: a power of two, 128 bytes at least
	// Filter, if not 0, is the size of a filter (a power of two, 128 bytes
	// at least) of which the probe reads one 8-byte word before the line:
	// a gate that keeps a stranger's check to a small table reads it first.
	Filter uint64
	Pass   bool
	objs   probeObjects
	link   link.Link
}

// NewProbe is a probe of a table of bytes, named name.
func NewProbe(name string, bytes uint64, pass bool) *Probe {
	return &Probe{name: name, Bytes: bytes, Pass: pass}
}

func (g *Probe) Name() string { return g.name }
func (g *Probe) Floor() bool  { return false }

func (g *Probe) Setup(topo *Topology) error {
	if err := g.load(); err != nil {
		return err
	}
	return topo.RX.Do(func() (err error) {
		g.link, err = attachXDP(g.objs.Probe)
		return err
	})
}

// load loads the probe's program and table.
func (g *Probe) load() error {
	for _, t := range []struct {
		what  string
		bytes uint64
	}{{"table", g.Bytes}, {"filter", g.Filter}} {
		if t.what == "filter" && t.bytes == 0 {
			continue
		}
		if t.bytes < 128 || t.bytes&(t.bytes-1) != 0 || t.bytes > 1<<34 {
			return fmt.Errorf("probe %s of %d bytes: need a power of two from 128 bytes to 16 GiB", t.what, t.bytes)
		}
	}
	spec, err := loadProbe()
	if err != nil {
		return fmt.Errorf("load probe spec: %w", err)
	}
	lines := g.Bytes / 64
	spec.Maps["lines"].MaxEntries = uint32(g.Bytes / 8)
	pass := uint32(0)
	if g.Pass {
		pass = 1
	}
	if err := spec.Variables["line_bits"].Set(uint32(bits.TrailingZeros64(lines))); err != nil {
		return fmt.Errorf("probe line bits: %w", err)
	}
	if err := spec.Variables["pass"].Set(pass); err != nil {
		return fmt.Errorf("probe verdict: %w", err)
	}
	if g.Filter != 0 {
		spec.Maps["filter"].MaxEntries = uint32(g.Filter / 8)
		if err := spec.Variables["filter_bits"].Set(uint32(bits.TrailingZeros64(g.Filter / 8))); err != nil {
			return fmt.Errorf("probe filter bits: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	return nil
}

// Seen is the frames the probe parsed as TCP or UDP.
func (g *Probe) Seen() (uint64, error) { return parsedL4(g.objs.Parsed) }

func (g *Probe) Close() error { return detachXDP(&g.link, &g.objs) }
