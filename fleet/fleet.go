// Package fleet shares a gate's grants, and its SPA replay state, among the
// hosts of a fleet through one NATS JetStream key-value bucket, so a knock
// (or an SPA packet) on any host opens the protected ports on all of them.
// Each host's own grant map enforces expiry; the bucket only carries the
// grants, and its per-message TTL only cleans it up. Updates are merged as
// max(local, remote): a later expiry wins, at the writer (compare-and-swap
// on the key's revision) and at the reader, so they may arrive in any
// order, and more than once. `run` uses it; nothing below knows it exists.
package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Local is the host's own state, as the fleet reads and writes it: grants
// by wall-clock expiry, and SPA replay state by key id (Unix ms).
type Local interface {
	Grants() (map[netip.Addr]time.Time, error)
	// Apply makes addr's grant last until at least expires (max(local,
	// remote)); Revoke removes it.
	Apply(addr netip.Addr, expires time.Time) error
	Revoke(addr netip.Addr) error
	Replay() (map[uint32]uint64, error)
	// ApplyReplay moves key id's newest accepted timestamp to at least ms.
	ApplyReplay(id uint32, ms uint64) error
}

// Bucket is the key-value bucket of a fleet's grants.
const Bucket = "knockgate"

// record is a key's value: the grant's expiry (or the key's newest SPA
// timestamp), which host made it, and the format's version.
type record struct {
	Version int    `json:"v"`
	Expires int64  `json:"expires_ms,omitempty"` // Unix ms
	Last    uint64 `json:"last_ms,omitempty"`    // SPA: Unix ms
	Origin  string `json:"origin"`
}

// Stats are what status and metrics show of the fleet.
type Stats struct {
	Peers         int       // routes to other servers (embedded), or 1 when connected to a cluster
	Published     uint64    // grants and revokes this host wrote
	Received      uint64    // updates from other hosts applied here
	WatchRestarts uint64    // watches made again after an error
	LastSync      time.Time // the last time the watch was current
	Pending       int       // local changes not yet written (cut off)
	LastError     string    // the last failure to reach the bucket, if any
}

// Fleet is one host's membership.
type Fleet struct {
	name, gate string
	local      Local
	nc         *nats.Conn
	js         jetstream.JetStream
	kv         atomic.Pointer[jetstream.KeyValue]
	srv        *Server // the embedded server, or nil
	ttlSlack   time.Duration

	mu    sync.Mutex
	known map[netip.Addr]time.Time // grants as the bucket has them (or this host last wrote)
	last  map[uint32]uint64        // replay state as the bucket has it

	published, received, restarts atomic.Uint64
	lastSync                      atomic.Int64
	pending                       atomic.Int64

	lastErr atomic.Value // string

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// Options of Join.
type Options struct {
	Name  string // this host's name in the fleet (origin of its records)
	Gate  string // the gate: keys are per gate
	Local Local
	// Conn is the connection to the cluster: in process to an embedded
	// server, or to an existing one.
	Conn     *nats.Conn
	Server   *Server // the embedded server behind Conn, if any (for its peers)
	Replicas int     // the bucket's replicas
	// Interval is how often local changes are looked for (default 100ms).
	Interval time.Duration
}

// Join starts sharing: the bucket is made if missing, a watch applies
// every other host's records here (a snapshot first, then updates), and a
// loop writes this host's changes.
func Join(o Options) (*Fleet, error) {
	if o.Interval == 0 {
		o.Interval = 100 * time.Millisecond
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("fleet: jetstream: %w", err)
	}
	f := &Fleet{name: o.Name, gate: keyPart(o.Gate), local: o.Local, nc: o.Conn, js: js, srv: o.Server,
		known: map[netip.Addr]time.Time{}, last: map[uint32]uint64{}, ttlSlack: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.done.Add(2)
	go f.watchLoop(ctx, o.Replicas)
	go f.syncLoop(ctx, o.Interval)
	return f, nil
}

// Close stops sharing (the embedded server, if any, is the caller's).
func (f *Fleet) Close() {
	f.cancel()
	f.done.Wait()
}

func (f *Fleet) fail(err error) { f.lastErr.Store(err.Error()) }

// Stats reads the fleet's figures.
func (f *Fleet) Stats() Stats {
	st := Stats{Published: f.published.Load(), Received: f.received.Load(), WatchRestarts: f.restarts.Load(),
		Pending: int(f.pending.Load())}
	st.LastError, _ = f.lastErr.Load().(string)
	if ns := f.lastSync.Load(); ns != 0 {
		st.LastSync = time.Unix(0, ns)
	}
	if f.srv != nil {
		st.Peers = f.srv.Peers()
	} else if f.nc.IsConnected() {
		st.Peers = 1
	}
	return st
}

// keyPart makes s a KV key token: [-_=a-zA-Z0-9] stay, the rest as =XX.
func keyPart(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02x", c)
		}
	}
	return b.String()
}

