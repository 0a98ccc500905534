package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// fwknop's datagrams in a fleet: each host that handed one over (its HMAC
// verified in XDP) writes its HMAC to the bucket, under
//
//	GATE.fwknop.HEX   HEX: the 32-byte HMAC in hex
//
// with when it may be forgotten (record.Expires: its timestamp's window
// past) and a TTL as long, and every other host remembers it as its own,
// so that a copy of the datagram sent to any host of the fleet is a
// replay there too, as SPA's replay state is shared.

// FwknopLocal is what a Local that takes fwknop datagrams adds: it
// remembers one another host handed over, until until.
type FwknopLocal interface {
	ApplyFwknop(digest [32]byte, until time.Time) error
}

// fwknopQueue is what this host has to write.
type fwknopQueue struct {
	mu      sync.Mutex
	pending map[[32]byte]time.Time
}

// PublishFwknop shares a datagram this host handed over, remembered until
// until: written at the next sync, tried again until it is.
func (f *Fleet) PublishFwknop(digest [32]byte, until time.Time) {
	f.fwknop.mu.Lock()
	defer f.fwknop.mu.Unlock()
	if f.fwknop.pending == nil {
		f.fwknop.pending = map[[32]byte]time.Time{}
	}
	f.fwknop.pending[digest] = until
}

func (f *Fleet) fwknopKey(d [32]byte) string { return f.gate + ".fwknop." + hex.EncodeToString(d[:]) }

// applyFwknop applies a record of the bucket if it is an fwknop datagram's
// (and says whether it was one): another host's datagram is remembered
// here. f.mu is held.
func (f *Fleet) applyFwknop(e jetstream.KeyValueEntry) bool {
	h, ok := strings.CutPrefix(e.Key(), f.gate+".fwknop.")
	if !ok {
		return false
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 32 || e.Operation() != jetstream.KeyValuePut {
		return true
	}
	var r record
	if json.Unmarshal(e.Value(), &r) != nil || r.Origin == f.name {
		return true
	}
	until := time.UnixMilli(r.Expires)
	if !until.After(time.Now()) {
		return true
	}
	if l, ok := f.local.(FwknopLocal); ok && l.ApplyFwknop([32]byte(b), until) == nil {
		f.received.Add(1)
	}
	return true
}

// syncFwknop writes the datagrams this host handed over since the last
// sync; those that fail stay for the next. It returns how many are left.
func (f *Fleet) syncFwknop(ctx context.Context, kv jetstream.KeyValue) int {
	f.fwknop.mu.Lock()
	todo := f.fwknop.pending
	f.fwknop.pending = nil
	f.fwknop.mu.Unlock()
	failed := map[[32]byte]time.Time{}
	for d, until := range todo {
		ttl := time.Until(until) + f.ttlSlack
		if ttl <= f.ttlSlack {
			continue // past already: nothing to share
		}
		data, err := json.Marshal(record{Version: 1, Expires: until.UnixMilli(), Origin: f.name})
		if err != nil {
			continue
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err = f.publish(c, kv, f.fwknopKey(d), data, 0, ttl)
		cancel()
		switch {
		case err == nil:
			f.published.Add(1)
		case isConflict(err):
			// Another host had it first: the bucket has it.
		default:
			failed[d] = until
		}
	}
	if len(failed) > 0 {
		f.fwknop.mu.Lock()
		if f.fwknop.pending == nil {
			f.fwknop.pending = map[[32]byte]time.Time{}
		}
		for d, u := range failed {
			if _, newer := f.fwknop.pending[d]; !newer {
				f.fwknop.pending[d] = u
			}
		}
		f.fwknop.mu.Unlock()
	}
	return len(failed)
}

// isConflict: the key was there already (publish's refusal of a create).
func isConflict(err error) bool {
	apiErr, ok := err.(*jetstream.APIError)
	return ok && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
