package loader_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
	"github.com/knockgate/knockgate/test/netns"
)

// What the fleet reads, through the gate: grants by address and service
// name with the services they are of, read as one (a service removed takes
// its grants out of the answer with its name), SPA replay state by key
// id, and the grant map's id.
func TestFleetReads(t *testing.T) {
	netns.Require(t, "ip")
	h := newHost(t, "f")
	h.veth("kglf0")
	h.do("kglf0", func() error {
		cfg := config()
		cfg.Policy.Services = append(cfg.Policy.Services, policy.Service{Name: "web", Open: time.Minute,
			StepTimeout: time.Minute, Sequence: []policy.Port{{Num: 7000, Proto: policy.TCP}, {Num: 7100, Proto: policy.TCP}},
			Protect: []policy.Port{{Num: 443, Proto: policy.TCP}}})
		g, err := loader.Create(loader.Options{Interfaces: []string{"kglf0"}, Config: cfg, MaxSources: 128,
			SPAKeys: []spa.Key{{ID: 7, Name: "laptop"}}})
		if err != nil {
			return err
		}
		defer g.Close()
		a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2")
		for _, gr := range []maps.GrantID{{Addr: a, Service: "default"}, {Addr: a, Service: "web"}, {Addr: b, Service: "web"}} {
			if err := g.Grant(gr.Addr, gr.Service, maps.BootAfter(time.Minute)); err != nil {
				return err
			}
		}
		exps, services, err := g.GrantExpiries()
		if err != nil {
			return err
		}
		if len(exps) != 3 || !slices.Equal(services, []string{"default", "web"}) {
			t.Errorf("grants %v of services %v, want 3 of default and web", exps, services)
		}
		for id, exp := range exps {
			if d := time.Until(exp); d < 50*time.Second || d > time.Minute+time.Second {
				t.Errorf("%v expires in %s, want about a minute", id, d)
			}
		}
		if _, err := g.UpdateConfig(func(c *maps.Config) error {
			c.Policy.Services = c.Policy.Services[:1]
			return nil
		}); err != nil {
			return err
		}
		exps, services, err = g.GrantExpiries()
		if _, ok := exps[maps.GrantID{Addr: a, Service: "default"}]; err != nil || len(exps) != 1 || !ok ||
			!slices.Equal(services, []string{"default"}) {
			t.Errorf("with web removed: grants %v of services %v (%v), want default's of %s alone", exps, services, err, a)
		}

		if _, err := g.AdvanceReplay(7, 1_800_000_000_000); err != nil {
			return err
		}
		replay, err := g.ReplayState()
		if err != nil || len(replay) != 1 || replay[7] != 1_800_000_000_000 {
			t.Errorf("replay state %v, %v; want key 7's timestamp", replay, err)
		}
		id, err := g.GrantMapID()
		if err != nil || id == 0 {
			return fmt.Errorf("grant map id %d: %w", id, err)
		}
		return nil
	})
}
