package maps

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/spa"
)

// The program judges an SPA timestamp against Unix time, which BPF can only
// read as CLOCK_TAI (bpf_ktime_get_tai_ns): TAI follows every step of the
// system clock (NTP, date -s) at once, and differs from Unix time by the
// kernel's TAI offset, which each configuration write records. The offset
// changes only at a leap second or when a time daemon sets it (chrony with
// leapsectz, ntpd), which TAIOffsetChanged tells.

// TAIOffset is the kernel's TAI offset (adjtimex): CLOCK_TAI less
// CLOCK_REALTIME.
func TAIOffset() (time.Duration, error) {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return 0, fmt.Errorf("read the kernel's TAI offset (adjtimex): %w", err)
	}
	return time.Duration(tx.Tai) * time.Second, nil
}

// TAINow is CLOCK_TAI in nanoseconds, the clock the program reads.
func TAINow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		panic("clock_gettime(CLOCK_TAI): " + err.Error())
	}
	return ts.Nano()
}

// GateUnixTime is the Unix time the program judges SPA timestamps by, under
// configuration c.
func GateUnixTime(c *Config) time.Time {
	return time.Unix(0, TAINow()-int64(c.TAIOffset))
}

// SPAKey is a key in the gate with its replay state.
type SPAKey struct {
	spa.Key
	// LastAccepted is the timestamp of the newest packet accepted under the
	// key (zero: none yet); only newer ones are accepted.
	LastAccepted time.Time
}

func encodeKey(k *spa.Key) bpf.KnockgateSpaKey {
	raw := bpf.KnockgateSpaKey{OpenNs: uint64(k.Open)}
	raw.K[0] = binary.LittleEndian.Uint64(k.Secret[:8])
	raw.K[1] = binary.LittleEndian.Uint64(k.Secret[8:])
	if k.AnyAddress {
		raw.Flags |= uint32(bpf.KnockgateSpaKeyFlagSPA_KEY_ANY_ADDRESS)
	}
	copy(raw.Name[:spa.NameLen], k.Name)
	return raw
}

func decodeKey(id uint32, raw *bpf.KnockgateSpaKey) spa.Key {
	k := spa.Key{ID: id, Open: time.Duration(raw.OpenNs),
		AnyAddress: raw.Flags&uint32(bpf.KnockgateSpaKeyFlagSPA_KEY_ANY_ADDRESS) != 0}
	binary.LittleEndian.PutUint64(k.Secret[:8], raw.K[0])
	binary.LittleEndian.PutUint64(k.Secret[8:], raw.K[1])
	k.Name = string(bytes.TrimRight(raw.Name[:], "\x00"))
	return k
}

// SetSPAKeys makes the gate's keys exactly keys, live: keys not in the list
// are removed first (they stop working at once, and their room is free for
// the new ones, so a full change never runs out of it), then new keys and
// changed ones are written. A key's replay state (its newest accepted
// timestamp) is made before the key and kept while the key stays, whatever
// else of it changes, so a rewrite never reopens a replay; it goes with the
// key.
func (s *Set) SetSPAKeys(keys []spa.Key) error {
	if len(keys) > spa.MaxKeys {
		return fmt.Errorf("%d SPA keys, at most %d", len(keys), spa.MaxKeys)
	}
	want := map[uint32]bool{}
	for i := range keys {
		if want[keys[i].ID] {
			return fmt.Errorf("SPA key id %d given twice", keys[i].ID)
		}
		want[keys[i].ID] = true
	}
	// The key before its replay state: a packet never finds a key without.
	for _, m := range []*ebpf.Map{s.SPAKeys, s.SPALast} {
		var stale []uint32
		var prev any // nil: from the first key
		for {
			var id uint32
			err := m.NextKey(prev, &id)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			if err != nil {
				return fmt.Errorf("list SPA keys: %w", err)
			}
			if !want[id] {
				stale = append(stale, id)
			}
			prev = &id
		}
		for _, id := range stale {
			if err := m.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("remove SPA key %d: %w", id, err)
			}
			KillPoint()
		}
	}
	for i := range keys {
		k := &keys[i]
		if err := s.SPALast.Update(k.ID, uint64(0), ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("write replay state of SPA key %d: %w", k.ID, err)
		}
		raw := encodeKey(k)
		KillPoint()
		if err := s.SPAKeys.Update(k.ID, &raw, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write SPA key %d: %w", k.ID, err)
		}
		KillPoint()
	}
	return nil
}

