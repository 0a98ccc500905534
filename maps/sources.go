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
	"github.com/knockgate/knockgate/policy"
)

// Key is the map key for addr: IPv6 as is, IPv4 as v4-mapped IPv6.
func Key(addr netip.Addr) bpf.KnockgateSource {
	return bpf.KnockgateSource{Addr: addr.Unmap().As16()}
}

// AddrOf is the inverse of Key: v4-mapped keys come back as IPv4.
func AddrOf(key [16]byte) netip.Addr {
	return netip.AddrFrom16(key).Unmap()
}

// SourceState is one tracked source as status shows it: a grant of one
// service, or progress through one service's sequence.
type SourceState struct {
	Addr    netip.Addr
	Service string
	State   string // "knocking" or "open"
	Stage   int    // steps completed (knocking), or the sequence length (open)
	Expires time.Time
}

// GrantsOpen counts the grants among sources (Sources), by service; a
// service without one is absent.
func GrantsOpen(sources []SourceState) map[string]int {
	n := map[string]int{}
	for _, s := range sources {
		if s.State == "open" {
			n[s.Service]++
		}
	}
	return n
}

// Sources lists every live source: each grant, and each source part-way
// through a sequence of the configuration in force. Expired and void
// entries (which the program ignores and replaces), and grants of services
// the configuration no longer has, are left out.
func (s *Set) Sources() ([]SourceState, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, err
	}
	names := cfg.names()
	now := BootNow()
	var out []SourceState

	var key bpf.KnockgateGrantKey
	var g bpf.KnockgateGrant
	it := s.Grants.Iterate()
	for it.Next(&key, &g) {
		name, ok := names[int(key.Service)]
		if ok && g.ExpiresNs > now {
			svc := cfg.Policy.Service(name)
			out = append(out, SourceState{AddrOf(key.Addr), name, "open", len(svc.Sequence), BootToTime(g.ExpiresNs)})
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
		name, ok := names[int(k.Service)]
		if ok && k.Addr != ([16]byte{}) && k.Generation == uint16(cfg.Generation) && k.DeadlineNs > now {
			out = append(out, SourceState{AddrOf(k.Addr), name, "knocking", int(k.Stage), BootToTime(k.DeadlineNs)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].State != out[j].State {
			return out[i].State > out[j].State // open first
		}
		if out[i].Addr != out[j].Addr {
			return out[i].Addr.Less(out[j].Addr)
		}
		return cfg.Index[out[i].Service] < cfg.Index[out[j].Service]
	})
	return out, nil
}

// names maps each service's index to its name.
func (c *Config) names() map[int]string {
	out := make(map[int]string, len(c.Index))
	for name, i := range c.Index {
		out[i] = name
	}
	return out
}

// ErrNoService: the gate has no service of that name.
var ErrNoService = errors.New("no such service")

// index is the index of service name in the configuration in force; the
// service default's is always 0, even before a configuration is written
// (the operator's own grant is made before).
func (s *Set) index(name string) (int, error) {
	if name == policy.DefaultService {
		return 0, nil
	}
	// The raw slot's names only: decoding the whole configuration (its
	// port tables, its allow trie) took most of a grant's time.
	raw, err := s.readInForce()
	if err != nil {
		return 0, err
	}
	defer rawPool.Put(raw)
	for i := range raw.Services {
		if raw.LiveServices&(1<<i) != 0 && cString(raw.Services[i].Name[:]) == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("service %s: %w", name, ErrNoService)
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

// Grant opens service for addr until expires (a CLOCK_BOOTTIME stamp, see
// BootAfter), replacing any grant of that service it had.
func (s *Set) Grant(addr netip.Addr, service string, expires uint64) error {
	i, err := s.index(service)
	if err != nil {
		return fmt.Errorf("grant %s: %w", addr, err)
	}
	if err := s.putGrant(GrantKey(addr, i), bpf.KnockgateGrant{ExpiresNs: expires}); err != nil {
		return fmt.Errorf("grant %s: %w", addr, err)
	}
	return nil
}

// ExtendGrant makes addr's grant of service last until expires at least,
// never shortening it: a grant it has is raised in place (a
// compare-and-swap, see raiser), so a renewal the program makes meanwhile
// is never undone; one it lacks is made. The fleet applies other hosts'
// grants with it. It reports whether it changed anything.
func (s *Set) ExtendGrant(addr netip.Addr, service string, expires uint64) (bool, error) {
	i, err := s.index(service)
	if err != nil {
		return false, fmt.Errorf("grant %s: %w", addr, err)
	}
	r, err := newRaiser(s.Grants, true)
	if err != nil {
		return false, err
	}
	defer r.Close()
	key := GrantKey(addr, i)
	raw := make([]byte, 0, s.Grants.KeySize())
	raw = append(raw, key.Addr[:]...)
	raw = append(raw, key.Service, 0, 0, 0)
	for range 4 {
		moved, found, err := r.raise(raw, expires, nil)
		if err != nil {
			return false, fmt.Errorf("extend the grant of %s: %w", addr, err)
		}
		if found {
			return moved, nil
		}
		made, err := s.insertGrant(key, bpf.KnockgateGrant{ExpiresNs: expires})
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

// LookupGrant returns addr's grant entry of service, live or not.
func (s *Set) LookupGrant(addr netip.Addr, service string) (g bpf.KnockgateGrant, ok bool, err error) {
	i, err := s.index(service)
	if err != nil {
		return g, false, err
	}
	err = s.Grants.Lookup(GrantKey(addr, i), &g)
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

// Revoke removes addr's grant of service ("": of every service) and its
// knock progress through that service's sequence (any sequence). It reports whether there was anything
// to remove. (Should another source's first knock take addr's slot between
// the look and the clearing, that progress goes instead: it only costs that
// source a new knock.)
func (s *Set) Revoke(addr netip.Addr, service string) (bool, error) {
	indices := []int{}
	if service == "" {
		for i := range MaxServices {
			indices = append(indices, i)
		}
	} else {
		i, err := s.index(service)
		if err != nil {
			return false, fmt.Errorf("revoke %s: %w", addr, err)
		}
		indices = append(indices, i)
	}
	found := false
	for _, i := range indices {
		had, err := s.deleteGrant(GrantKey(addr, i))
		if err != nil {
			// What was deleted must not pass from the cache either.
			return found, errors.Join(fmt.Errorf("revoke %s: %w", addr, err), s.VoidCache())
		}
		found = found || had
	}
	// Whether or not the map had the grant (the LRU may have recycled an
	// entry the cache still holds), the cache must forget it.
	if err := s.VoidCache(); err != nil {
		return found, fmt.Errorf("revoke %s: %w", addr, err)
	}
	KillPoint()
	idx, _, slots, ok, err := s.knockWay(addr)
	if err != nil {
		return found, fmt.Errorf("revoke %s: %w", addr, err)
	}
	if !ok || len(indices) == 1 && int(slots[idx%KnockWays].Service) != indices[0] {
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
