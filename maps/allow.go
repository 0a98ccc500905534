package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
)

// The allow trie holds the allow lists of both configuration slots: an
// entry is a prefix for every service (allowAny) or for one, under the
// allow epoch of the configurations that have it (config.allow_epoch), and
// the program looks up only its configuration's epoch. So the configuration
// before a safe-mode change keeps its list while the change is in force,
// and gets it back the moment the program falls back to it, with no
// process; a copy of a configuration (a confirmation, a clock refresh)
// keeps its epoch and its list. A write fills a new epoch, and Tidy drops
// the epochs no slot that can come back uses.

// allowAny is the service of an entry for every service (KG_ALLOW_ANY).
const allowAny = 0xff

// allowEntry is one entry of the trie: a prefix, for a service's index or
// allowAny, under an epoch.
type allowEntry struct {
	epoch   uint8
	service int
	prefix  netip.Prefix
}

// allowKey is the LPM-trie key of e: the epoch's and the service's bytes,
// then the address; IPv4 prefixes are stored v4-mapped.
func allowKey(e allowEntry) bpf.KnockgateAllowKey {
	p := e.prefix.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return bpf.KnockgateAllowKey{Prefixlen: uint32(16 + bits), Epoch: e.epoch, Service: uint8(e.service), Addr: p.Addr().As16()}
}

// entryOf is the inverse of allowKey.
func entryOf(k *bpf.KnockgateAllowKey) allowEntry {
	addr := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen) - 16
	if addr.Is4In6() && bits >= 96 {
		addr, bits = addr.Unmap(), bits-96
	}
	return allowEntry{epoch: k.Epoch, service: int(k.Service), prefix: netip.PrefixFrom(addr, bits)}
}

// allowEntries reads the whole trie.
func (s *Set) allowEntries() ([]allowEntry, error) {
	var out []allowEntry
	var key bpf.KnockgateAllowKey
	var v uint8
	it := s.Allow.Iterate()
	for it.Next(&key, &v) {
		out = append(out, entryOf(&key))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate allow list: %w", err)
	}
	return out, nil
}

// dropAllow deletes the entries keep says no to.
func (s *Set) dropAllow(keep func(allowEntry) bool) error {
	have, err := s.allowEntries()
	if err != nil {
		return err
	}
	for _, e := range have {
		if keep(e) {
			continue
		}
		if err := s.Allow.Delete(allowKey(e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s from the allow list: %w", e.prefix, err)
		}
	}
	return nil
}

// writeAllow makes the trie's entries of epoch exactly c's allow lists
// (services at c.Index). Called before a configuration of that epoch is
// written, with an epoch no configuration the program may read has: what
// a killed write left under it goes first.
func (s *Set) writeAllow(epoch uint8, c *Config) error {
	if err := s.dropAllow(func(e allowEntry) bool { return e.epoch != epoch }); err != nil {
		return err
	}
	add := func(service int, p netip.Prefix) error {
		e := allowEntry{epoch: epoch, service: service, prefix: p}
		if err := s.Allow.Update(allowKey(e), uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("allow %s: %w", p, err)
		}
		return nil
	}
	for _, p := range uniqueCIDRs(c.Policy.Allow) {
		if err := add(allowAny, p); err != nil {
			return err
		}
	}
	for _, svc := range c.Policy.Services {
		for _, p := range uniqueCIDRs(svc.Allow) {
			if err := add(c.Index[svc.Name], p); err != nil {
				return err
			}
		}
	}
	return nil
}

// allowOf fills c's allow lists from the trie's entries of its epoch.
func (s *Set) allowOf(epoch uint8, c *Config) error {
	have, err := s.allowEntries()
	if err != nil {
		return err
	}
	byIndex := map[int]int{} // service index -> position in c.Policy.Services
	for i, svc := range c.Policy.Services {
		byIndex[c.Index[svc.Name]] = i
	}
	for _, e := range have {
		if e.epoch != epoch {
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
