package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
)

// FlowWays is how many slots a set of the flow table has (KG_FLOW_WAYS).
const FlowWays = 4

// Flow is one flow of the host's, as the flow table holds it.
type Flow struct {
	Local, Remote netip.AddrPort
	Proto         policy.Proto
	LastSeen      time.Time // the host's last packet of it
	Answered      bool      // an inbound packet of it was seen
	Closing       bool      // FIN both ways, or an RST from the peer
	Live          bool      // its replies pass now
}

// FlowKey is the table's key of a flow, as the host sees it.
func FlowKey(local, remote netip.AddrPort, proto policy.Proto) bpf.KnockgateFlowKey {
	return bpf.KnockgateFlowKey{
		Local: Key(local.Addr()).Addr, Remote: Key(remote.Addr()).Addr,
		LocalPort: local.Port(), RemotePort: remote.Port(), Proto: uint8(proto),
	}
}

// FlowPlace is the program's flow_place_of: the first slot of the set of the
// flow table (of slots slots) that may hold k, and the tag its byte of
// flow_tags carries meanwhile.
func FlowPlace(key [2]uint64, slots uint32, k bpf.KnockgateFlowKey) (base uint32, tag uint8) {
	a := binary.NativeEndian.Uint64(k.Remote[:8])
	b := binary.NativeEndian.Uint64(k.Remote[8:])
	c := uint64(k.LocalPort) | uint64(k.RemotePort)<<16 | uint64(k.Proto)<<32
	h := (a^key[0])*0x9e3779b97f4a7c15 + (b^key[1])*0xbf58476d1ce4e5b9 + (c^key[0])*0xd6e8feb86659fd93
	tag = uint8((h * 0x94d049bb133111eb) >> 56)
	if tag == 0 {
		tag = 1
	}
	return uint32(((h>>32)*uint64(slots/FlowWays))>>32) * FlowWays, tag
}

// flowLive is the program's flow_live.
func flowLive(cfg Config, f *bpf.KnockgateFlow, now uint64) bool {
	flags := f.Flags
	ttl := uint64(cfg.Policy.FlowIdleUDP)
	if policy.Proto(f.Key.Proto) == policy.TCP {
		switch {
		case flags&flowFinBoth == flowFinBoth || flags&uint64(bpf.KnockgateFlowFlagFLOW_RST_IN) != 0:
			ttl = uint64(10 * time.Second) // KG_FLOW_CLOSING_NS
		case flags&uint64(bpf.KnockgateFlowFlagFLOW_ANSWERED) == 0:
			ttl = uint64(60 * time.Second) // KG_FLOW_UNANSWERED_NS
		default:
			ttl = uint64(cfg.Policy.FlowIdleTCP)
		}
	}
	return now < f.LastNs+ttl
}

const flowFinBoth = uint64(bpf.KnockgateFlowFlagFLOW_FIN_OUT | bpf.KnockgateFlowFlagFLOW_FIN_IN)

// Flows lists the flow table's flows (each slot read under its lock), live
// or not.
func (s *Set) Flows() ([]Flow, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, err
	}
	n := int(s.FlowTable.MaxEntries())
	const batch = 4096
	keys := make([]uint32, batch)
	vals := make([]bpf.KnockgateFlow, batch)
	var cursor ebpf.MapBatchCursor
	now := FlowNow()
	var out []Flow
	for seen := 0; seen < n; {
		got, err := s.FlowTable.BatchLookup(&cursor, keys, vals, &ebpf.BatchOptions{ElemFlags: uint64(ebpf.LookupLock)})
		for _, f := range vals[:got] {
			if f.Key.Proto == 0 {
				continue
			}
			out = append(out, Flow{
				Local:    netip.AddrPortFrom(AddrOf(f.Key.Local), f.Key.LocalPort),
				Remote:   netip.AddrPortFrom(AddrOf(f.Key.Remote), f.Key.RemotePort),
				Proto:    policy.Proto(f.Key.Proto),
				LastSeen: FlowToTime(f.LastNs),
				Answered: f.Flags&uint64(bpf.KnockgateFlowFlagFLOW_ANSWERED) != 0,
				Closing:  f.Flags&flowFinBoth == flowFinBoth || f.Flags&uint64(bpf.KnockgateFlowFlagFLOW_RST_IN) != 0,
				Live:     flowLive(cfg, &f, now),
			})
		}
		seen += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read flow table: %w", err)
		}
	}
	return out, nil
}

// PutFlow records a flow of the host's as the egress program would have
// (seeding flows that began before the gate): in its slot if it has one,
// else a free or no-longer-live slot of its set. It reports false when the
// set holds only live flows.
func (s *Set) PutFlow(local, remote netip.AddrPort, proto policy.Proto, answered bool) (bool, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return false, err
	}
	key := FlowKey(local, remote, proto)
	base, tag := FlowPlace(cfg.SlotKey, s.FlowTable.MaxEntries(), key)
	now := FlowNow()
	way := -1
	for w := range FlowWays {
		var f bpf.KnockgateFlow
		if err := s.FlowTable.LookupWithFlags(base+uint32(w), &f, ebpf.LookupLock); err != nil {
			return false, fmt.Errorf("look up flow slot %d: %w", base+uint32(w), err)
		}
		if f.Key == key {
			way = w
			break
		}
		if way < 0 && (f.Key.Proto == 0 || !flowLive(cfg, &f, now)) {
			way = w
		}
	}
	if way < 0 {
		return false, nil
	}
	f := bpf.KnockgateFlow{Key: key, LastNs: now}
	if answered {
		f.Flags = uint64(bpf.KnockgateFlowFlagFLOW_ANSWERED)
	}
	idx := base + uint32(way)
	if err := s.FlowTable.Update(idx, &f, ebpf.UpdateLock); err != nil {
		return false, fmt.Errorf("write flow %s %s-%s: %w", proto, local, remote, err)
	}
	mem, err := unix.Mmap(s.FlowTags.FD(), 0, int(s.FlowTags.ValueSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return false, fmt.Errorf("map flow tags: %w", err)
	}
	defer unix.Munmap(mem)
	mem[idx] = tag
	return true, nil
}

// SetFlowIdle back-dates a flow's last packet from the host to ago before
// now (tests).
func (s *Set) SetFlowIdle(local, remote netip.AddrPort, proto policy.Proto, ago time.Duration) error {
	cfg, err := s.ReadConfig()
	if err != nil {
		return err
	}
	key := FlowKey(local, remote, proto)
	base, _ := FlowPlace(cfg.SlotKey, s.FlowTable.MaxEntries(), key)
	for w := range uint32(FlowWays) {
		var f bpf.KnockgateFlow
		if err := s.FlowTable.LookupWithFlags(base+w, &f, ebpf.LookupLock); err != nil {
			return err
		}
		if f.Key == key {
			f.LastNs = uint64(int64(FlowNow()) - int64(ago))
			return s.FlowTable.Update(base+w, &f, ebpf.UpdateLock)
		}
	}
	return fmt.Errorf("no flow %s %s-%s", proto, local, remote)
}
