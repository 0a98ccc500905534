package bpf_test

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
)

// The program is one object (bpfel) whatever the CPU the gate runs on, and
// its structs are laid out as clang lays them out for BPF: 64-bit, u64
// aligned to 8. Go lays out bpf2go's types for the CPU it compiles for,
// where on 32-bit ARM and 386 a uint64 is aligned to 4 only (bpf2go writes
// the padding out to make up for it). This test compares the two, size and
// every offset, on whatever GOARCH runs it: CI runs it for linux/arm,
// linux/arm64 and linux/386 too. It needs no BPF: it reads the object's BTF.
func TestSharedStructLayout(t *testing.T) {
	spec, err := bpf.LoadKnockgate()
	if err != nil {
		t.Fatal(err)
	}
	// Every struct the ABI shares with Go, by its C name.
	goTypes := map[string]any{
		"allow_key": bpf.KnockgateAllowKey{},
		"config":    bpf.KnockgateConfig{},
		"event":     bpf.KnockgateEvent{},
		"flow":      bpf.KnockgateFlow{},
		// fwknop's (fwknop.h): keys and replay entries Go writes, the
		// records the ring hands to run, and run's grant requests.
		"fwknop_digest":    bpf.KnockgateFwknopDigest{},
		"fwknop_grant_req": bpf.KnockgateFwknopGrantReq{},
		"fwknop_key":       bpf.KnockgateFwknopKey{},
		"fwknop_record":    bpf.KnockgateFwknopRecord{},
		"fwknop_seen":      bpf.KnockgateFwknopSeen{},
		"flow_key":         bpf.KnockgateFlowKey{},
		"grant":            bpf.KnockgateGrant{},
		"grant_cache_line": bpf.KnockgateGrantCacheLine{},
		"grant_key":        bpf.KnockgateGrantKey{},
		"knock_slot":       bpf.KnockgateKnockSlot{},
		"service":          bpf.KnockgateService{},
		"source":           bpf.KnockgateSource{},
		"spa_key":          bpf.KnockgateSpaKey{},
		"step":             bpf.KnockgateStep{},
	}
	// The program's own: a per-CPU scratch buffer Go never reads or writes.
	programOnly := map[string]bool{"fwknop_scratch": true}
	// The table is complete: every named struct a map's key or value is.
	for name, m := range spec.Maps {
		for _, typ := range []btf.Type{m.Key, m.Value} {
			if s, ok := btf.UnderlyingType(typ).(*btf.Struct); ok && s.Name != "" {
				if _, ok := goTypes[s.Name]; !ok && !programOnly[s.Name] {
					t.Errorf("map %s uses struct %s, which this test does not check: add it", name, s.Name)
				}
			}
		}
	}
	// The hint bitmap is no struct, but Go shares it too: maps sets bits
	// in place, in memory mapped from the map, with sync/atomic's 64-bit
	// operations, at offsets of its own (maps.HintHeader, maps.HintWords).
	hints, ok := spec.Maps["hint_bits"]
	if !ok {
		t.Fatal("no hint_bits map")
	}
	if got, want := hints.ValueSize, maps.HintBitsSize(1024); got != want {
		t.Errorf("hint_bits value: %d bytes in C, %d in Go for 1024 words a half", got, want)
	}
	for name, v := range goTypes {
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Errorf("struct %s: %v", name, err)
			continue
		}
		for _, diff := range compareLayout(name, s, reflect.TypeOf(v), 0) {
			t.Errorf("%s/%s: %s", runtime.GOOS, runtime.GOARCH, diff)
		}
	}
}

// compareLayout lists where Go type g, at offset base of the outermost
// struct, differs from BTF type c: sizes, and for structs each member's
// offset and layout, recursively.
func compareLayout(path string, c btf.Type, g reflect.Type, base uintptr) []string {
	c = btf.UnderlyingType(c)
	size, err := btf.Sizeof(c)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	if uintptr(size) != g.Size() {
		return []string{fmt.Sprintf("%s: %d bytes in C, %d in Go", path, size, g.Size())}
	}
	switch c := c.(type) {
	case *btf.Struct:
		var fields []reflect.StructField
		for i := range g.NumField() {
			// bpf2go's own padding and the zero-size HostLayout marker
			// have no C member.
			if f := g.Field(i); f.Name != "_" {
				fields = append(fields, f)
			}
		}
		if len(fields) != len(c.Members) {
			return []string{fmt.Sprintf("%s: %d members in C, %d fields in Go", path, len(c.Members), len(fields))}
		}
		var out []string
		for i, m := range c.Members {
			f := fields[i]
			p := path + "." + m.Name
			if m.BitfieldSize != 0 {
				out = append(out, fmt.Sprintf("%s: a bitfield (Go has none)", p))
				continue
			}
			if off := uintptr(m.Offset.Bytes()); off != f.Offset {
				out = append(out, fmt.Sprintf("%s: at offset %d in C, %d in Go (%s)", p, base+off, base+f.Offset, f.Name))
				continue
			}
			out = append(out, compareLayout(p, m.Type, f.Type, base+f.Offset)...)
		}
		return out
	case *btf.Array:
		if g.Kind() != reflect.Array || uint32(g.Len()) != c.Nelems {
			return []string{fmt.Sprintf("%s: an array of %d in C, %s in Go", path, c.Nelems, g)}
		}
		return compareLayout(path+"[0]", c.Type, g.Elem(), base)
	}
	return nil
}
