package maps

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/fwknop"
)

// fwknop's clients (bpf/fwknop.h): the HMAC keys the program tries, the
// HMACs of the datagrams it handed over (a datagram is taken once, ever),
// and the ring they come to run on.

// FwknopKeys is how many distinct HMAC keys a gate holds (KG_FWKNOP_KEYS).
const FwknopKeys = 64

// FwknopKey is an HMAC key of an access.conf, and the stanzas that use it
// ("1,3"): what status shows of it.
type FwknopKey struct {
	HMACKey []byte
	Name    string
}

// SetFwknopKeys makes the program's HMAC keys exactly keys, in order (an
// index is what a datagram's record names). The count goes down first,
// then the keys are written, then it goes up: a datagram never meets a
// slot past what was written. A key rewritten in place while a datagram is
// verified under it may fail that one datagram; the client's next one goes
// through.
func (s *Set) SetFwknopKeys(keys []FwknopKey) error {
	if len(keys) > FwknopKeys {
		return fmt.Errorf("%d fwknop HMAC keys: a gate holds at most %d", len(keys), FwknopKeys)
	}
	cur, err := s.FwknopKeyCount()
	if err != nil {
		return err
	}
	if len(keys) < cur {
		if err := s.FwknopCount.Update(uint32(0), uint32(len(keys)), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write fwknop key count: %w", err)
		}
	}
	for i, k := range keys {
		var raw bpf.KnockgateFwknopKey
		raw.Inner, raw.Outer = fwknop.HMACStates(k.HMACKey)
		copy(raw.Name[:len(raw.Name)-1], k.Name)
		if err := s.FwknopKeys.Update(uint32(i), &raw, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write fwknop key %d: %w", i, err)
		}
	}
	for i := len(keys); i < cur; i++ {
		if err := s.FwknopKeys.Update(uint32(i), &bpf.KnockgateFwknopKey{}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("clear fwknop key %d: %w", i, err)
		}
	}
	if err := s.FwknopCount.Update(uint32(0), uint32(len(keys)), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write fwknop key count: %w", err)
	}
	return nil
}

// FwknopKeyCount is how many HMAC keys the program tries.
func (s *Set) FwknopKeyCount() (int, error) {
	var n uint32
	if err := s.FwknopCount.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read fwknop key count: %w", err)
	}
	return int(n), nil
}

// FwknopKeyNames are the names of the HMAC keys the program tries, in
// order.
func (s *Set) FwknopKeyNames() ([]string, error) {
	n, err := s.FwknopKeyCount()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for i := range min(n, FwknopKeys) {
		var raw bpf.KnockgateFwknopKey
		if err := s.FwknopKeys.Lookup(uint32(i), &raw); err != nil {
			return nil, fmt.Errorf("read fwknop key %d: %w", i, err)
		}
		out = append(out, string(bytes.TrimRight(raw.Name[:], "\x00")))
	}
	return out, nil
}

// FwknopDigest is a datagram's HMAC: what names it against replays.
type FwknopDigest [32]byte

func (d FwknopDigest) String() string { return fmt.Sprintf("%x", d[:]) }

// FwknopSeen is what the gate remembers of a datagram it handed over.
type FwknopSeen struct {
	// Seen is when it came (CLOCK_BOOTTIME ns; 0: learned from the fleet).
	Seen uint64
	// KeepUntil is when run may forget it (zero: not decided yet).
	KeepUntil time.Time
}

func decodeSeen(raw *bpf.KnockgateFwknopSeen) FwknopSeen {
	v := FwknopSeen{Seen: raw.SeenNs}
	if raw.KeepUntil != 0 {
		v.KeepUntil = time.Unix(raw.KeepUntil, 0)
	}
	return v
}

// FwknopKeepUntil records until when the datagram d, which run decided,
// is remembered. An entry the program did not make is made.
func (s *Set) FwknopKeepUntil(d FwknopDigest, until time.Time) error {
	var raw bpf.KnockgateFwknopSeen
	if err := s.FwknopReplay.Lookup(&d, &raw); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read fwknop replay entry: %w", err)
	}
	raw.KeepUntil = until.Unix()
	if err := s.FwknopReplay.Update(&d, &raw, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write fwknop replay entry: %w", err)
	}
	return nil
}

// FwknopRemember makes the gate take d as seen until until: the fleet's
// datagrams, handed over on another host. An entry already there is
// kept (the program's, or an earlier copy). added says whether it was
// new.
func (s *Set) FwknopRemember(d FwknopDigest, until time.Time) (added bool, err error) {
	raw := bpf.KnockgateFwknopSeen{KeepUntil: until.Unix()}
	err = s.FwknopReplay.Update(&d, &raw, ebpf.UpdateNoExist)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyExist):
		return false, nil
	}
	return false, fmt.Errorf("write fwknop replay entry: %w", err)
}

// FwknopSeenAll reads every entry of the replay map.
func (s *Set) FwknopSeenAll() (map[FwknopDigest]FwknopSeen, error) {
	out := map[FwknopDigest]FwknopSeen{}
	var d FwknopDigest
	var raw bpf.KnockgateFwknopSeen
	it := s.FwknopReplay.Iterate()
	for it.Next(&d, &raw) {
		out[d] = decodeSeen(&raw)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read fwknop replay map: %w", err)
	}
	return out, nil
}

// FwknopUndecidedFor is how long an entry run never decided (its datagram
// lost on the way to run) is kept: its timestamp is unknown, and no
// client's clock is an hour off.
const FwknopUndecidedFor = time.Hour

