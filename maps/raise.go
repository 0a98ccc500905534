package maps

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// A raiser moves a 64-bit value at the start of a map's values up, never
// down, in place: a compare-and-swap loop run by a small
// BPF_PROG_TYPE_SYSCALL program (BPF_PROG_RUN). The program's own writers
// change these values in place too (the SPA replay state by
// compare-and-swap, a grant's expiry), so a plain update from user space — a
// lookup, then a write of the whole element — would be wrong twice over: a
// value the program raised between the two would be lowered again, and the
// update replaces the element, so a swap the program is making on the one
// it looked up lands on one no longer in the map. The program is a few
// instructions, so it is written here rather than in bpf/: it works on the
// pinned map of any gate, whatever program that gate runs.
type raiser struct {
	m    *ebpf.Map
	prog *ebpf.Program
}

// raiserKeyMax bounds the keys a raiser takes (the grants map's).
const raiserKeyMax = 24

// raiseCtx is the program's context: in, the value expected and wanted
// and the key (padded to whole words); out, in Old, the value found.
type raiseCtx struct {
	Old, New uint64
	Key      [raiserKeyMax]byte
}

// newRaiser loads the compare-and-swap for m's values:
//
//	__u64 *v = bpf_map_lookup_elem(m, ctx->key);
//	if (!v)
//		return 1;
//	__u64 seen = __sync_val_compare_and_swap(v, ctx->old, ctx->new);
//	if (seen == ctx->old && clearNext)
//		*(__u8 *)(v + 1) = 0;
//	ctx->old = seen;
//	return 0;
//
// clearNext also clears the byte after the value (a grant's
// expiry_reported: a grant raised is a grant whose expiry is to come).
func newRaiser(m *ebpf.Map, clearNext bool) (*raiser, error) {
	keySize := int(m.KeySize())
	if keySize > raiserKeyMax {
		return nil, fmt.Errorf("raise values of map %s: key of %d bytes, at most %d", m, keySize, raiserKeyMax)
	}
	words := (keySize + 7) / 8
	cmpxchg := asm.CmpXchg.Mem(asm.R1, asm.R2, asm.DWord, 0)
	// cilium/ebpf v0.22 encodes an atomic's operation from Constant only
	// (the immediate); left zero it would be an atomic add.
	cmpxchg.Constant = int64(asm.CmpXchg >> 8)
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)} // r6 = ctx
	for w := range words {                                 // the key, on the stack
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R6, int16(16+8*w), asm.DWord),
			asm.StoreMem(asm.RFP, int16(-8*words+8*w), asm.R2, asm.DWord))
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(-8*words)),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
		asm.Mov.Reg(asm.R1, asm.R0).WithSymbol("found"), // r1 = the value
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R0, asm.R6, 0, asm.DWord), // r0 = expected
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMem(asm.R2, asm.R6, 8, asm.DWord), // r2 = wanted
		cmpxchg, // r0 = cmpxchg(r1, r0, r2)
		asm.StoreMem(asm.R6, 0, asm.R0, asm.DWord),
	)
	if clearNext {
		insns = append(insns,
			asm.JNE.Reg(asm.R0, asm.R8, "done"),
			asm.StoreImm(asm.R7, 8, 0, asm.Byte))
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, 0).WithSymbol("done"),
		asm.Return())
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "kg_raise",
		Type:         ebpf.Syscall,
		Flags:        unix.BPF_F_SLEEPABLE, // the kernel runs syscall programs only sleepable
		License:      "Dual BSD/GPL",
		Instructions: insns,
	})
	if err != nil {
		return nil, fmt.Errorf("load the compare-and-swap of map %s: %w", m, err)
	}
	return &raiser{m: m, prog: prog}, nil
}

// Close unloads the program.
func (r *raiser) Close() error { return r.prog.Close() }

// swap runs the program once: key's value becomes wanted if it is old. It
// returns the value found; found is false when the map has no such key.
func (r *raiser) swap(key []byte, old, wanted uint64) (seen uint64, found bool, err error) {
	ctx := raiseCtx{Old: old, New: wanted}
	copy(ctx.Key[:], key)
	ret, err := r.prog.Run(&ebpf.RunOptions{Context: &ctx, ContextOut: &ctx})
	if err != nil {
		return 0, false, fmt.Errorf("compare-and-swap: %w", err)
	}
	return ctx.Old, ret == 0, nil
}

// raise moves key's value up to want, never down; between, if set, runs
// between the read of the value and each swap (a test's hook). moved says
// whether it wrote; found is false when the map has no such key (nothing
// is made).
func (r *raiser) raise(key []byte, want uint64, between func()) (moved, found bool, err error) {
	value := make([]byte, r.m.ValueSize())
	if err := r.m.Lookup(key, value); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, false, nil
	} else if err != nil {
		return false, false, fmt.Errorf("read: %w", err)
	}
	cur := binary.NativeEndian.Uint64(value)
	// Each failed swap means another writer raised it meanwhile; the value
	// only grows, so this ends.
	for range 64 {
		if want <= cur {
			return false, true, nil
		}
		if between != nil {
			between()
		}
		seen, found, err := r.swap(key, cur, want)
		if err != nil || !found {
			return false, found, err
		}
		if seen == cur {
			return true, true, nil
		}
		cur = seen
	}
	return false, true, errors.New("the value kept changing")
}
