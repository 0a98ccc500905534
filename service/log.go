package service

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/knockgate/knockgate/maps"
)

// newLogger logs to w, one line per record, as logfmt text or as JSON: the
// forms journald and log shippers take.
func newLogger(w io.Writer, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// logEvent logs one gate event with the fields of `knockgate events
// --json`; the record's time is the event's own.
func logEvent(log *slog.Logger, ev maps.Event) {
	r := slog.NewRecord(ev.Time, slog.LevelInfo, ev.Type, 0)
	r.AddAttrs(
		slog.String("type", ev.Type),
		slog.String("src", ev.Src.String()),
		slog.Int("port", int(ev.Port.Num)),
		slog.String("proto", ev.Port.Proto.String()),
		slog.Int("stage", ev.Stage),
		slog.String("service", ev.Service),
	)
	if ev.KeyID != 0 {
		r.AddAttrs(slog.Uint64("key_id", uint64(ev.KeyID)))
	}
	if ev.Stanza != 0 {
		r.AddAttrs(slog.Int("stanza", ev.Stanza))
	}
	if !ev.Expires.IsZero() {
		r.AddAttrs(slog.String("expires", ev.Expires.UTC().Format(time.RFC3339)))
	}
	log.Handler().Handle(context.Background(), r)
}
