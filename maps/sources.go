package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

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
// and the LRU recycles) are left out.
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
	var p bpf.KnockgateProgress
	it = s.Knocks.Iterate()
	for it.Next(&key, &p) {
		if p.Generation == cfg.Generation && p.DeadlineNs > now {
			out = append(out, SourceState{AddrOf(key.Addr), "knocking", int(p.Stage), BootToTime(p.DeadlineNs)})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate knock progress: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].State != out[j].State {
			return out[i].State > out[j].State // open first
		}
		return out[i].Addr.Less(out[j].Addr)
	})
	return out, nil
}

// Grant opens the gate for addr until expires (a CLOCK_BOOTTIME stamp, see
// BootAfter), replacing any grant it had.
func (s *Set) Grant(addr netip.Addr, expires uint64) error {
	if err := s.putEntry(s.Grants, addr, bpf.KnockgateGrant{ExpiresNs: expires}); err != nil {
		return fmt.Errorf("grant %s: %w", addr, err)
	}
	return nil
}

// LookupGrant returns addr's grant entry, live or not.
func (s *Set) LookupGrant(addr netip.Addr) (g bpf.KnockgateGrant, ok bool, err error) {
	return lookup[bpf.KnockgateGrant](s.Grants, addr)
}

// LookupKnock returns addr's knock progress entry, live or not.
func (s *Set) LookupKnock(addr netip.Addr) (p bpf.KnockgateProgress, ok bool, err error) {
	return lookup[bpf.KnockgateProgress](s.Knocks, addr)
}

// PutKnock writes addr's knock progress as given (tests use it to back-date).
func (s *Set) PutKnock(addr netip.Addr, p bpf.KnockgateProgress) error {
	if err := s.putEntry(s.Knocks, addr, p); err != nil {
		return fmt.Errorf("write knock progress of %s: %w", addr, err)
	}
	return nil
}

func lookup[V any](m *ebpf.Map, addr netip.Addr) (v V, ok bool, err error) {
	err = m.Lookup(Key(addr), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("look up %s in %s: %w", addr, m, err)
	}
	return v, true, nil
}

// Revoke removes addr's grant and knock progress. It reports whether there
// was anything to remove.
func (s *Set) Revoke(addr netip.Addr) (bool, error) {
	found := false
	for _, m := range []*ebpf.Map{s.Grants, s.Knocks} {
		deleted, err := s.deleteEntry(m, addr)
		if err != nil {
			return found, fmt.Errorf("revoke %s: %w", addr, err)
		}
		found = found || deleted
	}
	return found, nil
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