// FwknopForget removes the entries that no window can take any more: those
// past their KeepUntil at now, and those never decided that came more than
// FwknopUndecidedFor ago. It returns how many went.
func (s *Set) FwknopForget(now time.Time) (int, error) {
	all, err := s.FwknopSeenAll()
	if err != nil {
		return 0, err
	}
	boot := BootNow()
	n := 0
	for d, v := range all {
		var stale bool
		if v.KeepUntil.IsZero() {
			stale = boot > v.Seen && time.Duration(boot-v.Seen) > FwknopUndecidedFor
		} else {
			stale = now.After(v.KeepUntil)
		}
		if !stale {
			continue
		}
		if err := s.FwknopReplay.Delete(&d); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("forget fwknop replay entry: %w", err)
		}
		n++
	}
	return n, nil
}

// FwknopDatagram is a datagram the program verified and handed over.
type FwknopDatagram struct {
	Time     time.Time
	Src, Dst netip.Addr // unmapped
	Ifindex  int
	Key      int // index of the HMAC key that verified it
	Payload  []byte
}

// Digest is the datagram's HMAC, as the replay map names it.
func (d *FwknopDatagram) Digest() (FwknopDigest, error) {
	tag, _, err := fwknop.Tag(d.Payload)
	return FwknopDigest(tag), err
}

// FwknopReader reads the datagrams the program hands over.
type FwknopReader struct{ rd *ringbuf.Reader }

// OpenFwknop starts reading the fwknop ring. One reader per gate: readers
// share the position.
func (s *Set) OpenFwknop() (*FwknopReader, error) {
	rd, err := ringbuf.NewReader(s.FwknopRing)
	if err != nil {
		return nil, fmt.Errorf("open fwknop ring buffer: %w", err)
	}
	return &FwknopReader{rd: rd}, nil
}

// Read blocks until the next datagram, or returns ErrClosed after Close.
func (r *FwknopReader) Read() (FwknopDatagram, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return FwknopDatagram{}, ErrClosed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return FwknopDatagram{}, err
		}
		return FwknopDatagram{}, fmt.Errorf("read fwknop ring: %w", err)
	}
	return DecodeFwknopRecord(rec.RawSample)
}

// SetDeadline makes Read return os.ErrDeadlineExceeded once t passes
// with nothing to read (a time in the past: what is there, then that).
func (r *FwknopReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close unblocks Read.
func (r *FwknopReader) Close() error { return r.rd.Close() }

// DecodeFwknopRecord decodes a record of the fwknop ring.
func DecodeFwknopRecord(b []byte) (FwknopDatagram, error) {
	var raw bpf.KnockgateFwknopRecord
	if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &raw); err != nil {
		return FwknopDatagram{}, fmt.Errorf("decode fwknop record: %w", err)
	}
	if int(raw.Len) > len(raw.Data) {
		return FwknopDatagram{}, fmt.Errorf("decode fwknop record: %d bytes of data", raw.Len)
	}
	return FwknopDatagram{
		Time:    BootToTime(raw.TimeNs),
		Src:     AddrOf(raw.Src),
		Dst:     AddrOf(raw.Dst),
		Ifindex: int(raw.Ifindex),
		Key:     int(raw.Key),
		Payload: bytes.Clone(raw.Data[:raw.Len]),
	}, nil
}

// FwknopGrant is what run asks the fwknop_grant program to grant.
type FwknopGrant struct {
	Addr       netip.Addr
	Stanza     int
	Open       time.Duration
	Generation uint32 // of the configuration the services were picked by
	// Services by index, each with the port asked for that it protects
	// (for its open event).
	Services map[int]Port
}

// ErrStaleGeneration: the configuration changed since the services were
// picked: pick them again.
var ErrStaleGeneration = errors.New("the configuration changed meanwhile")

// EncodeFwknopGrant is g as the fwknop_grant program's frame.
func EncodeFwknopGrant(g *FwknopGrant) ([]byte, error) {
	req := bpf.KnockgateFwknopGrantReq{OpenNs: uint64(g.Open), Stanza: uint32(g.Stanza), Generation: g.Generation}
	req.Addr = Key(g.Addr).Addr
	for i, p := range g.Services {
		if i < 0 || i >= MaxServices {
			return nil, fmt.Errorf("service index %d", i)
		}
		req.Services |= 1 << i
		req.Port[i], req.Proto[i] = p.Num, uint8(p.Proto)
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.NativeEndian, &req); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// RunFwknopGrant runs prog, the fwknop_grant program, on g: how many
// services it granted, or ErrStaleGeneration.
func RunFwknopGrant(prog *ebpf.Program, g *FwknopGrant) (int, error) {
	frame, err := EncodeFwknopGrant(g)
	if err != nil {
		return 0, err
	}
	out := make([]byte, len(frame))
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		return 0, fmt.Errorf("run fwknop_grant: %w", err)
	}
	if ret == 1 /* XDP_DROP */ {
		return 0, ErrStaleGeneration
	}
	if ret != 2 /* XDP_PASS */ {
		return 0, fmt.Errorf("fwknop_grant: action %d", ret)
	}
	var req bpf.KnockgateFwknopGrantReq
	if err := binary.Read(bytes.NewReader(out), binary.NativeEndian, &req); err != nil {
		return 0, err
	}
	return int(req.Granted), nil
}

// FwknopStanzaNames formats the stanzas (by number) that use one HMAC
// key, as its name: "1,3".
func FwknopStanzaNames(nums []int) string {
	s := make([]string, len(nums))
	for i, n := range nums {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}
