package maps

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// The program judges an SPA timestamp against Unix time, which BPF can only
// read as CLOCK_TAI (bpf_ktime_get_tai_ns): TAI follows every step of the
// system clock (NTP, date -s) at once, and differs from Unix time by the
// kernel's TAI offset, which each configuration write records. The offset
// changes only at a leap second or when a time daemon sets it (chrony with
// leapsectz, ntpd), which TAIOffsetChanged tells.

// TAIOffset is the kernel's TAI offset (adjtimex): CLOCK_TAI less
// CLOCK_REALTIME.
func TAIOffset() (time.Duration, error) {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return 0, fmt.Errorf("read the kernel's TAI offset (adjtimex): %w", err)
	}
	return time.Duration(tx.Tai) * time.Second, nil
}

// TAINow is CLOCK_TAI in nanoseconds, the clock the program reads.
func TAINow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		panic("clock_gettime(CLOCK_TAI): " + err.Error())
	}
	return ts.Nano()
}

// GateUnixTime is the Unix time the program judges SPA timestamps by, under
// configuration c.
func GateUnixTime(c *Config) time.Time {
	return time.Unix(0, TAINow()-int64(c.TAIOffset))
}

// SPAKey is a key in the gate with its replay state.
type SPAKey struct {
	spa.Key
	// LastAccepted is the timestamp of the newest packet accepted under the
	// key (zero: none yet); only newer ones are accepted.
	LastAccepted time.Time
	// Opens are the services the key opens now, by name: its scope as the
	// gate holds it, none when every service it named has gone (Key.Services
	// cannot say that: empty there means default).
	Opens []string
}

// encodeKey is k in the C layout, opening the services in scope (bit i:
// the service at index i).
func encodeKey(k *spa.Key, scope uint32) bpf.KnockgateSpaKey {
	raw := bpf.KnockgateSpaKey{OpenNs: uint64(k.Open), Services: scope}
	raw.K[0] = binary.LittleEndian.Uint64(k.Secret[:8])
	raw.K[1] = binary.LittleEndian.Uint64(k.Secret[8:])
	if k.AnyAddress {
		raw.Flags |= uint32(bpf.KnockgateSpaKeyFlagSPA_KEY_ANY_ADDRESS)
	}
	copy(raw.Name[:spa.NameLen], k.Name)
	return raw
}

// decodeKey is the inverse of encodeKey, its services named by names (by
// index); a key of default alone reads back without services, as its line
// in a key file would be.
func decodeKey(id uint32, raw *bpf.KnockgateSpaKey, names map[int]string) spa.Key {
	k := spa.Key{ID: id, Open: time.Duration(raw.OpenNs),
		AnyAddress: raw.Flags&uint32(bpf.KnockgateSpaKeyFlagSPA_KEY_ANY_ADDRESS) != 0}
	if raw.Services != 1 {
		for i := range MaxServices {
			if name, ok := names[i]; ok && raw.Services&(1<<i) != 0 {
				k.Services = append(k.Services, name)
			}
		}
	}
	binary.LittleEndian.PutUint64(k.Secret[:8], raw.K[0])
	binary.LittleEndian.PutUint64(k.Secret[8:], raw.K[1])
	k.Name = string(bytes.TrimRight(raw.Name[:], "\x00"))
	return k
}

