package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
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

// HintSlot is the program's hint_slot: the slot of the hints map that counts
// addr's entries.
func HintSlot(addr netip.Addr) uint32 {
	k := Key(addr).Addr
	a := binary.NativeEndian.Uint64(k[:8])
	b := binary.NativeEndian.Uint64(k[8:])
	return uint32(((a ^ b) * 0x9e3779b97f4a7c15) >> (64 - 16))
}

// withHintCount runs fn on addr's count, mapped shared from the map (it is
// mmapable) so that adding to it is one atomic instruction, as in the
// program, not a read-modify-write of the whole value racing with it.
func (s *Set) withHintCount(addr netip.Addr, fn func(n *uint64) error) error {
	mem, err := unix.Mmap(s.Hints.FD(), 0, int(s.Hints.ValueSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map hint counts: %w", err)
	}
	defer unix.Munmap(mem)
	return fn((*uint64)(unsafe.Pointer(&mem[8*HintSlot(addr)])))
}

// HintCount returns the count of addr's hint slot.
func (s *Set) HintCount(addr netip.Addr) (n uint64, err error) {
	err = s.withHintCount(addr, func(p *uint64) error {
		n = atomic.LoadUint64(p)
		return nil
	})
	return n, err
}

// putGrant inserts or replaces addr's grant, the way the program's
// put_grant does.
func (s *Set) putGrant(addr netip.Addr, value bpf.KnockgateGrant) error {
	m := s.Grants
	return s.withHintCount(addr, func(n *uint64) error {
		// Two tries: an entry deleted between the two updates is made anew.
		for range 2 {
			atomic.AddUint64(n, 1)
			KillPoint()
			err := m.Update(Key(addr), value, ebpf.UpdateNoExist)
			if err == nil {
				return nil
			}
			atomic.AddUint64(n, ^uint64(0))
			if !errors.Is(err, ebpf.ErrKeyExist) {
				return err
			}
			err = m.Update(Key(addr), value, ebpf.UpdateExist)
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
		return fmt.Errorf("entry of %s kept changing", addr)
	})
}

// insertGrant makes addr's grant unless it has one (made reports which),
// counted as putGrant counts.
func (s *Set) insertGrant(addr netip.Addr, value bpf.KnockgateGrant) (made bool, err error) {
	err = s.withHintCount(addr, func(n *uint64) error {
		atomic.AddUint64(n, 1)
		KillPoint()
		err := s.Grants.Update(Key(addr), value, ebpf.UpdateNoExist)
		if err == nil {
			made = true
			return nil
		}
		atomic.AddUint64(n, ^uint64(0))
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil
		}
		return err
	})
	return made, err
}

// deleteGrant deletes addr's grant and uncounts it; it reports whether
// there was one.
func (s *Set) deleteGrant(addr netip.Addr) (bool, error) {
	err := s.Grants.Delete(Key(addr))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	KillPoint() // killed here, the count reads high: a lookup's cost, no more
	return true, s.withHintCount(addr, func(n *uint64) error {
		atomic.AddUint64(n, ^uint64(0))
		return nil
	})
}
