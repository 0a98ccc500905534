package loader

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// The gate's maps as commands and the service read them: each read holds
// the gate's lock shared, so it sees no configuration write, allow-list
// change or key change half-made.

// read runs f under the gate's lock, shared.
func (g *Gate) read(f func() error) error {
	unlock, err := g.rlock()
	if err != nil {
		return err
	}
	defer unlock()
	return f()
}

// readValue runs f under the gate's lock, shared, and returns its result.
func readValue[T any](g *Gate, f func() (T, error)) (v T, err error) {
	err = g.read(func() error {
		v, err = f()
		return err
	})
	return v, err
}

// Config is the configuration in force (maps.Set.ReadConfig).
func (g *Gate) Config() (maps.Config, error) { return readValue(g, g.Maps.ReadConfig) }

// Policy is the policy in force, its allow lists included.
func (g *Gate) Policy() (policy.Policy, error) {
	cfg, err := g.Config()
	return cfg.Policy, err
}

// SafeMode reports the safe-mode change in force, if any
// (maps.Set.ReadSafeMode).
func (g *Gate) SafeMode() (maps.SafeMode, error) { return readValue(g, g.Maps.ReadSafeMode) }

// Counters are the program's counters, summed (maps.Set.ReadCounters).
func (g *Gate) Counters() (maps.Counters, error) { return readValue(g, g.Maps.ReadCounters) }

// Verdicts are the verdict counters of every interface slot
// (maps.Set.ReadVerdicts).
func (g *Gate) Verdicts() ([maps.IfaceSlots]maps.VerdictCounts, error) {
	return readValue(g, g.Maps.ReadVerdicts)
}

// Sources are the granted and knocking sources (maps.Set.Sources).
func (g *Gate) Sources() ([]maps.SourceState, error) { return readValue(g, g.Maps.Sources) }

// Flows are the flow table's flows, live or not (maps.Set.Flows).
func (g *Gate) Flows() ([]maps.Flow, error) { return readValue(g, g.Maps.Flows) }

// SPAKeys are the gate's SPA keys with their replay state
// (maps.Set.ReadSPAKeys).
func (g *Gate) SPAKeys() ([]maps.SPAKey, error) { return readValue(g, g.Maps.ReadSPAKeys) }

// LookupGrant is addr's grant entry of service, live or not
// (maps.Set.LookupGrant).
func (g *Gate) LookupGrant(addr netip.Addr, service string) (gr bpf.KnockgateGrant, ok bool, err error) {
	err = g.read(func() error {
		gr, ok, err = g.Maps.LookupGrant(addr, service)
		return err
	})
	return gr, ok, err
}

// GrantExpiries are the gate's grants, live or not, by address and service
// name, with their expiries as wall-clock times, and the names of the
// services of the configuration in force that named them, read as one
// (maps.Set.GrantExpiries): a grant of a service not listed is none of
// this gate's. The fleet shares them.
func (g *Gate) GrantExpiries() (expiries map[maps.GrantID]time.Time, services []string, err error) {
	err = g.read(func() error {
		raw, cfg, err := g.Maps.GrantExpiries()
		if err != nil {
			return err
		}
		expiries = make(map[maps.GrantID]time.Time, len(raw))
		for id, ns := range raw {
			expiries[id] = maps.BootToTime(ns)
		}
		for _, s := range cfg.Policy.Services {
			services = append(services, s.Name)
		}
		return nil
	})
	return expiries, services, err
}

// ReplayState is each SPA key's newest accepted timestamp (Unix ms) by key
// id (maps.Set.ReplayState). The fleet shares it.
func (g *Gate) ReplayState() (map[uint32]uint64, error) { return readValue(g, g.Maps.ReplayState) }

// GrantMapID is the kernel's id of the gate's grant map: it names the map
// as long as it lives (a gate made anew has another). It never changes for
// this handle, so no lock is needed.
func (g *Gate) GrantMapID() (ebpf.MapID, error) {
	info, err := g.Maps.Grants.Info()
	if err != nil {
		return 0, fmt.Errorf("gate %s: read the grant map's info: %w", g.Name, err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, fmt.Errorf("gate %s: the kernel gives no id of the grant map", g.Name)
	}
	return id, nil
}

// ServiceCounters are each service's counters, by name
// (maps.Set.ReadServiceCounters).
func (g *Gate) ServiceCounters() (map[string]maps.ServiceCounters, error) {
	return readValue(g, g.Maps.ReadServiceCounters)
}

// OpenEvents starts reading the gate's events (maps.Set.OpenEvents).
func (g *Gate) OpenEvents() (*maps.EventReader, error) { return readValue(g, g.Maps.OpenEvents) }

// Sizes are the gate's sizes as its maps were made: MaxSources its grant
// entries, MaxFlows its flow table's slots (FlowSlots of what was asked).
// They never change, so no lock is needed to read them.
func (g *Gate) Sizes() Sizes {
	return Sizes{MaxSources: g.Maps.Grants.MaxEntries(), MaxFlows: g.Maps.FlowTable.MaxEntries()}
}