// ReadSPAKeys lists the gate's keys by id, with their replay state.
func (s *Set) ReadSPAKeys() ([]SPAKey, error) {
	var out []SPAKey
	var id uint32
	var raw bpf.KnockgateSpaKey
	it := s.SPAKeys.Iterate()
	for it.Next(&id, &raw) {
		k := SPAKey{Key: decodeKey(id, &raw)}
		var last uint64
		if err := s.SPALast.Lookup(id, &last); err == nil && last != 0 {
			k.LastAccepted = time.UnixMilli(int64(last))
		}
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list SPA keys: %w", err)
	}
	slices.SortFunc(out, func(a, b SPAKey) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// AdvanceReplay moves key id's replay state (its newest accepted timestamp,
// Unix ms) forward to ms, never back: a compare-and-swap loop on the value
// in place, as the program's own acceptance is (bpf/spa.h), so an
// acceptance racing it is never undone. A plain update would be wrong
// twice over: a newer timestamp the program accepts between a lookup and
// the update would be overwritten with an older one, and the update
// replaces the map element, so a compare-and-swap the program is making on
// the element it looked up lands on one no longer in the map. It reports
// whether it moved the state; a key the gate does not have is left alone.
func (s *Set) AdvanceReplay(id uint32, ms uint64) (bool, error) {
	return s.advanceReplay(id, ms, nil)
}

// advanceReplay is AdvanceReplay with a hook that tests call between the
// read of the current value and the compare-and-swap.
func (s *Set) advanceReplay(id uint32, ms uint64, between func()) (bool, error) {
	prog, err := newReplayCAS(s.SPALast)
	if err != nil {
		return false, err
	}
	defer prog.Close()
	var cur uint64
	if err := s.SPALast.Lookup(id, &cur); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("read replay state of SPA key %d: %w", id, err)
	}
	// Each failed swap means the program accepted a newer packet (or the
	// fleet wrote one) meanwhile; the value only grows, so this ends.
	for range 64 {
		if ms <= cur {
			return false, nil
		}
		if between != nil {
			between()
		}
		swapped, seen, found, err := replayCAS(prog, id, cur, ms)
		if err != nil || !found {
			return false, err
		}
		if swapped {
			return true, nil
		}
		cur = seen
	}
	return false, fmt.Errorf("replay state of SPA key %d kept changing", id)
}

// replayCASCtx is the context of the compare-and-swap program: in, the key
// id and the value expected and wanted; out, in Old, the value found.
type replayCASCtx struct {
	ID       uint32
	_        uint32
	Old, New uint64
}

// newReplayCAS loads the compare-and-swap of one spa_last value in place,
// a BPF_PROG_TYPE_SYSCALL program that user space runs (BPF_PROG_RUN):
//
//	__u64 *v = bpf_map_lookup_elem(&spa_last, &ctx->id);
//	if (!v)
//		return 1;
//	ctx->old = __sync_val_compare_and_swap(v, ctx->old, ctx->new);
//	return 0;
//
// It is a few instructions, so it is written here rather than in bpf/: it
// works on the pinned map of any gate, whatever program that gate runs.
func newReplayCAS(last *ebpf.Map) (*ebpf.Program, error) {
	cmpxchg := asm.CmpXchg.Mem(asm.R1, asm.R2, asm.DWord, 0)
	// cilium/ebpf v0.22 encodes an atomic's operation from Constant only
	// (the immediate); left zero it would be an atomic add.
	cmpxchg.Constant = int64(asm.CmpXchg >> 8)
	spec := &ebpf.ProgramSpec{
		Name:    "kg_replay_cas",
		Type:    ebpf.Syscall,
		Flags:   unix.BPF_F_SLEEPABLE, // the kernel runs syscall programs only sleepable
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1), // r6 = ctx
			asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
			asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word), // the key, on the stack
			asm.LoadMapPtr(asm.R1, last.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(asm.R0, 0, "found"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
			asm.Mov.Reg(asm.R1, asm.R0).WithSymbol("found"), // r1 = the value
			asm.LoadMem(asm.R0, asm.R6, 8, asm.DWord),       // r0 = expected
			asm.LoadMem(asm.R2, asm.R6, 16, asm.DWord),      // r2 = wanted
			cmpxchg, // r0 = cmpxchg(r1, r0, r2)
			asm.StoreMem(asm.R6, 8, asm.R0, asm.DWord),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, fmt.Errorf("load the replay state's compare-and-swap: %w", err)
	}
	return prog, nil
}

// replayCAS runs prog once: it sets key id's value to wanted if it is old,
// and returns the value it found (found: the key is there).
func replayCAS(prog *ebpf.Program, id uint32, old, wanted uint64) (swapped bool, seen uint64, found bool, err error) {
	ctx := replayCASCtx{ID: id, Old: old, New: wanted}
	ret, err := prog.Run(&ebpf.RunOptions{Context: &ctx, ContextOut: &ctx})
	if err != nil {
		return false, 0, false, fmt.Errorf("compare-and-swap replay state of SPA key %d: %w", id, err)
	}
	if ret != 0 {
		return false, 0, false, nil
	}
	return ctx.Old == old, ctx.Old, true, nil
}
