package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
)

// Key is the map key for addr: IPv6 as is, IPv4 as v4-mapped IPv6.
func Key(addr netip.Addr) bpf.KnockgateSource {
	return bpf.KnockgateSource{Addr: addr.Unmap().As16()}
}

// AddrOf is the inverse of Key: v4-mapped keys come back as IPv4.
func AddrOf(key [16]byte) netip.Addr {
	return netip.AddrFrom16(key).Unmap()
}

// SourceState is one tracked source as status shows it.
type SourceState struct {
	Addr    netip.Addr
	State   string // "knocking" or "open"
	Stage   int    // steps completed (knocking), or the sequence length (open)
	Expires time.Time
}

// Sources lists every live source: granted ones, and those part-way through
// the current sequence. Expired and void entries (which the program ignores
// and replaces) are left out.
func (s *Set) Sources() ([]SourceState, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, err
	}
	now := BootNow()
	var out []SourceState

	var key bpf.KnockgateSource
	var g bpf.KnockgateGrant
	it := s.Grants.Iterate()
	for it.Next(&key, &g) {
		if g.ExpiresNs > now {
			out = append(out, SourceState{AddrOf(key.Addr), "open", len(cfg.Sequence), BootToTime(g.ExpiresNs)})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate grants: %w", err)
	}
	slots, err := s.KnockSlots()
	if err != nil {
		return nil, err
	}
	for _, k := range slots {
		if k.Addr != ([16]byte{}) && k.Generation == uint16(cfg.Generation) && k.DeadlineNs > now {
			out = append(out, SourceState{AddrOf(k.Addr), "knocking", int(k.Stage), BootToTime(k.DeadlineNs)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].State != out[j].State {
			return out[i].State > out[j].State // open first
		}
		return out[i].Addr.Less(out[j].Addr)
	})
	return out, nil
}

// KnockSlots reads the whole knock table, each slot under its lock, in
// batches.
func (s *Set) KnockSlots() ([]bpf.KnockgateKnockSlot, error) {
	n := int(s.Knocks.MaxEntries())
	out := make([]bpf.KnockgateKnockSlot, 0, n)
	const batch = 4096
	keys := make([]uint32, batch)
	vals := make([]bpf.KnockgateKnockSlot, batch)
	var cursor ebpf.MapBatchCursor
	for {
		got, err := s.Knocks.BatchLookup(&cursor, keys, vals, &ebpf.BatchOptions{ElemFlags: uint64(ebpf.LookupLock)})
		out = append(out, vals[:got]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) || len(out) >= n {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read knock table: %w", err)
		}
	}
}

// KnockWays is how many slots a set of the knock table has
// (KG_KNOCK_WAYS).
const KnockWays = 4

// KnockPlace is the program's place_of: the set of the knock table whose
// slots may hold addr's progress, under key, in a table of slots slots (a
// multiple of KnockWays), and the tag its slot's byte of knock_tags carries
// meanwhile.
func KnockPlace(key [2]uint64, slots uint32, addr netip.Addr) (set uint32, tag uint8) {
	k := Key(addr).Addr
	a := binary.NativeEndian.Uint64(k[:8])
	b := binary.NativeEndian.Uint64(k[8:])
	h := (a^key[0])*0x9e3779b97f4a7c15 + (b^key[1])*0xbf58476d1ce4e5b9
	set, tag = uint32(((h>>32)*uint64(slots/KnockWays))>>32), uint8((h*0x94d049bb133111eb)>>56)
	if tag == 0 {
		tag = 1
	}
	return set, tag
}

// knockPlaceOf is addr's place in this gate's knock table.
func (s *Set) knockPlaceOf(addr netip.Addr) (uint32, uint8, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return 0, 0, err
	}
	set, tag := KnockPlace(cfg.SlotKey, s.Knocks.MaxEntries(), addr)
	return set, tag, nil
}

// knockWay finds the slot of addr's set that holds its progress; ok is
// false when none does. It returns the set's slots too.
func (s *Set) knockWay(addr netip.Addr) (idx uint32, tag uint8, slots [KnockWays]bpf.KnockgateKnockSlot, ok bool, err error) {
	set, tag, err := s.knockPlaceOf(addr)
	if err != nil {
		return 0, 0, slots, false, err
	}
	want := Key(addr).Addr
	for w := range uint32(KnockWays) {
		i := set*KnockWays + w
		if err := s.Knocks.LookupWithFlags(i, &slots[w], ebpf.LookupLock); err != nil {
			return 0, 0, slots, false, fmt.Errorf("look up knock slot %d: %w", i, err)
		}
		if slots[w].Addr == want {
			idx, ok = i, true
		}
	}
	if !ok {
		idx = set * KnockWays
	}
	return idx, tag, slots, ok, nil
}

