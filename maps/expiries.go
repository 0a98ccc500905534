package maps

import (
	"fmt"
	"net/netip"

	"github.com/knockgate/knockgate/bpf"
)

// GrantID names one grant: its source address and its service, by name (a
// service's index is this gate's own; its name is what others know).
type GrantID struct {
	Addr    netip.Addr
	Service string
}

// GrantExpiries reads every grant of a service of the configuration in
// force, live or not, by address and service name: its expiry (a
// CLOCK_BOOTTIME stamp). Grants of an index that configuration gives no
// service (one removed, not yet tidied away) are left out. It returns that
// configuration too, so a caller knows the services the grants are of.
func (s *Set) GrantExpiries() (map[GrantID]uint64, Config, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, Config{}, err
	}
	names := cfg.names()
	out := map[GrantID]uint64{}
	var key bpf.KnockgateGrantKey
	var g bpf.KnockgateGrant
	it := s.Grants.Iterate()
	for it.Next(&key, &g) {
		if name, ok := names[int(key.Service)]; ok {
			out[GrantID{AddrOf(key.Addr), name}] = g.ExpiresNs
		}
	}
	if err := it.Err(); err != nil {
		return nil, Config{}, fmt.Errorf("iterate grants: %w", err)
	}
	return out, cfg, nil
}

// ReplayState is every SPA key's replay state by key id: its newest
// accepted timestamp (Unix ms; 0 none yet).
func (s *Set) ReplayState() (map[uint32]uint64, error) {
	out := map[uint32]uint64{}
	var id uint32
	var ms uint64
	it := s.SPALast.Iterate()
	for it.Next(&id, &ms) {
		out[id] = ms
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate SPA replay state: %w", err)
	}
	return out, nil
}