func (f *Fleet) grantKey(a netip.Addr) string {
	k := a.Unmap().As16()
	return f.gate + ".grant." + hex.EncodeToString(k[:])
}

func (f *Fleet) replayKey(id uint32) string {
	return f.gate + ".spa." + strconv.FormatUint(uint64(id), 10)
}

// parseKey reads a key of this gate: a grant's address, or an SPA key id.
func (f *Fleet) parseKey(key string) (addr netip.Addr, id uint32, isGrant bool, ok bool) {
	rest, found := strings.CutPrefix(key, f.gate+".")
	if !found {
		return netip.Addr{}, 0, false, false
	}
	if h, found := strings.CutPrefix(rest, "grant."); found {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 16 {
			return netip.Addr{}, 0, false, false
		}
		return netip.AddrFrom16([16]byte(b)).Unmap(), 0, true, true
	}
	if s, found := strings.CutPrefix(rest, "spa."); found {
		n, err := strconv.ParseUint(s, 10, 32)
		return netip.Addr{}, uint32(n), false, err == nil
	}
	return netip.Addr{}, 0, false, false
}

// bucket makes or opens the bucket, retrying until the cluster has a
// JetStream leader.
func (f *Fleet) bucket(ctx context.Context, replicas int) (jetstream.KeyValue, error) {
	if replicas < 1 {
		replicas = 1
	}
	for {
		try, cancel := context.WithTimeout(ctx, 3*time.Second)
		kv, err := f.js.KeyValue(try, Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = f.js.CreateKeyValue(try, jetstream.KeyValueConfig{
				Bucket: Bucket, History: 1, Replicas: replicas,
				// Per-message TTL, for clean-up only (each host enforces expiry).
				LimitMarkerTTL: time.Minute,
				Description:    "knockgate grants shared by a fleet",
			})
		}
		cancel()
		if err == nil {
			return kv, nil
		}
		f.fail(fmt.Errorf("make bucket: %w", err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// watchLoop applies the bucket's records here, watching again after any
// error (a partition, a leader change): a new watch delivers the current
// value of every key first, so nothing is missed.
func (f *Fleet) watchLoop(ctx context.Context, replicas int) {
	defer f.done.Done()
	first := true
	for ctx.Err() == nil {
		if !first {
			f.restarts.Add(1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		first = false
		kv, err := f.bucket(ctx, replicas)
		if err != nil {
			continue
		}
		f.kv.Store(&kv)
		w, err := kv.WatchAll(ctx)
		if err != nil {
			f.fail(fmt.Errorf("watch: %w", err))
			continue
		}
		f.watch(ctx, w)
		w.Stop()
	}
}

func (f *Fleet) watch(ctx context.Context, w jetstream.KeyWatcher) {
	idle := time.NewTicker(2 * time.Second)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil { // the snapshot is in: current from here on
				f.lastSync.Store(time.Now().UnixNano())
				continue
			}
			f.apply(e)
			f.lastSync.Store(time.Now().UnixNano())
		case <-idle.C:
			// A watch that stopped hearing (the connection went) is made
			// again, and so catches up.
			if !f.nc.IsConnected() {
				return
			}
		}
	}
}

// apply merges one record into the local state.
func (f *Fleet) apply(e jetstream.KeyValueEntry) {
	addr, id, isGrant, ok := f.parseKey(e.Key())
	if !ok {
		return
	}
	deleted := e.Operation() != jetstream.KeyValuePut
	var r record
	if !deleted && json.Unmarshal(e.Value(), &r) != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !isGrant {
		if deleted || r.Last <= f.last[id] {
			return
		}
		f.last[id] = r.Last
		if f.local.ApplyReplay(id, r.Last) == nil && r.Origin != f.name {
			f.received.Add(1)
		}
		return
	}
	if deleted {
		if _, had := f.known[addr]; !had {
			return
		}
		delete(f.known, addr)
		if f.local.Revoke(addr) == nil {
			f.received.Add(1)
		}
		return
	}
	exp := time.UnixMilli(r.Expires)
	if !exp.After(f.known[addr]) {
		return // not later than what is here: nothing to do
	}
	f.known[addr] = exp
	if !exp.After(time.Now()) {
		return
	}
	if f.local.Apply(addr, exp) == nil && r.Origin != f.name {
		f.received.Add(1)
	}
}

// syncLoop writes this host's changes: grants made or lengthened here,
// grants revoked here, SPA timestamps accepted here. A write that fails
// (cut off from the cluster) is tried again on the next round: the local
// state is the queue.
func (f *Fleet) syncLoop(ctx context.Context, every time.Duration) {
	defer f.done.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.sync(ctx)
		}
	}
}

func (f *Fleet) sync(ctx context.Context) {
	kvp := f.kv.Load()
	if kvp == nil {
		return
	}
	kv := *kvp
	// The local state is read under the lock apply takes: a grant that
	// arrives from the bucket between the read and the comparison would
	// otherwise look revoked here, and its revoke go to the whole fleet.
	f.mu.Lock()
	grants, err := f.local.Grants()
	if err != nil {
		f.mu.Unlock()
		return
	}
	replay, err := f.local.Replay()
	if err != nil {
		f.mu.Unlock()
		return
	}
	now := time.Now()
	pending := 0
	var puts []netip.Addr
	var revokes []netip.Addr
	for a, exp := range grants {
		// Later by more than the jitter of converting clocks back and
		// forth (a grant applied from the bucket reads back a millisecond
		// or so off): only a real extension is written.
		if exp.After(now) && exp.Sub(f.known[a]) > 100*time.Millisecond {
			puts = append(puts, a)
		}
	}
	for a, exp := range f.known {
		if _, here := grants[a]; !here && exp.After(now) {
			revokes = append(revokes, a)
		}
	}
	var ids []uint32
	for id, ms := range replay {
		if ms > f.last[id] {
			ids = append(ids, id)
		}
	}
	f.mu.Unlock()
	for _, a := range puts {
		if err := f.putGrant(ctx, kv, a, grants[a]); err != nil {
			f.fail(fmt.Errorf("write grant of %s: %w", a, err))
			pending++
		}
	}
	for _, a := range revokes {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		err := kv.Delete(ctx, f.grantKey(a))
		cancel()
		if err != nil {
			pending++
			continue
		}
		f.mu.Lock()
		delete(f.known, a)
		f.mu.Unlock()
		f.published.Add(1)
	}
	for _, id := range ids {
		if err := f.putReplay(ctx, kv, id, replay[id]); err != nil {
			pending++
		}
	}
	f.pending.Store(int64(pending))
}

// putGrant writes addr's grant unless the bucket has a later one: a
// compare-and-swap on the key's revision, tried again on a conflict.
func (f *Fleet) putGrant(ctx context.Context, kv jetstream.KeyValue, a netip.Addr, exp time.Time) error {
	rec := record{Version: 1, Expires: exp.UnixMilli(), Origin: f.name}
	ttl := time.Until(exp) + f.ttlSlack
	return f.casPut(ctx, kv, f.grantKey(a), rec, ttl, func(cur record) bool { return cur.Expires >= rec.Expires }, func() {
		f.mu.Lock()
		if exp.After(f.known[a]) {
			f.known[a] = exp
		}
		f.mu.Unlock()
	})
}

func (f *Fleet) putReplay(ctx context.Context, kv jetstream.KeyValue, id uint32, ms uint64) error {
	rec := record{Version: 1, Last: ms, Origin: f.name}
	return f.casPut(ctx, kv, f.replayKey(id), rec, 0, func(cur record) bool { return cur.Last >= ms }, func() {
		f.mu.Lock()
		if ms > f.last[id] {
			f.last[id] = ms
		}
		f.mu.Unlock()
	})
}

// casPut writes rec at key unless newer(the current record) says the
// bucket's is as new: created if missing, else updated at the revision it
// was read at; a conflict reads again.
func (f *Fleet) casPut(ctx context.Context, kv jetstream.KeyValue, key string, rec record, ttl time.Duration,
	newer func(record) bool, done func()) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	for range 5 {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		cur, err := kv.Get(ctx, key)
		var rev uint64
		switch {
		case err == nil:
			var c record
			if json.Unmarshal(cur.Value(), &c) == nil && newer(c) {
				cancel()
				done()
				return nil
			}
			rev = cur.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			// No live value: rev 0 makes it.
		default:
			cancel()
			return err
		}
		err = f.publish(ctx, kv, key, data, rev, ttl)
		cancel()
		if err == nil {
			f.published.Add(1)
			done()
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return err
		}
	}
	return errors.New("fleet: the key kept changing")
}

// publish writes one record: made anew when rev is 0 (KeyValue.Create,
// which also takes a deleted key), else at expected last revision rev with
// a TTL (what KeyValue.Update does, with the TTL it does not take).
func (f *Fleet) publish(ctx context.Context, kv jetstream.KeyValue, key string, data []byte, rev uint64, ttl time.Duration) error {
	if rev == 0 {
		opts := []jetstream.KVCreateOpt{}
		if ttl > 0 {
			opts = append(opts, jetstream.KeyTTL(ttl))
		}
		_, err := kv.Create(ctx, key, data, opts...)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
		}
		return err
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	_, err := f.js.Publish(ctx, "$KV."+Bucket+"."+key, data, opts...)
	return err
}