// setKnockTag writes the tag byte of slot idx in place (knock_tags is
// mmapable), as the program does: one byte store, not a rewrite of the
// whole value racing with it.
func (s *Set) setKnockTag(idx uint32, tag uint8) error {
	mem, err := unix.Mmap(s.KnockTags.FD(), 0, int(s.KnockTags.ValueSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map knock tags: %w", err)
	}
	defer unix.Munmap(mem)
	mem[idx] = tag
	return nil
}

// Grant opens the gate for addr until expires (a CLOCK_BOOTTIME stamp, see
// BootAfter), replacing any grant it had.
func (s *Set) Grant(addr netip.Addr, expires uint64) error {
	if err := s.putGrant(addr, bpf.KnockgateGrant{ExpiresNs: expires}); err != nil {
		return fmt.Errorf("grant %s: %w", addr, err)
	}
	return nil
}

// ExtendGrant makes addr's grant last until expires at least, never
// shortening it: a grant it has is raised in place (a compare-and-swap, see
// raiser), so a renewal the program makes meanwhile is never undone; one it
// lacks is made. The fleet applies other hosts' grants with it. It reports
// whether it changed anything.
func (s *Set) ExtendGrant(addr netip.Addr, expires uint64) (bool, error) {
	r, err := newRaiser(s.Grants, true)
	if err != nil {
		return false, err
	}
	defer r.Close()
	key := Key(addr).Addr
	for range 4 {
		moved, found, err := r.raise(key[:], expires, nil)
		if err != nil {
			return false, fmt.Errorf("extend the grant of %s: %w", addr, err)
		}
		if found {
			return moved, nil
		}
		made, err := s.insertGrant(addr, bpf.KnockgateGrant{ExpiresNs: expires})
		if err != nil {
			return false, fmt.Errorf("grant %s: %w", addr, err)
		}
		if made {
			return true, nil
		}
		// Made by another writer between the look and the insert: raise
		// that one.
	}
	return false, fmt.Errorf("extend the grant of %s: its entry kept changing", addr)
}

// LookupGrant returns addr's grant entry, live or not.
func (s *Set) LookupGrant(addr netip.Addr) (g bpf.KnockgateGrant, ok bool, err error) {
	err = s.Grants.Lookup(Key(addr), &g)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return g, false, nil
	}
	if err != nil {
		return g, false, fmt.Errorf("look up %s in grants: %w", addr, err)
	}
	return g, true, nil
}

// LookupKnock returns addr's knock progress, live or not; ok is false when
// no slot of its set holds progress of addr's.
func (s *Set) LookupKnock(addr netip.Addr) (k bpf.KnockgateKnockSlot, ok bool, err error) {
	idx, _, slots, ok, err := s.knockWay(addr)
	if err != nil || !ok {
		return k, false, err
	}
	return slots[idx%KnockWays], true, nil
}

// PutKnock writes addr's knock progress (tests use it to back-date): into
// the slot that holds addr's, else a free one of its set, else the first.
func (s *Set) PutKnock(addr netip.Addr, k bpf.KnockgateKnockSlot) error {
	idx, tag, slots, ok, err := s.knockWay(addr)
	if err != nil {
		return err
	}
	if !ok {
		for w, sl := range slots {
			if sl.Addr == ([16]byte{}) {
				idx = idx - idx%KnockWays + uint32(w)
				break
			}
		}
	}
	k.Addr = Key(addr).Addr
	if err := s.Knocks.Update(idx, &k, ebpf.UpdateLock); err != nil {
		return fmt.Errorf("write knock progress of %s: %w", addr, err)
	}
	return s.setKnockTag(idx, tag)
}

// Revoke removes addr's grant and knock progress. It reports whether there
// was anything to remove. (Should another source's first knock take addr's
// slot between the look and the clearing, that progress goes instead: it
// only costs that source a new knock.)
func (s *Set) Revoke(addr netip.Addr) (bool, error) {
	found, err := s.deleteGrant(addr)
	if err != nil {
		return found, fmt.Errorf("revoke %s: %w", addr, err)
	}
	KillPoint()
	idx, _, _, ok, err := s.knockWay(addr)
	if err != nil {
		return found, fmt.Errorf("revoke %s: %w", addr, err)
	}
	if !ok {
		return found, nil
	}
	if err := s.setKnockTag(idx, 0); err != nil {
		return found, err
	}
	KillPoint()
	if err := s.Knocks.Update(idx, &bpf.KnockgateKnockSlot{}, ebpf.UpdateLock); err != nil {
		return found, fmt.Errorf("revoke %s: clear its knock slot: %w", addr, err)
	}
	return true, nil
}

// SetAllow fills the allow list with prefixes; IPv4 prefixes are stored
// v4-mapped. The caller records len(prefixes) in Config.AllowCount.
func (s *Set) SetAllow(prefixes []netip.Prefix) error {
	for _, p := range prefixes {
		if err := s.Allow.Update(allowKey(p), uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("allow %s: %w", p, err)
		}
	}
	return nil
}

// RemoveAllow takes prefixes off the allow list; the caller records the
// new count in Config.AllowCount.
func (s *Set) RemoveAllow(prefixes []netip.Prefix) error {
	for _, p := range prefixes {
		key := allowKey(p)
		if err := s.Allow.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s from the allow list: %w", p, err)
		}
	}
	return nil
}

// allowKey is the LPM-trie key of p; IPv4 prefixes are stored v4-mapped.
func allowKey(p netip.Prefix) bpf.KnockgateAllowKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return bpf.KnockgateAllowKey{Prefixlen: uint32(bits), Addr: p.Addr().As16()}
}

// AllowList returns the allow-list prefixes.
func (s *Set) AllowList() ([]netip.Prefix, error) {
	var out []netip.Prefix
	var key bpf.KnockgateAllowKey
	var v uint8
	it := s.Allow.Iterate()
	for it.Next(&key, &v) {
		addr := netip.AddrFrom16(key.Addr)
		bits := int(key.Prefixlen)
		if addr.Is4In6() && bits >= 96 {
			addr, bits = addr.Unmap(), bits-96
		}
		out = append(out, netip.PrefixFrom(addr, bits))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate allow list: %w", err)
	}
	return out, nil
}
