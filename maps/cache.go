package maps

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
)

// The grant cache (grant_cache in bpf/knockgate.c) is what a granted
// source's packet reads instead of the grants map: one cache line of
// entries the program makes from live grants it found in the map, each
// valid in the epoch it was made in. This package never writes entries; it
// makes the header (a random key for the entries' fingerprints) and bumps
// the epoch after every change that removes or shortens a grant, which
// voids every entry at once (VoidCache). A gate pinned by a build without
// the cache has none (GrantCache nil) until the loader's upgrade makes one.

// CacheWays is the entries a line of the cache holds (the program's
// KG_CACHE_WAYS).
const CacheWays = len(bpf.KnockgateGrantCacheLine{}.W) / 2

// cacheEpochOffset is where the epoch is in the header line: the first
// 32-bit word of its third 64-bit word, which the program reads as such
// on either byte order.
const cacheEpochOffset = 16

// CacheSets is how many sets the grant cache of a gate holding maxSources
// grants has: one line of KG_CACHE_WAYS entries a grant (64 bytes), a power
// of two, at least 1024. At a full grants map a set holds one grant on
// average, and 2 % of grants share a set with four others and may be
// forgotten (the map answers for them).
func CacheSets(maxSources uint32) uint32 {
	n := uint64(max(maxSources, 1))
	return uint32(max(1024, 1<<bits.Len64(n-1)))
}

// CacheLines is the grant cache's max_entries for sets sets: the header
// and the sets.
func CacheLines(sets uint32) uint32 { return 1 + sets }

// InitGrantCache writes the cache's header: a fresh random key, epoch 0.
// Done before any program reads the map (a gate made or a cache made for an
// upgrade), so no entry is ever made under another key.
func (s *Set) InitGrantCache() error {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("make the grant cache's key: %w", err)
	}
	var hdr bpf.KnockgateGrantCacheLine
	hdr.W[0] = binary.NativeEndian.Uint64(b[:8])
	hdr.W[1] = binary.NativeEndian.Uint64(b[8:])
	if err := s.GrantCache.Update(uint32(0), &hdr, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write the grant cache's header: %w", err)
	}
	return nil
}

// VoidCache bumps the cache's epoch, which voids every entry: called after
// a grant is removed or may have been shortened, so that no packet passes
// on what the map no longer says. The program reads the epoch before the
// map, so an entry made from the map before the change has the old epoch.
// A gate without a cache has nothing to void.
func (s *Set) VoidCache() error {
	if s.GrantCache == nil {
		return nil
	}
	page := unix.Getpagesize()
	mem, err := unix.Mmap(s.GrantCache.FD(), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the grant cache's header: %w", err)
	}
	defer unix.Munmap(mem)
	atomic.AddUint32((*uint32)(unsafe.Pointer(&mem[cacheEpochOffset])), 1)
	return nil
}

// CacheEpoch reads the cache's epoch (tests).
func (s *Set) CacheEpoch() (uint32, error) {
	if s.GrantCache == nil {
		return 0, errors.New("no grant cache")
	}
	var hdr bpf.KnockgateGrantCacheLine
	if err := s.GrantCache.Lookup(uint32(0), &hdr); err != nil {
		return 0, fmt.Errorf("read the grant cache's header: %w", err)
	}
	return *(*uint32)(unsafe.Pointer(&hdr.W[2])), nil
}
