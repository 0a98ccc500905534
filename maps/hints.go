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

// The hint bitmap (hint_bits in bpf/knockgate.c) is a Bloom filter in front
// of the grants map, blocked to one 64-bit word per (source, service): the
// program skips the grant lookup for a source whose bits are not all set in
// the active half. Every grant this package makes sets its bits in both
// halves, before the grant exists and again after, as the program does; a
// grant deleted leaves its bits until RebuildHints clears what no grant
// holds.

// The bitmap's layout: the header (its first 32-bit word the active half),
// then two halves of a power of two of words each.
const (
	HintHeader = 64 // bytes, the program's HINT_HEADER
	hintBits   = 4  // bits a (source, service) sets, the program's HINT_BITS
	// HintBitsPerSource sizes the bitmap: 16 bits of each half a grant
	// the gate can hold. With hintBits bits a grant, a full grants map sets
	// about a fifth of them: 0.5 % of strangers (TestHintFalsePositives)
	// find their bits set and look in the grants map for nothing.
	HintBitsPerSource = 16
	minHintWords      = 1024
)

// GrantKey is the grants map's key of addr's grant of the service at
// index: IPv6 as is, IPv4 v4-mapped.
func GrantKey(addr netip.Addr, index int) bpf.KnockgateGrantKey {
	return bpf.KnockgateGrantKey{Addr: Key(addr).Addr, Service: uint8(index)}
}

// HintWords is how many 64-bit words each half of the hint bitmap of a gate
// holding maxSources grants has: HintBitsPerSource bits a grant, a power of
// two, at least minHintWords.
func HintWords(maxSources uint32) uint32 {
	n := (uint64(max(maxSources, 1))*HintBitsPerSource + 63) / 64
	return uint32(max(minHintWords, 1<<bits.Len64(n-1)))
}

// HintBitsSize is the size of the hint bitmap's value for words words a
// half.
func HintBitsSize(words uint32) uint32 { return HintHeader + 2*8*words }

// HintWordsOf is the words a half of a hint bitmap whose value is size
// bytes has (HintBitsSize's inverse).
func HintWordsOf(size uint32) uint32 { return (size - HintHeader) / 16 }

// HintShift is the program's hint_shift for halves of words words.
func HintShift(words uint32) uint32 { return 64 - uint32(bits.TrailingZeros32(words)) }

// HintOf is the program's hint_of: the word, of halves of words words, that
// holds key's bits, and the bits.
func HintOf(key bpf.KnockgateGrantKey, words uint32) (word uint32, mask uint64) {
	a := binary.NativeEndian.Uint64(key.Addr[:8])
	b := binary.NativeEndian.Uint64(key.Addr[8:])
	h := (a^uint64(key.Service)<<56)*0x9e3779b97f4a7c15 + b*0xbf58476d1ce4e5b9
	m := h * 0x94d049bb133111eb
	word = uint32(h >> HintShift(words))
	mask = 1<<(m>>58) | 1<<(m>>52&63) | 1<<(m>>46&63) | 1<<(m>>40&63)
	return word, mask
}

// hintMem is the hint bitmap mapped shared (it is mmapable), so that bits
// are set with atomic instructions, as in the program, not a
// read-modify-write racing with it: 32-bit ones, each 64-bit word as its
// two halves, the atomics Go and the kernel share on every CPU Linux runs,
// 32-bit ARM included (README, 32-bit ARM).
type hintMem struct {
	mem   []byte
	words uint32
}

// active is the header's word that says which half the program reads.
func (h *hintMem) active() *uint32 { return (*uint32)(unsafe.Pointer(&h.mem[0])) }

// half is half i's words, as 32-bit halves (word w is [2w] and [2w+1]).
func (h *hintMem) half(i uint32) []uint32 {
	return unsafe.Slice((*uint32)(unsafe.Pointer(&h.mem[HintHeader+8*uint64(i&1)*uint64(h.words)])), 2*h.words)
}

// halves is mask as the two 32-bit halves of its word in memory, in order.
func halves(mask uint64) [2]uint32 {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], mask)
	return [2]uint32{binary.NativeEndian.Uint32(b[:4]), binary.NativeEndian.Uint32(b[4:])}
}

// orWord sets mask's bits in the word whose halves are at p[0] and p[1].
func orWord(p []uint32, mask uint64) {
	for i, m := range halves(mask) {
		if m != 0 {
			atomic.OrUint32(&p[i], m)
		}
	}
}

// hasWord reports whether every bit of mask is set in the word at p.
func hasWord(p []uint32, mask uint64) bool {
	m := halves(mask)
	return atomic.LoadUint32(&p[0])&m[0] == m[0] && atomic.LoadUint32(&p[1])&m[1] == m[1]
}

// withHints runs fn on the whole bitmap, mapped for this call only.
func (s *Set) withHints(fn func(h *hintMem) error) error {
	size := s.HintBits.ValueSize()
	mem, err := unix.Mmap(s.HintBits.FD(), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map hint bits: %w", err)
	}
	defer unix.Munmap(mem)
	return fn(&hintMem{mem: mem, words: HintWordsOf(size)})
}

// Hinted reports whether key's bits are all set in the active half: the
// program would look for its grant.
func (s *Set) Hinted(key bpf.KnockgateGrantKey) (hinted bool, err error) {
	err = s.withHints(func(h *hintMem) error {
		w, m := HintOf(key, h.words)
		hinted = hasWord(h.half(atomic.LoadUint32(h.active()))[2*w:], m)
		return nil
	})
	return hinted, err
}