// SetSPAKeys makes the gate's keys exactly keys, live: keys not in the list
// are removed first (they stop working at once, and their room is free for
// the new ones, so a full change never runs out of it), then new keys and
// changed ones are written. A key's replay state (its newest accepted
// timestamp) is made before the key and kept while the key stays, whatever
// else of it changes, so a rewrite never reopens a replay; it goes with the
// key.
func (s *Set) SetSPAKeys(keys []spa.Key) error {
	if len(keys) > spa.MaxKeys {
		return fmt.Errorf("%d SPA keys, at most %d", len(keys), spa.MaxKeys)
	}
	want := map[uint32]bool{}
	for i := range keys {
		if want[keys[i].ID] {
			return fmt.Errorf("SPA key id %d given twice", keys[i].ID)
		}
		want[keys[i].ID] = true
	}
	cfg, err := s.ReadConfig()
	if err != nil {
		return err
	}
	scopes := make([]uint32, len(keys))
	for i := range keys {
		if scopes[i], err = cfg.scope(&keys[i]); err != nil {
			return err
		}
	}
	// The key before its replay state: a packet never finds a key without.
	for _, m := range []*ebpf.Map{s.SPAKeys, s.SPALast} {
		var stale []uint32
		var prev any // nil: from the first key
		for {
			var id uint32
			err := m.NextKey(prev, &id)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			if err != nil {
				return fmt.Errorf("list SPA keys: %w", err)
			}
			if !want[id] {
				stale = append(stale, id)
			}
			prev = &id
		}
		for _, id := range stale {
			if err := m.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("remove SPA key %d: %w", id, err)
			}
			KillPoint()
		}
	}
	for i := range keys {
		k := &keys[i]
		if err := s.SPALast.Update(k.ID, uint64(0), ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("write replay state of SPA key %d: %w", k.ID, err)
		}
		raw := encodeKey(k, scopes[i])
		KillPoint()
		if err := s.SPAKeys.Update(k.ID, &raw, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write SPA key %d: %w", k.ID, err)
		}
		KillPoint()
	}
	return nil
}

// scope is the mask of the services k may open, under c's indices; a
// service c does not have is an error naming the key.
func (c *Config) scope(k *spa.Key) (uint32, error) {
	var mask uint32
	for _, name := range k.Scope() {
		i, ok := c.Index[name]
		if !ok && name == policy.DefaultService {
			i, ok = 0, true // a gate not yet configured: default is 0
		}
		if !ok {
			return 0, fmt.Errorf("SPA key %s (id %d): service %s: %w", k.Name, k.ID, name, ErrNoService)
		}
		mask |= 1 << i
	}
	return mask, nil
}

// narrowKeys takes from every key's scope the services not in keep (bit i:
// the service at index i).
func (s *Set) narrowKeys(keep uint32) error {
	var id uint32
	var raw bpf.KnockgateSpaKey
	var narrowed []uint32
	it := s.SPAKeys.Iterate()
	for it.Next(&id, &raw) {
		if raw.Services&^keep != 0 {
			narrowed = append(narrowed, id)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list SPA keys: %w", err)
	}
	for _, id := range narrowed {
		if err := s.SPAKeys.Lookup(id, &raw); errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("read SPA key %d: %w", id, err)
		}
		raw.Services &= keep
		if err := s.SPAKeys.Update(id, &raw, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("write SPA key %d: %w", id, err)
		}
	}
	return nil
}

// ReadSPAKeys lists the gate's keys by id, with their replay state.
func (s *Set) ReadSPAKeys() ([]SPAKey, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, err
	}
	names := cfg.names()
	var out []SPAKey
	var id uint32
	var raw bpf.KnockgateSpaKey
	it := s.SPAKeys.Iterate()
	for it.Next(&id, &raw) {
		k := SPAKey{Key: decodeKey(id, &raw, names), Opens: []string{}}
		for i := range MaxServices {
			if name, ok := names[i]; ok && raw.Services&(1<<i) != 0 {
				k.Opens = append(k.Opens, name)
			}
		}
		var last uint64
		if err := s.SPALast.Lookup(id, &last); err == nil && last != 0 {
			k.LastAccepted = time.UnixMilli(int64(last))
		}
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list SPA keys: %w", err)
	}
	slices.SortFunc(out, func(a, b SPAKey) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// AdvanceReplay moves key id's replay state (its newest accepted timestamp,
// Unix ms) forward to ms, never back: a compare-and-swap loop on the value
// in place (see raiser), as the program's own acceptance is (bpf/spa.h), so
// an acceptance racing it is never undone. It reports whether it moved the
// state; a key the gate does not have is left alone.
func (s *Set) AdvanceReplay(id uint32, ms uint64) (bool, error) {
	return s.advanceReplay(id, ms, nil)
}

// advanceReplay is AdvanceReplay with a hook that tests call between the
// read of the current value and the compare-and-swap.
func (s *Set) advanceReplay(id uint32, ms uint64, between func()) (bool, error) {
	r, err := newRaiser(s.SPALast, false)
	if err != nil {
		return false, err
	}
	defer r.Close()
	moved, _, err := r.raise(binary.NativeEndian.AppendUint32(nil, id), ms, between)
	if err != nil {
		return false, fmt.Errorf("replay state of SPA key %d: %w", id, err)
	}
	return moved, nil
}
