//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// eventJSON is one line of events --json.
type eventJSON struct {
	Time    string `json:"time"` // RFC 3339 with nanoseconds
	Type    string `json:"type"` // knock, reset, open, expire
	Src     string `json:"src"`
	Port    uint16 `json:"port"`
	Proto   string `json:"proto"`
	Stage   int    `json:"stage"`
	KeyID   uint32 `json:"key_id,omitempty"`  // an open by SPA: the key`
	Stanza  int    `json:"stanza,omitempty"`  // an open by an fwknop client: its access.conf stanza's number
	Expires string `json:"expires,omitempty"` // RFC 3339; absent for reset
	// Service is the service granted or expired, or whose sequence was
	// knocked or reset.
	Service string `json:"service"`
}

func eventsCommand() *command {
	var asJSON bool
	fs := newFlags("events")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return &command{
		name:     "events",
		synopsis: "[GATE|IFACE] [--json]",
		summary:  "stream knock, reset, open and expire events",
		help: "Print the gate's events as they happen, until interrupted (SIGINT or SIGTERM)\n" +
			"or until the gate is detached (an error). Run one reader per gate: readers\n" +
			"share the position in the event buffer.",
		minArgs: 0, maxArgs: 1,
		flags: fs,
		run: func(e *env, args []string) error {
			names, err := pickGates(args, listGates, false)
			if err != nil {
				return err
			}
			return streamEvents(e, names[0], asJSON)
		},
	}
}

func streamEvents(e *env, arg string, asJSON bool) error {
	g, err := openGate(arg)
	if err != nil {
		return err
	}
	defer g.Close()
	pins, err := os.Stat(g.Dir)
	if err != nil {
		return fmt.Errorf("watch %s: %w", g.Dir, err)
	}
	rd, err := g.OpenEvents()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(e.ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	done, finished := make(chan struct{}), make(chan struct{})
	defer func() { close(done); <-finished }()
	var gone atomic.Bool
	go func() {
		defer close(finished)
		// Closing the reader unblocks Read, which then reports ErrClosed.
		defer rd.Close()
		// A detached gate sends no more events, but its ring buffer lives
		// on while we hold it: notice that the pins went away (or were
		// replaced by another attach) rather than wait forever.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-tick.C:
				if now, err := os.Stat(g.Dir); errors.Is(err, fs.ErrNotExist) || (err == nil && !os.SameFile(now, pins)) {
					gone.Store(true)
					return
				}
			}
		}
	}()

	steps := stepCounter{gate: g}
	for {
		ev, err := rd.Read()
		if errors.Is(err, maps.ErrClosed) {
			if gone.Load() {
				return fmt.Errorf("knockgate is no longer attached to %s", arg)
			}
			return nil
		}
		if err != nil {
			return err
		}
		// Each line is a single write to the unbuffered writer, so a reader
		// at the other end of a pipe sees it at once.
		if asJSON {
			if err := json.NewEncoder(e.stdout).Encode(encodeEvent(ev)); err != nil {
				return fmt.Errorf("write event: %w", err)
			}
			continue
		}
		if _, err := io.WriteString(e.stdout, formatEvent(ev, steps.get(ev.Service))+"\n"); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
	}
}

// stepCounter caches the services' sequence lengths for the plain form
// ("stage 1/2"), re-reading the configuration at most once a second so that
// a knock flood does not turn into a flood of config reads.
type stepCounter struct {
	gate *loader.Gate
	n    map[string]int
	read time.Time
}

// get is the length of service's sequence.
func (s *stepCounter) get(service string) int {
	if time.Since(s.read) >= time.Second {
		if cfg, err := s.gate.Config(); err == nil {
			s.n, s.read = map[string]int{}, time.Now()
			for _, svc := range cfg.Policy.Services {
				s.n[svc.Name] = len(svc.Sequence)
			}
		}
	}
	return s.n[service]
}

func encodeEvent(ev maps.Event) eventJSON {
	out := eventJSON{
		Time:    ev.Time.UTC().Format(time.RFC3339Nano),
		Type:    ev.Type,
		Src:     ev.Src.String(),
		Port:    ev.Port.Num,
		Proto:   ev.Port.Proto.String(),
		Stage:   ev.Stage,
		KeyID:   ev.KeyID,
		Stanza:  ev.Stanza,
		Service: ev.Service,
	}
	if !ev.Expires.IsZero() {
		out.Expires = stamp(ev.Expires)
	}
	return out
}

// formatEvent is the plain form of one event, e.g.
// "2026-11-26T13:40:01Z knock  10.0.0.2 -> 9000/tcp stage 1/2 (next step before 13:41:01)";
// a service other than default follows the port in brackets: "-> 7000/tcp [web]".
func formatEvent(ev maps.Event, steps int) string {
	head := fmt.Sprintf("%s %-6s %s -> %d/%s", stamp(ev.Time), ev.Type, ev.Src, ev.Port.Num, ev.Port.Proto)
	if ev.Service != "" && ev.Service != policy.DefaultService {
		head += " [" + ev.Service + "]"
	}
	switch ev.Type {
	case "knock":
		return fmt.Sprintf("%s stage %d/%d (next step before %s)", head, ev.Stage, steps,
			ev.Expires.UTC().Format(time.TimeOnly))
	case "reset":
		return fmt.Sprintf("%s (was at stage %d/%d)", head, ev.Stage, steps)
	case "open":
		if ev.KeyID != 0 {
			return fmt.Sprintf("%s by SPA key %d, granted until %s", head, ev.KeyID, stamp(ev.Expires))
		}
		if ev.Stanza != 0 {
			return fmt.Sprintf("%s by fwknop, access.conf stanza #%d, granted until %s", head, ev.Stanza, stamp(ev.Expires))
		}
		return fmt.Sprintf("%s granted until %s", head, stamp(ev.Expires))
	case "expire":
		return fmt.Sprintf("%s grant expired at %s", head, stamp(ev.Expires))
	}
	return head
}
