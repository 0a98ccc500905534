package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
)

// The hints map counts, per slot, the grants whose source hashes there; the
// program skips the grant lookup for a source whose count is zero (see
// hints in bpf/knockgate.c). Every grant this package makes or deletes keeps
// that count exact, in the same order the program does: up before a grant
// exists, down after it is gone.

// GrantKey is the grants map's key of addr's grant of the service at
// index: IPv6 as is, IPv4 v4-mapped.
func GrantKey(addr netip.Addr, index int) bpf.KnockgateGrantKey {
	return bpf.KnockgateGrantKey{Addr: Key(addr).Addr, Service: uint8(index)}
}

// HintSlot is the program's hint_slot: the slot, of a hints map of slots
// slots (a power of two), that counts the grants of key's source and
// service: a multiplicative hash's top bits.
func HintSlot(key bpf.KnockgateGrantKey, slots uint32) uint32 {
	a := binary.NativeEndian.Uint64(key.Addr[:8])
	b := binary.NativeEndian.Uint64(key.Addr[8:])
	return uint32(((a ^ b ^ uint64(key.Service)<<56) * 0x9e3779b97f4a7c15) >> HintShift(slots))
}

// HintShift is the program's hint_shift for a hints map of slots slots.
func HintShift(slots uint32) uint32 { return 64 - uint32(bits.TrailingZeros32(slots)) }

// HintSlots is how many slots the hints map of a gate holding maxSources
// grants has: four a grant, so that with the grants map full most of a
// stranger's slots still count zero (about 78 %), a power of two, at least
// 65536.
func HintSlots(maxSources uint32) uint32 {
	n := uint64(4 * max(maxSources, 1))
	return uint32(max(1<<16, 1<<bits.Len64(n-1)))
}

// hintCounts is the hints map mapped shared (it is mmapable), so that
// adding to a count is one atomic instruction, as in the program, not a
// read-modify-write racing with it. It is mapped on first use and kept
// until done: an operation that touches many counts (a purge of removed
// services' grants, a revoke of every service) maps it once. The counts
// are 32-bit because the kernel's 32-bit atomic add and sync/atomic's are
// one kind of operation on every CPU Linux runs, 32-bit ARM included
// (LDREX/STREX on both sides; README, 32-bit ARM): 64-bit ones are not
// there, and Go and the kernel could each take a lock the other ignores.
type hintCounts struct {
	hints *ebpf.Map
	mem   []byte
}

// with runs fn on key's count. An array's elements are 8 bytes apart,
// whatever their size.
func (h *hintCounts) with(key bpf.KnockgateGrantKey, fn func(n *uint32) error) error {
	slots := h.hints.MaxEntries()
	if h.mem == nil {
		mem, err := unix.Mmap(h.hints.FD(), 0, int(8*slots), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map hint counts: %w", err)
		}
		h.mem = mem
	}
	return fn((*uint32)(unsafe.Pointer(&h.mem[8*HintSlot(key, slots)])))
}

// done unmaps the counts, if with mapped them.
func (h *hintCounts) done() {
	if h.mem != nil {
		unix.Munmap(h.mem)
		h.mem = nil
	}
}

// withHintCount runs fn on key's count, mapped for this call only: the
// page that holds it, not the whole array, which the kernel maps at once
// (every page, in time proportional to the array's size: some 2 ms at
// --max-sources 2^20, which each grant then cost).
func (s *Set) withHintCount(key bpf.KnockgateGrantKey, fn func(n *uint32) error) error {
	off := 8 * int64(HintSlot(key, s.Hints.MaxEntries()))
	page := int64(unix.Getpagesize())
	at := off &^ (page - 1)
	mem, err := unix.Mmap(s.Hints.FD(), at, int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map hint count: %w", err)
	}
	defer unix.Munmap(mem)
	return fn((*uint32)(unsafe.Pointer(&mem[off-at])))
}

// HintCount returns the count of the hint slot of key.
func (s *Set) HintCount(key bpf.KnockgateGrantKey) (n uint32, err error) {
	err = s.withHintCount(key, func(p *uint32) error {
		n = atomic.LoadUint32(p)
		return nil
	})
	return n, err
}

// putGrant inserts or replaces key's grant, the way the program's
// put_grant does.
func (s *Set) putGrant(key bpf.KnockgateGrantKey, value bpf.KnockgateGrant) error {
	m := s.Grants
	return s.withHintCount(key, func(n *uint32) error {
		// Two tries: an entry deleted between the two updates is made anew.
		for range 2 {
			atomic.AddUint32(n, 1)
			KillPoint()
			err := m.Update(key, value, ebpf.UpdateNoExist)
			if err == nil {
				return nil
			}
			atomic.AddUint32(n, ^uint32(0))
			if !errors.Is(err, ebpf.ErrKeyExist) {
				return err
			}
			err = m.Update(key, value, ebpf.UpdateExist)
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
		return fmt.Errorf("entry of %s kept changing", AddrOf(key.Addr))
	})
}

// insertGrant makes key's grant unless it has one (made reports which),
// counted as putGrant counts.
func (s *Set) insertGrant(key bpf.KnockgateGrantKey, value bpf.KnockgateGrant) (made bool, err error) {
	err = s.withHintCount(key, func(n *uint32) error {
		atomic.AddUint32(n, 1)
		KillPoint()
		err := s.Grants.Update(key, value, ebpf.UpdateNoExist)
		if err == nil {
			made = true
			return nil
		}
		atomic.AddUint32(n, ^uint32(0))
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil
		}
		return err
	})
	return made, err
}

// deleteGrant deletes key's grant and uncounts it in h (mapped once for
// every grant the caller deletes); it reports whether there was one.
func (s *Set) deleteGrant(h *hintCounts, key bpf.KnockgateGrantKey) (bool, error) {
	err := s.Grants.Delete(key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	KillPoint() // killed here, the count reads high: a lookup's cost, no more
	return true, h.with(key, func(n *uint32) error {
		atomic.AddUint32(n, ^uint32(0))
		return nil
	})
}
