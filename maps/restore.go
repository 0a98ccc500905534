package maps

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// RestoreConfigs writes both configuration slots whole, and which one is
// live, into a set whose program does not run yet: for the loader's
// upgrade of a gate the previous release pinned (loader/migrate.go), whose
// configurations keep what WriteConfig would renew — their generations
// (knock progress made under them stays valid), slot key (every source
// keeps its knock and flow slots), TAI offset and safe-mode deadline. Each
// slot given is encoded with its services at its Index, its allow entries
// written under its AllowEpoch (the two slots' must differ); a nil slot is
// left as it is (a slot never
// written is all zeros, and stays so). Writing the same again changes
// nothing, so an upgrade cut short may start over.
func (s *Set) RestoreConfigs(slots [2]*Config, live uint32) error {
	for i, c := range slots {
		if c == nil {
			continue
		}
		raw, err := c.encode()
		if err != nil {
			return fmt.Errorf("configuration slot %d: %w", i, err)
		}
		if err := s.writeAllow(c.AllowEpoch, c); err != nil {
			return err
		}
		KillPoint()
		if err := s.Configs.Update(uint32(i), raw, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write config slot %d: %w", i, err)
		}
		KillPoint()
	}
	if err := s.ConfigSlot.Update(uint32(0), live&1, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write config slot index: %w", err)
	}
	return nil
}

// SyncRCU waits until no program can still be running a packet it started
// before the call (see flip): after a link's program is replaced, the old
// one is done once this returns.
func (s *Set) SyncRCU() { s.syncRCU() }
