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
	KeyID   uint32
	Expires time.Time // next step's deadline (knock), grant expiry (open, expire)
}

// EventReader streams events from a gate's ring buffer.
type EventReader struct {
	rd *ringbuf.Reader
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
	return &EventReader{rd: rd}, nil
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
	return DecodeEvent(&raw), nil
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
	}
	if ev.Type == "" {
		ev.Type = fmt.Sprintf("type(%d)", raw.Type)
	}
	if raw.ExpiresNs != 0 {
		ev.Expires = BootToTime(raw.ExpiresNs)
	}
	return ev
}
