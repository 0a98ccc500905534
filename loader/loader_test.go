package loader_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
)

func config() maps.Config {
	return maps.Config{
		Sequence:    []maps.Port{{Num: 9000, Proto: maps.TCP}, {Num: 8000, Proto: maps.TCP}},
		StepTimeout: time.Minute,
		Open:        time.Minute,
		Protected:   []maps.Port{{Num: 22, Proto: maps.TCP}},
	}
}

// inNamespace gives the test a veth end named iface inside a namespace of
// its own, and runs fn there (the loader resolves interfaces in the calling
// thread's namespace; pins go to the host's bpffs all the same).
func inNamespace(t *testing.T, iface string, fn func() error) {
	t.Helper()
	a := netns.NewT(t, "kgl-a-"+iface)
	b := netns.NewT(t, "kgl-b-"+iface)
	if err := netns.Veth(a, iface, b, iface+"p"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Do(func() error { return loader.Detach(iface) }) })
	if err := a.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func TestAttachPinsAndDetachRemoves(t *testing.T) {
	netns.Require(t, "ip")
	const iface = "kgl0"
	inNamespace(t, iface, func() error {
		g, err := loader.Attach(loader.Options{Iface: iface, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		for _, name := range append(maps.PinNames(), "link") {
			if _, err := os.Stat(filepath.Join(loader.PinDir(iface), name)); err != nil {
				t.Errorf("pin %s: %v", name, err)
			}
		}
		// Attaching twice is refused and leaves the first gate as it was.
		if _, err := loader.Attach(loader.Options{Iface: iface, Config: config()}); !errors.Is(err, loader.ErrAttached) {
			t.Errorf("second attach: %v, want ErrAttached", err)
		}
		g, err = loader.Open(iface)
		if err != nil {
			return err
		}
		cfg, err := g.Maps.ReadConfig()
		g.Close()
		if err != nil {
			return err
		}
		if cfg.Generation != 1 || cfg.Mode != maps.ModeNative {
			t.Errorf("reopened config %+v, want generation 1, native", cfg)
		}
		if err := loader.Detach(iface); err != nil {
			return err
		}
		if _, err := os.Stat(loader.PinDir(iface)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pins left after detach: %v", err)
		}
		if _, err := loader.Open(iface); !errors.Is(err, loader.ErrNotAttached) {
			t.Errorf("open after detach: %v, want ErrNotAttached", err)
		}
		return nil
	})
}

func TestFailedAttachLeavesNothing(t *testing.T) {
	netns.Require(t, "ip")
	const iface = "kgl1"
	inNamespace(t, iface, func() error {
		bad := config()
		bad.Sequence = nil
		cases := map[string]loader.Options{
			"unknown interface": {Iface: "kgl-none", Config: config()},
			"bad config":        {Iface: iface, Config: bad},
			"too many sources":  {Iface: iface, Config: config(), MaxSources: loader.MaxSourcesLimit + 1},
		}
		for what, opts := range cases {
			if _, err := loader.Attach(opts); err == nil {
				t.Errorf("%s: attach succeeded", what)
			}
			if _, err := os.Stat(loader.PinDir(opts.Iface)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: pins left behind: %v", what, err)
			}
		}
		return nil
	})
}

// A gate pinned by a build with another map layout must be refused, not
// misread.
func TestOpenRefusesIncompatiblePins(t *testing.T) {
	netns.Require(t, "ip")
	const iface = "kgl2"
	inNamespace(t, iface, func() error {
		g, err := loader.Attach(loader.Options{Iface: iface, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		// Replace the grants pin with a map of another value size.
		pin := filepath.Join(loader.PinDir(iface), "grants")
		if err := os.Remove(pin); err != nil {
			return err
		}
		other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: 24, MaxEntries: 4})
		if err != nil {
			return err
		}
		defer other.Close()
		if err := other.Pin(pin); err != nil {
			return err
		}
		if _, err := loader.Open(iface); !errors.Is(err, loader.ErrIncompatible) {
			t.Errorf("open with a foreign grants map: %v, want ErrIncompatible", err)
		}
		// A missing pin is an older layout too.
		if err := os.Remove(pin); err != nil {
			return err
		}
		if _, err := loader.Open(iface); !errors.Is(err, loader.ErrIncompatible) {
			t.Errorf("open with the grants pin missing: %v, want ErrIncompatible", err)
		}
		return nil
	})
}

// Concurrent changes to one gate must not undo each other: each of these
// adds one protected port, so every port must be there at the end. (Each
// write waits for RCU grace periods, so unlocked read-modify-writes would
// overlap and lose ports.)
func TestConcurrentUpdatesAllLand(t *testing.T) {
	netns.Require(t, "ip")
	const iface = "kgl3"
	inNamespace(t, iface, func() error {
		g, err := loader.Attach(loader.Options{Iface: iface, Config: config(), MaxSources: 128})
		if err != nil {
			return err
		}
		g.Close()
		const writers = 12
		errs := make(chan error, writers)
		for i := range writers {
			go func() {
				g, err := loader.Open(iface)
				if err != nil {
					errs <- err
					return
				}
				defer g.Close()
				_, err = g.UpdateConfig(func(c *maps.Config) error {
					c.Protected = append(c.Protected, maps.Port{Num: uint16(1000 + i), Proto: maps.TCP})
					return nil
				})
				errs <- err
			}()
		}
		for range writers {
			if err := <-errs; err != nil {
				return err
			}
		}
		g, err = loader.Open(iface)
		if err != nil {
			return err
		}
		defer g.Close()
		cfg, err := g.Maps.ReadConfig()
		if err != nil {
			return err
		}
		if len(cfg.Protected) != 1+writers || cfg.Generation != 1+writers {
			t.Errorf("after %d concurrent updates: protected %v, generation %d; want all %d ports, generation %d",
				writers, cfg.Protected, cfg.Generation, 1+writers, 1+writers)
		}
		return nil
	})
}
