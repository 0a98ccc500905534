package loader

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/loader/legacy"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// The state of a gate the previous release pinned, read with its layout
// (loader/legacy) and written with this build's: see migrate.go for what
// becomes of each map.

// copyConfigs writes both configuration slots of old, and which is live,
// into set: each as the policy it was, its one service default.
func copyConfigs(old previousGate, set *maps.Set) error {
	var live uint32
	if err := old[legacy.KnockgateMapConfigSlot].Lookup(uint32(0), &live); err != nil {
		return fmt.Errorf("read the previous release's config slot: %w", err)
	}
	allow, err := previousAllow(old[legacy.KnockgateMapAllow])
	if err != nil {
		return err
	}
	var slots [2]*maps.Config
	for i := range slots {
		var raw legacy.KnockgateConfig
		if err := old[legacy.KnockgateMapConfigs].Lookup(uint32(i), &raw); err != nil {
			return fmt.Errorf("read the previous release's config slot %d: %w", i, err)
		}
		if raw == (legacy.KnockgateConfig{}) {
			continue // never written
		}
		c := previousConfig(&raw, allow)
		c.AllowEpoch = uint8(i + 1) // an epoch of its own for each slot
		slots[i] = &c
	}
	return set.RestoreConfigs(slots, live&1)
}

// previousConfig is the configuration raw (of the previous release's
// layout) as this build's: the policy whose one service, default, has its
// sequence, windows and protected ports. The previous release's allow list
// was one for both slots, consulted by a slot whose allow_count was not 0:
// so that slot's allow list is allow, for every service, and the other's
// none.
func previousConfig(raw *legacy.KnockgateConfig, allow []netip.Prefix) maps.Config {
	svc := policy.Service{
		Name:        policy.DefaultService,
		StepTimeout: time.Duration(raw.StepTimeoutNs),
		Open:        time.Duration(raw.OpenNs),
		ProtectAll:  raw.Flags&uint8(legacy.KnockgateConfigFlagCONFIG_PROTECT_ALL) != 0,
	}
	for i := 0; i < int(raw.Nsteps) && i < len(raw.Steps); i++ {
		svc.Sequence = append(svc.Sequence, policy.Port{Num: raw.Steps[i].Port, Proto: policy.Proto(raw.Steps[i].Proto)})
	}
	if !svc.ProtectAll {
		for _, set := range []struct {
			bits  *[1024]uint64
			proto policy.Proto
		}{{&raw.ProtectedTcp, policy.TCP}, {&raw.ProtectedUdp, policy.UDP}} {
			for w, word := range set.bits {
				for b := 0; word != 0 && b < 64; b++ {
					if word&(1<<b) != 0 {
						svc.Protect = append(svc.Protect, policy.Port{Num: uint16(w*64 + b), Proto: set.proto})
					}
				}
			}
		}
	}
	p := policy.Policy{
		Services:    []policy.Service{svc},
		Flows:       raw.Flags&uint8(legacy.KnockgateConfigFlagCONFIG_FLOWS) != 0,
		FlowIdleTCP: time.Duration(raw.FlowIdleTcpNs),
		FlowIdleUDP: time.Duration(raw.FlowIdleUdpNs),
		SPAPort:     raw.SpaPort,
		SPAWindow:   time.Duration(raw.SpaWindowMs) * time.Millisecond,
	}
	if raw.AllowCount > 0 {
		p.Allow = append([]netip.Prefix(nil), allow...)
	}
	return maps.Config{
		Policy:     p,
		TAIOffset:  time.Duration(raw.TaiOffsetNs),
		ConfirmBy:  raw.ConfirmByNs,
		Generation: raw.Generation,
		SlotKey:    raw.SlotKey,
		Index:      map[string]int{policy.DefaultService: 0},
	}
}

// previousAllow reads the previous release's allow trie: prefixes, IPv4
// stored v4-mapped (96 bits more).
func previousAllow(m *ebpf.Map) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var key legacy.KnockgateAllowKey
	var v uint8
	it := m.Iterate()
	for it.Next(&key, &v) {
		addr, bits := netip.AddrFrom16(key.Addr), int(key.Prefixlen)
		if addr.Is4In6() && bits >= 96 {
			addr, bits = addr.Unmap(), bits-96
		}
		out = append(out, netip.PrefixFrom(addr, bits))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the previous release's allow list: %w", err)
	}
	return policy.SortCIDRs(out), nil
}

