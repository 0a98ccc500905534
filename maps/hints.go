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

// GrantKey is the grants map's key of addr's grant of the service at
// index: IPv6 as is, IPv4 v4-mapped.
func GrantKey(addr netip.Addr, index int) bpf.KnockgateGrantKey {
	return bpf.KnockgateGrantKey{Addr: Key(addr).Addr, Service: uint8(index)}
}

// HintSlot is the program's hint_slot: the slot of the hints map that counts
// the grants of key's source and service.
func HintSlot(key bpf.KnockgateGrantKey) uint32 {
	a := binary.NativeEndian.Uint64(key.Addr[:8])
	b := binary.NativeEndian.Uint64(key.Addr[8:])
	return uint32(((a ^ b ^ uint64(key.Service)<<56) * 0x9e3779b97f4a7c15) >> (64 - 16))
}

// withHintCount runs fn on key's count, mapped shared from the map (it is
// mmapable) so that adding to it is one atomic instruction, as in the
// program, not a read-modify-write of the whole value racing with it.
func (s *Set) withHintCount(key bpf.KnockgateGrantKey, fn func(n *uint64) error) error {
	if err := hintAtomics(); err != nil { // 32-bit ARM: atomics.go
		return err
	}
	mem, err := unix.Mmap(s.Hints.FD(), 0, int(s.Hints.ValueSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map hint counts: %w", err)
	}
	defer unix.Munmap(mem)
	return fn((*uint64)(unsafe.Pointer(&mem[8*HintSlot(key)])))
}

// HintCount returns the count of the hint slot of key.
func (s *Set) HintCount(key bpf.KnockgateGrantKey) (n uint64, err error) {
	err = s.withHintCount(key, func(p *uint64) error {
		n = atomic.LoadUint64(p)
		return nil
	})
	return n, err
}

// putGrant inserts or replaces key's grant, the way the program's
// put_grant does.
func (s *Set) putGrant(key bpf.KnockgateGrantKey, value bpf.KnockgateGrant) error {
	m := s.Grants
	return s.withHintCount(key, func(n *uint64) error {
		// Two tries: an entry deleted between the two updates is made anew.
		for range 2 {
			atomic.AddUint64(n, 1)
			KillPoint()
			err := m.Update(key, value, ebpf.UpdateNoExist)
			if err == nil {
				return nil
			}
			atomic.AddUint64(n, ^uint64(0))
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

// deleteGrant deletes key's grant and uncounts it; it reports whether
// there was one.
func (s *Set) deleteGrant(key bpf.KnockgateGrantKey) (bool, error) {
	err := s.Grants.Delete(key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	KillPoint() // killed here, the count reads high: a lookup's cost, no more
	return true, s.withHintCount(key, func(n *uint64) error {
		atomic.AddUint64(n, ^uint64(0))
		return nil
	})
}
