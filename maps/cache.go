package maps

import (
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
)

// The grant cache (grant_cache in bpf/knockgate.c) is what a granted
// source's packet reads instead of the grants map: one cache line of
// entries the program makes from live grants it found in the map, each
// valid in the epoch it was made in. This package never writes entries; it
// bumps the epoch, a word of the hint bitmap's header, after every change
// that removes or shortens a grant, which voids every entry at once
// (VoidCache). A gate pinned by a build without the cache has none
// (GrantCache nil) until the loader's upgrade makes one; the epoch is
// bumped all the same.

// CacheWays is the entries a line of the cache holds (the program's
// KG_CACHE_WAYS).
const CacheWays = len(bpf.KnockgateGrantCacheLine{}.W) / 2

// cacheEpochOffset is where the epoch is in the hint bitmap's header (the
// program's HINT_EPOCH): its second 32-bit word.
const cacheEpochOffset = 4

// CacheSets is how many sets (lines) the grant cache of a gate holding
// maxSources grants has: one line of CacheWays entries a grant (64 bytes),
// a power of two, at least 1024. At a full grants map a set holds one grant
// on average, and 2 % of grants share a set with four others and may be
// forgotten (the map answers for them).
func CacheSets(maxSources uint32) uint32 {
	n := uint64(max(maxSources, 1))
	return uint32(max(1024, 1<<bits.Len64(n-1)))
}

// withHintHeader runs fn on the hint bitmap's header, mapped for this call
// only (its first page, not the whole bitmap).
func (s *Set) withHintHeader(fn func(hdr []byte)) error {
	mem, err := unix.Mmap(s.HintBits.FD(), 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the hint bitmap's header: %w", err)
	}
	defer unix.Munmap(mem)
	fn(mem[:HintHeader])
	return nil
}

// VoidCache bumps the grant cache's epoch, which voids every entry: called
// after a grant is removed or may have been shortened, so that no packet
// passes on what the map no longer says. The program reads the epoch before
// the map, so an entry made from the map before the change has the old
// epoch. The epoch is 32 bits: it comes back to a value after 2^32 bumps,
// by which time no entry made under it is still unexpired in practice
// (they hold grants of at most the services' windows).
func (s *Set) VoidCache() error {
	err := s.withHintHeader(func(hdr []byte) {
		atomic.AddUint32((*uint32)(unsafe.Pointer(&hdr[cacheEpochOffset])), 1)
	})
	if err != nil {
		return fmt.Errorf("void the grant cache: %w", err)
	}
	return nil
}

// CacheEpoch reads the grant cache's epoch.
func (s *Set) CacheEpoch() (epoch uint32, err error) {
	err = s.withHintHeader(func(hdr []byte) {
		epoch = atomic.LoadUint32((*uint32)(unsafe.Pointer(&hdr[cacheEpochOffset])))
	})
	return epoch, err
}