// FillHints sets every bit of both halves: a filter that lets every
// lookup through, for a bitmap made beside grants whose bits nobody set
// (the loader's upgrade of a gate from hint counts), until RebuildHints.
func (s *Set) FillHints() error {
	return s.withHints(func(h *hintMem) error {
		for i := range uint32(2) {
			for j := range h.half(i) {
				atomic.StoreUint32(&h.half(i)[j], ^uint32(0))
			}
		}
		return nil
	})
}

// HintStats is what a rebuild of the hint bitmap did.
type HintStats struct {
	Grants     int     // grants whose bits the new half holds
	BitsBefore float64 // share of the active half's bits set before
	BitsAfter  float64 // and of the new one's
}

// RebuildHints clears the bits no grant holds: it rebuilds the inactive
// half from the grants map and makes it the active one. The caller holds
// the gate's lock (no Go writer runs meanwhile) and no program of an
// earlier layout, which would make grants without bits, runs the gate. The
// program makes grants meanwhile; each sets its bits in both halves before
// its entry exists and again after (put_grant). A grant the program makes
// during the rebuild is therefore in the new half: made before the walk
// starts, the walk finds it (a hash map's batch walk sees every entry there
// from its start to its end); made after, its second setting came after
// the clearing ended. Readers of the old half meanwhile see every bit ever
// set in it. The half cleared was the active one until the last rebuild: a
// program that read which half is active before that flip may be reading
// it still (a vCPU the host holds up), so the clearing waits for an RCU
// grace period first, after which every program running then is done.
func (s *Set) RebuildHints() (st HintStats, err error) {
	err = s.withHints(func(h *hintMem) error {
		old := atomic.LoadUint32(h.active()) & 1
		next := old ^ 1
		st.BitsBefore = fill(h.half(old))
		half := h.half(next)
		s.syncRCU()
		for i := range half {
			atomic.StoreUint32(&half[i], 0)
		}
		KillPoint()
		n, err := s.eachGrantKey(func(k bpf.KnockgateGrantKey) {
			w, m := HintOf(k, h.words)
			orWord(half[2*w:], m)
		})
		if err != nil {
			return err
		}
		KillPoint()
		atomic.StoreUint32(h.active(), next)
		st.Grants, st.BitsAfter = n, fill(half)
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("rebuild hint bits: %w", err)
	}
	return st, nil
}

// fill is the share of half's bits that are set.
func fill(half []uint32) float64 {
	n := 0
	for i := range half {
		n += bits.OnesCount32(atomic.LoadUint32(&half[i]))
	}
	return float64(n) / float64(32*len(half))
}

// eachGrantKey calls fn with the key of every entry of the grants map, in
// batches (bucket by bucket: an entry there throughout is seen).
func (s *Set) eachGrantKey(fn func(bpf.KnockgateGrantKey)) (int, error) {
	const batch = 4096
	keys := make([]bpf.KnockgateGrantKey, batch)
	vals := make([]bpf.KnockgateGrant, batch)
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		got, err := s.Grants.BatchLookup(&cursor, keys, vals, nil)
		for _, k := range keys[:got] {
			fn(k)
		}
		total += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read grants: %w", err)
		}
	}
}

// withHintWords runs fn on key's two words (one a half), each mapped for
// this call only: the page that holds it, not the whole bitmap, which the
// kernel would map page by page at once (a grant made at a time must not
// cost time in proportion to --max-sources).
func (s *Set) withHintWords(key bpf.KnockgateGrantKey, fn func(set func()) error) error {
	words := HintWordsOf(s.HintBits.ValueSize())
	w, m := HintOf(key, words)
	page := int64(unix.Getpagesize())
	var words2 [2][]uint32
	for i := range int64(2) {
		off := HintHeader + 8*(i*int64(words)+int64(w))
		at := off &^ (page - 1)
		mem, err := unix.Mmap(s.HintBits.FD(), at, int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map hint bits: %w", err)
		}
		defer unix.Munmap(mem)
		words2[i] = unsafe.Slice((*uint32)(unsafe.Pointer(&mem[off-at])), 2)
	}
	return fn(func() {
		orWord(words2[0], m)
		orWord(words2[1], m)
	})
}

// CountGrants counts the grants map's entries (live or not), in batches.
func (s *Set) CountGrants() (int, error) {
	return s.eachGrantKey(func(bpf.KnockgateGrantKey) {})
}

// putGrant inserts or replaces key's grant, the way the program's
// put_grant does: its bits set before the entry exists and after. Unlike
// the program's, it may shorten a grant, so the grant cache is voided after.
func (s *Set) putGrant(key bpf.KnockgateGrantKey, value bpf.KnockgateGrant) error {
	err := s.withHintWords(key, func(set func()) error {
		set()
		KillPoint()
		err := s.Grants.Update(key, value, ebpf.UpdateAny)
		set()
		return err
	})
	if err != nil {
		return err
	}
	return s.VoidCache()
}

// insertGrant makes key's grant unless it has one (made reports which),
// its bits set as putGrant sets them.
func (s *Set) insertGrant(key bpf.KnockgateGrantKey, value bpf.KnockgateGrant) (made bool, err error) {
	err = s.withHintWords(key, func(set func()) error {
		set()
		KillPoint()
		err := s.Grants.Update(key, value, ebpf.UpdateNoExist)
		set()
		if err == nil {
			made = true
			return nil
		}
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil
		}
		return err
	})
	return made, err
}

// deleteGrant deletes key's grant; it reports whether there was one. Its
// bits stay until RebuildHints. The caller voids the grant cache after its
// deletes (VoidCache).
func (s *Set) deleteGrant(key bpf.KnockgateGrantKey) (bool, error) {
	err := s.Grants.Delete(key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}
