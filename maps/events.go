package maps

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/policy"
)

// EventTypeNames names enum event_type.
var EventTypeNames = map[bpf.KnockgateEventType]string{
	bpf.KnockgateEventTypeEVENT_KNOCK:  "knock",
	bpf.KnockgateEventTypeEVENT_RESET:  "reset",
	bpf.KnockgateEventTypeEVENT_OPEN:   "open",
	bpf.KnockgateEventTypeEVENT_EXPIRE: "expire",
}

// Event is one decoded ring-buffer event.
type Event struct {
	Time  time.Time
	Type  string
	Src   netip.Addr
	Port  policy.Port
	Stage int
	// KeyID is the SPA key that opened (an open by SPA), else 0.
	KeyID uint32
	// Stanza is the access.conf stanza that accepted the fwknop datagram
	// that opened (by its number, as fwknopd names it: "stanza #2"), else
	// 0.
	Stanza  int
	Expires time.Time // next step's deadline (knock), grant expiry (open, expire)
	// Service is the service granted, expired, or whose sequence was
	// knocked; ServiceIndex its index in the program's tables.
	Service      string
	ServiceIndex int
}

// EventReader streams events from a gate's ring buffer.
type EventReader struct {
	rd  *ringbuf.Reader
	set *Set
	// names are the services by index, read from the configuration at
	// most once a second and whenever an event names an index it lacks:
	// events come faster than configurations change.
	names   map[int]string
	fetched time.Time
}

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// OpenEvents starts reading the ring buffer. Only one reader should be open
// per gate: readers share the consumer position.
func (s *Set) OpenEvents() (*EventReader, error) {
	rd, err := ringbuf.NewReader(s.Events)
	if err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	return &EventReader{rd: rd, set: s}, nil
}

// Read blocks until the next event, or returns ErrClosed after Close.
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, ErrClosed
		}
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	var raw bpf.KnockgateEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	ev := DecodeEvent(&raw)
	ev.Service = r.serviceName(ev.ServiceIndex)
	return ev, nil
}

// serviceName names the service at index i, as "#i" when the gate has none
// there (removed since).
func (r *EventReader) serviceName(i int) string {
	name, ok := r.names[i]
	if !ok || time.Since(r.fetched) > time.Second {
		if cfg, err := r.set.ReadConfig(); err == nil {
			r.names, r.fetched = cfg.names(), time.Now()
			name, ok = r.names[i]
		}
	}
	if !ok {
		return fmt.Sprintf("#%d", i)
	}
	return name
}

// Close unblocks Read.
func (r *EventReader) Close() error { return r.rd.Close() }

// DecodeEvent converts the C layout to an Event.
func DecodeEvent(raw *bpf.KnockgateEvent) Event {
	ev := Event{
		Time:  BootToTime(raw.TimeNs),
		Type:  EventTypeNames[bpf.KnockgateEventType(raw.Type)],
		Src:   AddrOf(raw.Addr),
		Port:  policy.Port{Num: raw.Port, Proto: policy.Proto(raw.Proto)},
		Stage: int(raw.Stage),
		KeyID: raw.KeyId,

		ServiceIndex: int(raw.Service),
	}
	if raw.Fwknop != 0 {
		ev.KeyID, ev.Stanza = 0, int(raw.KeyId)
	}
	if ev.Type == "" {
		ev.Type = fmt.Sprintf("type(%d)", raw.Type)
	}
	if raw.ExpiresNs != 0 {
		ev.Expires = BootToTime(raw.ExpiresNs)
	}
	return ev
}
