package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
)

// The allow trie holds the allow lists of both configuration slots: an
// entry is a prefix for every service (allowAny) or for one, and its value
// says which slots' configurations have it (bit 1<<slot). The program reads
// only the key; the bits are for the writers, so that an entry of the
// configuration a safe-mode change may fall back to stays while it may, and
// goes once no slot that can come back has it (Tidy).

// allowAny is the service of an entry for every service (KG_ALLOW_ANY).
const allowAny = 0xff

// allowEntry is one entry of the trie: a prefix, for a service's index or
// allowAny.
type allowEntry struct {
	service int
	prefix  netip.Prefix
}

// allowKey is the LPM-trie key of e: the service's byte, then the address;
// IPv4 prefixes are stored v4-mapped.
func allowKey(e allowEntry) bpf.KnockgateAllowKey {
	p := e.prefix.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return bpf.KnockgateAllowKey{Prefixlen: uint32(8 + bits), Service: uint8(e.service), Addr: p.Addr().As16()}
}

// entryOf is the inverse of allowKey.
func entryOf(k *bpf.KnockgateAllowKey) allowEntry {
	addr := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen) - 8
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return allowEntry{service: int(k.Service), prefix: netip.PrefixFrom(addr, bits)}
}

// allowEntries reads the whole trie: each entry and its slot bits.
func (s *Set) allowEntries() (map[allowEntry]uint8, error) {
	out := map[allowEntry]uint8{}
	var key bpf.KnockgateAllowKey
	var bits uint8
	it := s.Allow.Iterate()
	for it.Next(&key, &bits) {
		out[entryOf(&key)] = bits
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate allow list: %w", err)
	}
	return out, nil
}

// wantedAllow are the entries c's policy asks for, services at c.Index.
func wantedAllow(c *Config) []allowEntry {
	var out []allowEntry
	for _, p := range uniqueCIDRs(c.Policy.Allow) {
		out = append(out, allowEntry{allowAny, p})
	}
	for _, svc := range c.Policy.Services {
		for _, p := range uniqueCIDRs(svc.Allow) {
			out = append(out, allowEntry{c.Index[svc.Name], p})
		}
	}
	return out
}

// writeAllow makes the trie's entries for slot exactly c's: its bit set on
// c's entries (made if missing) and, unless addOnly, cleared on the rest
// (which go when no bit is left). Called before slot is written: entries
// are taken off only a slot about to be overwritten, which the program is
// not reading.
func (s *Set) writeAllow(slot uint32, c *Config, addOnly bool) error {
	have, err := s.allowEntries()
	if err != nil {
		return err
	}
	bit := uint8(1) << slot
	want := wantedAllow(c)
	for _, e := range want {
		if have[e]&bit != 0 {
			continue
		}
		if err := s.Allow.Update(allowKey(e), have[e]|bit, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("allow %s: %w", e.prefix, err)
		}
	}
	for e, bits := range have {
		if addOnly || bits&bit == 0 || slices.Contains(want, e) {
			continue
		}
		if err := s.setAllowBits(e, bits&^bit); err != nil {
			return err
		}
	}
	return nil
}

// setAllowBits rewrites e's slot bits, deleting it when none is left.
func (s *Set) setAllowBits(e allowEntry, bits uint8) error {
	if bits == 0 {
		if err := s.Allow.Delete(allowKey(e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s from the allow list: %w", e.prefix, err)
		}
		return nil
	}
	if err := s.Allow.Update(allowKey(e), bits, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("allow %s: %w", e.prefix, err)
	}
	return nil
}

// allowOf fills c's allow lists from the trie's entries of slot.
func (s *Set) allowOf(slot uint32, c *Config) error {
	have, err := s.allowEntries()
	if err != nil {
		return err
	}
	byIndex := map[int]int{} // service index -> position in c.Policy.Services
	for i, svc := range c.Policy.Services {
		byIndex[c.Index[svc.Name]] = i
	}
	for e, bits := range have {
		if bits&(1<<slot) == 0 {
			continue
		}
		if e.service == allowAny {
			c.Policy.Allow = append(c.Policy.Allow, e.prefix)
		} else if i, ok := byIndex[e.service]; ok {
			c.Policy.Services[i].Allow = append(c.Policy.Services[i].Allow, e.prefix)
		}
	}
	c.Policy.Allow = policy.SortCIDRs(c.Policy.Allow)
	for i := range c.Policy.Services {
		c.Policy.Services[i].Allow = policy.SortCIDRs(c.Policy.Services[i].Allow)
	}
	return nil
}