// copyKeys writes old's SPA keys into set, each opening the service
// default; their replay state is the shared spa_last, kept as it is.
func copyKeys(old previousGate, set *maps.Set) error {
	var id uint32
	var k legacy.KnockgateSpaKey
	var keys []uint32
	var raws []bpf.KnockgateSpaKey
	it := old[legacy.KnockgateMapSpaKeys].Iterate()
	for it.Next(&id, &k) {
		keys = append(keys, id)
		raws = append(raws, bpf.KnockgateSpaKey{K: k.K, OpenNs: k.OpenNs, Flags: k.Flags, Services: 1 << 0, Name: k.Name})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the previous release's SPA keys: %w", err)
	}
	for i, id := range keys {
		if err := set.SPAKeys.Update(id, &raws[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write SPA key %d: %w", id, err)
		}
	}
	return nil
}

// copyGrants grants each address old has a grant for the service default in
// set, until the same instant, unless set has a grant of default for it
// that lasts as long already: so copying twice is copying once, and a grant
// the new program made or extended is kept. Grants that expired and were
// reported as such (which the program ignores, and status does not show)
// are left behind. maps.Set.Grant sets each one's hint bits, as the
// program does.
func copyGrants(old previousGate, set *maps.Set) error {
	now := maps.BootNow()
	type grant struct {
		addr    netip.Addr
		expires uint64
	}
	var grants []grant
	var key legacy.KnockgateSource
	var g legacy.KnockgateGrant
	it := old[legacy.KnockgateMapGrants].Iterate()
	for it.Next(&key, &g) {
		if g.ExpiryReported != 0 && g.ExpiresNs <= now {
			continue
		}
		grants = append(grants, grant{maps.AddrOf(key.Addr), g.ExpiresNs})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the previous release's grants: %w", err)
	}
	for _, g := range grants {
		cur, ok, err := set.LookupGrant(g.addr, policy.DefaultService)
		if err != nil {
			return err
		}
		if ok && cur.ExpiresNs >= g.expires {
			continue
		}
		if err := set.Grant(g.addr, policy.DefaultService, g.expires); err != nil {
			return err
		}
	}
	return nil
}

// counterOf is this build's counter of each of the previous release's, by
// name: COUNTER_SPA_BAD_SERVICE was inserted before COUNTER_SPA_REPLAY.
var counterOf = [...]bpf.KnockgateCounter{
	legacy.KnockgateCounterCOUNTER_KNOCK_ADVANCED:      bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED,
	legacy.KnockgateCounterCOUNTER_KNOCK_REPEATED:      bpf.KnockgateCounterCOUNTER_KNOCK_REPEATED,
	legacy.KnockgateCounterCOUNTER_KNOCK_RESET:         bpf.KnockgateCounterCOUNTER_KNOCK_RESET,
	legacy.KnockgateCounterCOUNTER_KNOCK_WHILE_GRANTED: bpf.KnockgateCounterCOUNTER_KNOCK_WHILE_GRANTED,
	legacy.KnockgateCounterCOUNTER_GRANTED:             bpf.KnockgateCounterCOUNTER_GRANTED,
	legacy.KnockgateCounterCOUNTER_GRANT_EXPIRED:       bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED,
	legacy.KnockgateCounterCOUNTER_GRANT_FAILED:        bpf.KnockgateCounterCOUNTER_GRANT_FAILED,
	legacy.KnockgateCounterCOUNTER_EVENTS_LOST:         bpf.KnockgateCounterCOUNTER_EVENTS_LOST,
	legacy.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED:   bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED,
	legacy.KnockgateCounterCOUNTER_FLOWS_LEARNED:       bpf.KnockgateCounterCOUNTER_FLOWS_LEARNED,
	legacy.KnockgateCounterCOUNTER_FLOWS_FULL:          bpf.KnockgateCounterCOUNTER_FLOWS_FULL,
	legacy.KnockgateCounterCOUNTER_FLOWS_ENDED:         bpf.KnockgateCounterCOUNTER_FLOWS_ENDED,
	legacy.KnockgateCounterCOUNTER_SPA_ACCEPTED:        bpf.KnockgateCounterCOUNTER_SPA_ACCEPTED,
	legacy.KnockgateCounterCOUNTER_SPA_BAD_LENGTH:      bpf.KnockgateCounterCOUNTER_SPA_BAD_LENGTH,
	legacy.KnockgateCounterCOUNTER_SPA_BAD_VERSION:     bpf.KnockgateCounterCOUNTER_SPA_BAD_VERSION,
	legacy.KnockgateCounterCOUNTER_SPA_UNKNOWN_KEY:     bpf.KnockgateCounterCOUNTER_SPA_UNKNOWN_KEY,
	legacy.KnockgateCounterCOUNTER_SPA_BAD_TAG:         bpf.KnockgateCounterCOUNTER_SPA_BAD_TAG,
	legacy.KnockgateCounterCOUNTER_SPA_CLOCK:           bpf.KnockgateCounterCOUNTER_SPA_CLOCK,
	legacy.KnockgateCounterCOUNTER_SPA_BAD_ADDRESS:     bpf.KnockgateCounterCOUNTER_SPA_BAD_ADDRESS,
	legacy.KnockgateCounterCOUNTER_SPA_REPLAY:          bpf.KnockgateCounterCOUNTER_SPA_REPLAY,
}

// Every counter of the previous release has its entry.
var _ [0]struct{} = [len(counterOf) - int(legacy.KnockgateCounterCOUNTER_MAX)]struct{}{}

// copyCounters copies old's counters into set's, CPU by CPU, each to the
// counter of its name; the service default's counters start from the
// gate's (one service then: every grant made and expired was default's).
// (The verdicts are shared.)
func copyCounters(old previousGate, set *maps.Set) error {
	perCPU := make([][]uint64, len(counterOf))
	for i, to := range counterOf {
		if err := old[legacy.KnockgateMapCounters].Lookup(uint32(i), &perCPU[i]); err != nil {
			return fmt.Errorf("read the previous release's counter %d: %w", i, err)
		}
		if err := set.Counters.Update(uint32(to), perCPU[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write counter %d: %w", to, err)
		}
	}
	per := uint32(bpf.KnockgateServiceCounterSERVICE_COUNTER_MAX)
	for _, c := range []struct {
		from legacy.KnockgateCounter
		to   bpf.KnockgateServiceCounter
	}{
		{legacy.KnockgateCounterCOUNTER_GRANTED, bpf.KnockgateServiceCounterSERVICE_GRANTED},
		{legacy.KnockgateCounterCOUNTER_GRANT_EXPIRED, bpf.KnockgateServiceCounterSERVICE_GRANT_EXPIRED},
	} {
		key := 0*per + uint32(c.to) // default is service 0
		if err := set.ServiceCounters.Update(key, perCPU[c.from], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write the service counters of default: %w", err)
		}
	}
	return nil
}
