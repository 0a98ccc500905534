// Package fleet shares a gate's grants, and its SPA replay state, among the
// hosts of a fleet through one NATS JetStream key-value bucket, so a knock
// (or an SPA packet) on any host opens the protected ports on all of them.
// Each host's own grant map enforces expiry; the bucket only carries the
// grants, and its per-message TTL only cleans it up. A grant is of one
// (address, service), and services are matched across hosts by name: a
// grant of a service this host does not have stays in the bucket, and is
// ignored here until the host has that service. Updates are merged as
// max(local, remote): a later expiry wins, at the writer (compare-and-swap
// on the key's revision) and at the reader, so they may arrive in any
// order, and more than once. `run` uses it; nothing below knows it exists.
//
// A member that starts reads the whole bucket before it writes anything,
// and tells a grant of its map that the fleet revoked while it was away
// from one made on its own gate meanwhile by what it last knew of the
// bucket, which it keeps in a file (Options.StateFile; see reconcile).
// Its watch is made again whenever it stops keeping up with the bucket, so
// a cluster that changes under it (a host lost or back, a new leader)
// stalls it for about a second beyond what the cluster itself takes.
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

	"github.com/knockgate/knockgate/policy"
)

// Grant names one grant: a source address and a service, by name (each
// host numbers its services its own way; their names are what the hosts
// share).
type Grant struct {
	Addr    netip.Addr
	Service string
}

func (g Grant) String() string { return g.Addr.String() + " (" + g.Service + ")" }

// Grants are a host's grants at one moment, and the services it has then.
type Grants struct {
	// Expires has every grant of a service the host has, live or not.
	Expires map[Grant]time.Time
	// Services are the services the host has, by name: a grant of another
	// is not this host's to apply, or to revoke.
	Services map[string]bool
}

// Local is the host's own state, as the fleet reads and writes it: grants
// by wall-clock expiry, and SPA replay state by key id (Unix ms).
type Local interface {
	// Grants reads the grants and the services they are of, as one.
	Grants() (Grants, error)
	// Apply makes g last until at least expires (max(local, remote));
	// Revoke removes it. Both fail with ErrNoService when the host has no
	// service g.Service.
	Apply(g Grant, expires time.Time) error
	Revoke(g Grant) error
	Replay() (map[uint32]uint64, error)
	// ApplyReplay moves key id's newest accepted timestamp to at least ms.
	ApplyReplay(id uint32, ms uint64) error
}

// ErrNoService is Local's error for a grant of a service the host does not
// have: the fleet keeps it in the bucket and ignores it here.
var ErrNoService = errors.New("no such service on this host")

// Bucket is the key-value bucket of a fleet's grants.
const Bucket = "knockgate"

// The bucket's keys, per gate (GATE, keyPart of Options.Gate):
//
//	GATE.grant.HEX          the service default's grant of an address
//	GATE.grant.HEX.SERVICE  another service's (SERVICE: its name)
//	GATE.spa.ID             SPA key ID's replay state
//
// HEX is the address as 16 bytes (IPv4 v4-mapped) in hex. The first is the
// previous release's key of a gate's (only) grant, which had no services:
// a host still on it reads and writes default's grants there, reads what
// it wrote as default's, and skips the second form (its address does not
// read as hex), so a fleet is upgraded one host at a time.
//
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
	WatchRestarts uint64    // watches made again: they stopped keeping up with the bucket
	LastSync      time.Time // the last time this member was current with the bucket
	Pending       int       // local changes not yet written (cut off)
	LastError     string    // the last failure to reach the bucket, if any
	LastRestart   string    // why the watch was last made again, if it was
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
	known map[Grant]time.Time // grants as the bucket has them (or this host last wrote)
	last  map[uint32]uint64   // replay state as the bucket has it
	// seen is what this member knows of the bucket's grants, with
	// revisions, kept in stateFile before the map or the bucket changes
	// by it; prior is the file as Join found it, until reconcile.
	seen, prior         map[Grant]seen
	stateFile, instance string
	unsaved             []Grant // recorded since the file was written
	logLines            int     // records in the file (0: write it anew)
	rewrite             bool    // write it anew at the next save
	// foreign are the bucket's live grants of services this host does not
	// have (their expiry and revision), kept to apply should it get one of
	// them; absent names the services said so in the log.
	foreign map[Grant]seen
	absent  map[string]bool
	log     func(msg string, args ...any)
	// revs are the keys' revisions as last seen (the watch's records, this
	// host's own writes): a write made at once expects it, so that a later
	// expiry written meanwhile is never overwritten.
	revs map[Grant]uint64

	// What to write at once, taken by the sync loop when woken: grants
	// (Publish), and a comparison of the whole map (Sync).
	pubMu   sync.Mutex
	pubs    map[Grant]time.Time
	syncAsk bool
	wake    chan struct{}

	applied func(g Grant, expires time.Time, origin string)
	revoked func(g Grant)

	// ready: the bucket was read whole and reconciled with the map, so
	// this member may write.
	ready atomic.Bool
	// rev is the bucket's newest revision applied here.
	rev atomic.Uint64

	published, received, restarts atomic.Uint64
	lastSync                      atomic.Int64
	pending                       atomic.Int64

	lastErr       atomic.Value // string
	restartReason atomic.Value // string: why the watch was last made again

	cancel context.CancelFunc
	done   sync.WaitGroup

	fwknop fwknopQueue // fwknop datagrams to write (fwknop.go)
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
	// Interval is how often the whole map is compared with the bucket
	// (default DefaultInterval): the safety net for what Publish and Sync
	// are not told of.
	Interval time.Duration
	// StateFile keeps what this member last knew of the bucket's grants,
	// so that after a restart it tells a grant revoked meanwhile from one
	// made here meanwhile; "" keeps nothing (a grant the bucket no longer
	// has is then taken for this host's own, and published).
	StateFile string
	// Instance names Local's grants as they are now (the gate's map, on
	// this boot): a state file of another instance is not about them, and
	// is ignored. "" matches nothing.
	Instance string
	// Log receives what the fleet has to say (slog's arguments): that
	// grants of a service this host lacks are ignored here, once a
	// service. nil: nothing is said.
	Log func(msg string, args ...any)
	// Applied, if set, is told of each grant applied here from the bucket
	// (origin: the host that wrote it), Revoked of each grant revoked here
	// because the bucket deleted it. They are called with the member's
	// lock held: they must not block, or call the member.
	Applied func(g Grant, expires time.Time, origin string)
	Revoked func(g Grant)
}

// DefaultInterval is how often a member compares the whole map with the
// bucket unless told otherwise. What the host's events show (grants made,
// revokes made) is written at once, through Publish and Sync: the
// comparison is there for what they cannot show (an event lost to a full
// ring buffer, a grant made while run was down).
const DefaultInterval = time.Second

// pubWindow is how many writes are on their way at once (each waits for
// the bucket's acknowledgement, which a replicated bucket gives once a
// quorum has the record): a burst goes out in a pipeline, not one round
// trip after another.
const pubWindow = 256

// Join starts sharing: the bucket is made if missing, a watch applies
// every other host's records here (a snapshot first, then updates), and a
// loop writes this host's changes.
func Join(o Options) (*Fleet, error) {
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	js, err := jetstream.New(o.Conn, jetstream.WithPublishAsyncMaxPending(4*pubWindow), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("fleet: jetstream: %w", err)
	}
	f := &Fleet{name: o.Name, gate: keyPart(o.Gate), local: o.Local, nc: o.Conn, js: js, srv: o.Server,
		known: map[Grant]time.Time{}, last: map[uint32]uint64{}, ttlSlack: time.Minute,
		seen: map[Grant]seen{}, stateFile: o.StateFile, instance: o.Instance,
		foreign: map[Grant]seen{}, absent: map[string]bool{}, log: o.Log, revs: map[Grant]uint64{},
		pubs: map[Grant]time.Time{}, wake: make(chan struct{}, 1), applied: o.Applied, revoked: o.Revoked}
	if f.log == nil {
		f.log = func(string, ...any) {}
	}
	f.prior = f.loadState()
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
	st.LastRestart, _ = f.restartReason.Load().(string)
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

// grantKey is g's key: the previous release's for default's grants, the
// service's name after the address for the others'.
func (f *Fleet) grantKey(g Grant) string {
	k := g.Addr.Unmap().As16()
	key := f.gate + ".grant." + hex.EncodeToString(k[:])
	if g.Service != policy.DefaultService {
		key += "." + g.Service
	}
	return key
}

func (f *Fleet) replayKey(id uint32) string {
	return f.gate + ".spa." + strconv.FormatUint(uint64(id), 10)
}

// parseKey reads a key of this gate: a grant's address and service (a key
// without a service is the service default's), or an SPA key id. A key of
// no form grantKey makes (default's named, a name no service may have) is
// not ok.
func (f *Fleet) parseKey(key string) (g Grant, id uint32, isGrant bool, ok bool) {
	rest, found := strings.CutPrefix(key, f.gate+".")
	if !found {
		return Grant{}, 0, false, false
	}
	if h, found := strings.CutPrefix(rest, "grant."); found {
		h, svc, named := strings.Cut(h, ".")
		if !named {
			svc = policy.DefaultService
		} else if svc == policy.DefaultService || policy.CheckServiceName(svc) != nil {
			return Grant{}, 0, false, false
		}
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 16 {
			return Grant{}, 0, false, false
		}
		return Grant{netip.AddrFrom16([16]byte(b)).Unmap(), svc}, 0, true, true
	}
	if s, found := strings.CutPrefix(rest, "spa."); found {
		n, err := strconv.ParseUint(s, 10, 32)
		return Grant{}, uint32(n), false, err == nil
	}
	return Grant{}, 0, false, false
}

// bucket makes or opens the bucket, and its stream, retrying until the
// cluster has a JetStream leader.
func (f *Fleet) bucket(ctx context.Context, replicas int) (jetstream.KeyValue, jetstream.Stream, error) {
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
		var st jetstream.Stream
		if err == nil {
			// Its configuration says direct gets may go to any replica.
			st, err = f.js.Stream(try, "KV_"+Bucket)
		}
		cancel()
		if err == nil {
			return kv, st, nil
		}
		f.fail(fmt.Errorf("make bucket: %w", err))
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(retryEvery):
		}
	}
}

// How a member keeps up with the bucket: a watch delivers the bucket's
// first values, then each change as it is made; every checkEvery a direct
// get (answered by the nearest replica, this host's own when it has one:
// no leader needed) asks whether the bucket holds a revision past the
// newest applied here. One the watch has not delivered within stallAfter
// is fetched that way and applied, and the watch is made again, whatever
// stopped it (its consumer gone with a host, a route lost and back, a new
// leader). A watch whose first values do not all come within firstWithin
// is made again too. Making one gives up after createWithin (no leader to
// make its consumer) and is tried again every retryEvery. A member that
// starts and has no watch with all its first values within readWithin
// (a leader lost with the host it restarts on) reads the bucket whole by
// direct gets instead.
const (
	checkEvery   = 500 * time.Millisecond
	stallAfter   = time.Second
	firstWithin  = 10 * time.Second
	createWithin = 5 * time.Second
	retryEvery   = 250 * time.Millisecond
	readWithin   = 2 * time.Second
)

// jitter is how far an expiry may move converting clocks back and forth
// (a grant applied from the bucket reads back a millisecond or so off):
// expiries closer than this are the same grant's.
const jitter = 100 * time.Millisecond

// watchLoop opens the bucket and follows it until the fleet closes.
func (f *Fleet) watchLoop(ctx context.Context, replicas int) {
	defer f.done.Done()
	kv, st, err := f.bucket(ctx, replicas)
	if err != nil {
		return // closing
	}
	f.kv.Store(&kv)
	f.follow(ctx, kv, st)
}

// watching is one watch of the bucket, with the context that ends it.
type watching struct {
	w      jetstream.KeyWatcher
	cancel context.CancelFunc
	err    error
}

// makeWatch starts a watch of every key: its first values, then updates.
func (f *Fleet) makeWatch(ctx context.Context, kv jetstream.KeyValue) watching {
	wctx, cancel := context.WithCancel(ctx)
	giveUp := time.AfterFunc(createWithin, cancel)
	w, err := kv.WatchAll(wctx)
	if !giveUp.Stop() && err == nil {
		err = fmt.Errorf("not made within %s", createWithin)
	}
	if err != nil {
		cancel()
		return watching{err: err}
	}
	return watching{w: w, cancel: cancel}
}

// end stops the watch without waiting: the library deletes its consumer
// (which takes seconds when the server that had it is gone) and closes
// its channel, which is drained meanwhile.
func (wa watching) end() {
	wa.cancel()
	go func() {
		for range wa.w.Updates() {
		}
	}()
}

// follow applies the bucket's records here until ctx ends (see checkEvery).
// The first watch to deliver all its first values is reconciled with the
// map before this member writes anything.
func (f *Fleet) follow(ctx context.Context, kv jetstream.KeyValue, st jetstream.Stream) {
	var (
		cur      watching // cur.w nil: none
		updates  <-chan jetstream.KeyValueEntry
		made     = make(chan watching, 1)
		making   bool
		retry    <-chan time.Time
		madeAt   time.Time
		current  bool                      // cur's first values are in
		first    []jetstream.KeyValueEntry // until reconciled: the bucket as it is
		pos      uint64                    // the newest revision applied here
		behind   time.Time                 // behind the bucket since, at behindAt
		behindAt uint64
		found    time.Time // when a check last found a record past pos
	)
	start := func() {
		making = true
		go func() { made <- f.makeWatch(ctx, kv) }()
	}
	restart := func(why string) {
		if cur.w != nil {
			cur.end()
			cur, updates = watching{}, nil
			f.restarts.Add(1)
			f.restartReason.Store(why)
		}
		if !making && retry == nil {
			start()
		}
	}
	defer func() {
		if cur.w != nil {
			cur.end()
		}
		if making {
			if wa := <-made; wa.w != nil {
				wa.end()
			}
		}
	}()
	start()
	began := time.Now()
	check := time.NewTicker(checkEvery)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case wa := <-made:
			making = false
			if wa.err != nil {
				f.fail(fmt.Errorf("watch: %w", wa.err))
				retry = time.After(retryEvery)
				continue
			}
			cur, updates, madeAt, current, first = wa, wa.w.Updates(), time.Now(), false, nil
		case <-retry:
			retry = nil
			start()
		case e, ok := <-updates:
			if !ok {
				restart("the watch ended")
				continue
			}
			// Take what else is there at once: one write of the state file
			// and one lock for the lot.
			batch := []jetstream.KeyValueEntry{e}
		more:
			for len(batch) < 1024 && e != nil {
				select {
				case e, ok = <-updates:
					if !ok {
						break more
					}
					batch = append(batch, e)
				default:
					break more
				}
			}
			var live []jetstream.KeyValueEntry
			for _, e := range batch {
				if e == nil { // the first values are in: current from here on
					if !f.ready.Load() {
						f.reconcile(first)
						first = nil
					}
					current = true
					continue
				}
				pos = max(pos, e.Revision())
				if f.ready.Load() {
					live = append(live, e)
				} else {
					first = append(first, e)
				}
			}
			f.apply(live)
			f.rev.Store(pos)
			if current {
				f.lastSync.Store(time.Now().UnixNano())
			}
		case <-check.C:
			if cur.w != nil && !current && time.Since(madeAt) > firstWithin {
				restart(fmt.Sprintf("its first values did not come within %s", firstWithin))
				continue
			}
			if !f.ready.Load() {
				if time.Since(began) >= readWithin {
					if all, last, err := f.read(ctx, st, 0, 0); err != nil {
						f.fail(fmt.Errorf("read the bucket: %w", err))
					} else {
						f.reconcile(all)
						pos, first = max(pos, last), nil
						f.rev.Store(pos)
						f.lastSync.Store(time.Now().UnixNano())
					}
				}
				continue // nothing applied yet to be behind of
			}
			next, err := f.after(ctx, st, pos)
			switch {
			case err != nil:
				// No answer: the next check tells.
			case next == nil:
				// Nothing past pos, or a replica that has not got it yet
				// (one that rejoined, catching up): a record found before
				// is forgotten only when none is found for a while.
				if time.Since(found) > 3*stallAfter {
					behind = time.Time{}
				}
			case behind.IsZero() || pos != behindAt:
				behind, behindAt, found = time.Now(), pos, time.Now()
			case time.Since(behind) >= stallAfter:
				f.catchUp(ctx, st, next, &pos)
				behind = time.Time{}
				restart(fmt.Sprintf("it stopped at revision %d", behindAt))
			default:
				found = time.Now()
			}
		}
	}
}

// after is the bucket's first record past revision rev (nil: none), by a
// direct get. A get goes to any replica, and one cut off, which the others
// take a few seconds to notice (route pings), never answers: a get without
// an answer within 250 ms is tried again twice, for another to answer.
func (f *Fleet) after(ctx context.Context, st jetstream.Stream, rev uint64) (*jetstream.RawStreamMsg, error) {
	var err error
	for range 3 {
		try, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		var m *jetstream.RawStreamMsg
		m, err = st.GetMsg(try, rev+1, jetstream.WithGetMsgSubject("$KV."+Bucket+".>"))
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return nil, nil
		case err == nil:
			return m, nil
		case ctx.Err() != nil:
			return nil, err
		}
	}
	return nil, err
}

// read fetches the bucket's records past revision rev by direct gets, in
// order, at most limit of them (0: to the end, or an error), and the
// revision of the last.
func (f *Fleet) read(ctx context.Context, st jetstream.Stream, rev uint64, limit int) ([]jetstream.KeyValueEntry, uint64, error) {
	var out []jetstream.KeyValueEntry
	for limit == 0 || len(out) < limit {
		m, err := f.after(ctx, st, rev)
		if err != nil {
			return out, rev, err
		}
		if m == nil {
			break
		}
		out = append(out, rawEntry{m})
		rev = m.Sequence
	}
	return out, rev, nil
}

// catchUp applies next, the first record past *pos, and those after it,
// by direct gets (at most a few thousand a call: the next check goes on),
// moving *pos. (next is the one a check found: another direct get may be
// answered by another replica, which may not have it yet.)
func (f *Fleet) catchUp(ctx context.Context, st jetstream.Stream, next *jetstream.RawStreamMsg, pos *uint64) {
	more, last, err := f.read(ctx, st, next.Sequence, 4096)
	if err != nil {
		f.fail(fmt.Errorf("catch up past revision %d: %w", next.Sequence, err))
	} else if len(more) < 4096 {
		f.lastSync.Store(time.Now().UnixNano())
	}
	f.apply(append([]jetstream.KeyValueEntry{rawEntry{next}}, more...))
	*pos = last
	f.rev.Store(last)
}

// rawEntry is a bucket's message fetched by a direct get, read as a watch
// delivers it.
type rawEntry struct{ m *jetstream.RawStreamMsg }

func (r rawEntry) Bucket() string     { return Bucket }
func (r rawEntry) Key() string        { return strings.TrimPrefix(r.m.Subject, "$KV."+Bucket+".") }
func (r rawEntry) Value() []byte      { return r.m.Data }
func (r rawEntry) Revision() uint64   { return r.m.Sequence }
func (r rawEntry) Created() time.Time { return r.m.Time }
func (r rawEntry) Delta() uint64      { return 0 }

// Operation reads the headers as the library's watch does (kv.go): the
// KV-Operation of a delete or purge, or the reason of a marker the server
// left.
func (r rawEntry) Operation() jetstream.KeyValueOp {
	switch r.m.Header.Get("KV-Operation") {
	case "DEL":
		return jetstream.KeyValueDelete
	case "PURGE":
		return jetstream.KeyValuePurge
	}
	switch r.m.Header.Get(jetstream.MarkerReasonHeader) {
	case "MaxAge", "Purge":
		return jetstream.KeyValuePurge
	case "Remove":
		return jetstream.KeyValueDelete
	}
	return jetstream.KeyValuePut
}

// apply merges records into the local state: a later expiry is written
// to the map (after the state file has it), a grant deleted in the bucket
// is revoked here unless the map has a later one made here since (which
// sync then writes), and replay state moves forward. A grant of a service
// this host does not have is kept aside (foreign), not applied.
func (f *Fleet) apply(es []jetstream.KeyValueEntry) {
	if len(es) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	type put struct {
		g      Grant
		exp    time.Time
		origin string
		rev    uint64
	}
	var puts []put
	var dels []Grant
	for _, e := range es {
		if f.applyFwknop(e) {
			continue
		}
		g, id, isGrant, ok := f.parseKey(e.Key())
		if !ok {
			continue
		}
		deleted := e.Operation() != jetstream.KeyValuePut
		var r record
		if !deleted && json.Unmarshal(e.Value(), &r) != nil {
			continue
		}
		if !isGrant {
			if deleted || r.Last <= f.last[id] {
				continue
			}
			f.last[id] = r.Last
			if f.local.ApplyReplay(id, r.Last) == nil && r.Origin != f.name {
				f.received.Add(1)
			}
			continue
		}
		f.revs[g] = e.Revision()
		if deleted {
			if _, had := f.known[g]; had {
				dels = append(dels, g)
			}
			delete(f.foreign, g)
			continue
		}
		if fs, ok := f.foreign[g]; ok {
			// Not this host's service (as of the last try): sync applies
			// it should the host get the service.
			if r.Expires > fs.Expires {
				f.foreign[g] = seen{Expires: r.Expires, Rev: e.Revision()}
			}
			continue
		}
		exp := time.UnixMilli(r.Expires)
		if !exp.After(f.known[g]) {
			continue // not later than what is here: nothing to do
		}
		f.known[g] = exp
		f.see(g, r.Expires, e.Revision())
		if exp.After(now) {
			puts = append(puts, put{g, exp, r.Origin, e.Revision()})
		}
	}
	f.saveState()
	moved := false
	for _, p := range puts {
		err := f.local.Apply(p.g, p.exp)
		switch {
		case err == nil:
			if p.origin != f.name {
				f.received.Add(1)
			}
			if f.applied != nil {
				f.applied(p.g, p.exp, p.origin)
			}
		case errors.Is(err, ErrNoService):
			f.setAside(p.g, seen{Expires: p.exp.UnixMilli(), Rev: p.rev})
			moved = true
		default:
			f.notApplied(p.g, err)
			moved = true
		}
	}
	if moved {
		f.saveState() // the file forgets them
	}
	if len(dels) == 0 {
		return
	}
	grants, err := f.local.Grants()
	if err != nil {
		f.fail(fmt.Errorf("read the grants: %w", err))
		return // known keeps them: the next watch deletes them again
	}
	for _, g := range dels {
		known := f.known[g]
		delete(f.known, g)
		f.forget(g)
		if exp, ok := grants.Expires[g]; ok && exp.Sub(known) > jitter {
			continue // made or lengthened here since: a grant to write, not one to revoke
		}
		if f.local.Revoke(g) == nil {
			f.received.Add(1)
			if f.revoked != nil {
				f.revoked(g)
			}
		}
	}
}

// setAside keeps g, a live grant in the bucket of a service this host does
// not have, out of known and the state file: this host neither applies nor
// revokes it, and says so once a service. f.mu is held.
func (f *Fleet) setAside(g Grant, sn seen) {
	delete(f.known, g)
	f.forget(g)
	f.rewrite = true // the file loses what it had of g
	f.foreign[g] = sn
	if !f.absent[g.Service] {
		f.absent[g.Service] = true
		f.log("fleet: grants of a service this host does not have are kept in the bucket and ignored here",
			"service", g.Service)
	}
}

// notApplied forgets g, which the map did not take (full, or the gate
// gone): not being here, it must not look revoked here to sync. The next
// record of it tries again. f.mu is held.
func (f *Fleet) notApplied(g Grant, err error) {
	f.fail(fmt.Errorf("apply the grant of %s: %w", g, err))
	delete(f.known, g)
	f.forget(g)
	f.rewrite = true
}

// adopt applies the grants set aside of services the host has now (a
// reload added one), and forgets the services it has among those it said
// it lacked. f.mu is held.
func (f *Fleet) adopt(services map[string]bool, now time.Time) {
	for svc := range f.absent {
		if services[svc] {
			delete(f.absent, svc)
		}
	}
	var took []Grant
	for g, sn := range f.foreign {
		if !services[g.Service] {
			continue
		}
		delete(f.foreign, g)
		if exp := time.UnixMilli(sn.Expires); exp.After(now) {
			f.known[g] = exp
			f.see(g, sn.Expires, sn.Rev)
			took = append(took, g)
		}
	}
	if len(took) == 0 {
		return
	}
	f.saveState()
	moved := false
	for _, g := range took {
		err := f.local.Apply(g, f.known[g])
		switch {
		case err == nil:
			f.received.Add(1)
			if f.applied != nil {
				f.applied(g, f.known[g], "")
			}
		case errors.Is(err, ErrNoService): // gone again meanwhile
			f.setAside(g, f.seen[g])
			moved = true
		default:
			f.notApplied(g, err)
			moved = true
		}
	}
	if moved {
		f.saveState()
	}
}

// syncLoop writes this host's changes: grants made or lengthened here,
// grants revoked here, SPA timestamps accepted here — those it is told of
// (Publish, Sync) at once, all of them by comparing the whole map with
// what the bucket has every round. A write that fails (cut off from the
// cluster) is tried again on the next round: the local state is the queue.
// One goroutine does both, so a grant is never written twice at once.
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
		case <-f.wake:
			pubs, ask := f.takePubs()
			if ask {
				f.sync(ctx) // (what pubs has is in the map it reads)
			} else {
				f.publishNow(ctx, pubs)
			}
		}
	}
}

// Publish writes g, made or lengthened on this host until expires (an
// open event, `knockgate grant`), to the bucket at once, with whatever
// else is waiting then: a burst is written in a pipeline. It never blocks.
// Before the member has read the bucket, it writes nothing: the
// comparison that follows the first read writes what the map has.
func (f *Fleet) Publish(g Grant, expires time.Time) {
	f.pubMu.Lock()
	if exp, ok := f.pubs[g]; !ok || expires.After(exp) {
		f.pubs[g] = expires
	}
	f.pubMu.Unlock()
	f.poke()
}

// Sync compares the whole map with the bucket now rather than at the next
// round: a revoke made here (`knockgate revoke`), an SPA packet's replay
// state. It never blocks.
func (f *Fleet) Sync() {
	f.pubMu.Lock()
	f.syncAsk = true
	f.pubMu.Unlock()
	f.poke()
}

func (f *Fleet) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// takePubs takes what Publish and Sync asked for since the last take.
func (f *Fleet) takePubs() (pubs map[Grant]time.Time, sync bool) {
	f.pubMu.Lock()
	defer f.pubMu.Unlock()
	pubs, sync = f.pubs, f.syncAsk
	if len(pubs) > 0 {
		f.pubs = map[Grant]time.Time{}
	}
	f.syncAsk = false
	return pubs, sync
}

// publishNow writes the grants Publish was told of that the bucket does
// not have yet (as far as this member knows), the state file first, and
// those it is told of while they are on their way: a burst of events keeps
// the pipeline full. A Sync asked for meanwhile is left for the loop.
func (f *Fleet) publishNow(ctx context.Context, pubs map[Grant]time.Time) {
	kvp := f.kv.Load()
	if kvp == nil || !f.ready.Load() || len(pubs) == 0 {
		return
	}
	more := func() map[Grant]time.Time {
		f.pubMu.Lock()
		pubs := f.pubs
		if len(pubs) > 0 {
			f.pubs = map[Grant]time.Time{}
		}
		f.pubMu.Unlock()
		return f.unwritten(pubs)
	}
	if n := f.putGrants(ctx, *kvp, f.unwritten(pubs), more); n > 0 {
		f.pending.Store(int64(n)) // the next round tries them again
	}
}

// unwritten are the grants of pubs the bucket does not have as late, as
// far as this member knows; the state file has them first.
func (f *Fleet) unwritten(pubs map[Grant]time.Time) map[Grant]time.Time {
	if len(pubs) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	puts := make(map[Grant]time.Time, len(pubs))
	for g, exp := range pubs {
		if exp.After(now) && exp.Sub(f.known[g]) > jitter {
			puts[g] = exp
			if exp.UnixMilli() > f.seen[g].Expires {
				f.see(g, exp.UnixMilli(), f.rev.Load())
			}
		}
	}
	f.saveState()
	return puts
}

func (f *Fleet) sync(ctx context.Context) {
	kvp := f.kv.Load()
	if kvp == nil || !f.ready.Load() {
		return // nothing is written before the bucket was read
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
	var puts []Grant
	var revokes []Grant
	for g, exp := range grants.Expires {
		// Later by more than the jitter of converting clocks: only a real
		// extension is written. The state file has it first, so a member
		// killed before the write still takes it for its own.
		if exp.After(now) && exp.Sub(f.known[g]) > jitter {
			puts = append(puts, g)
			if exp.UnixMilli() > f.seen[g].Expires {
				f.see(g, exp.UnixMilli(), f.rev.Load())
			}
		}
	}
	for g, exp := range f.known {
		if _, here := grants.Expires[g]; here || !exp.After(now) {
			continue
		}
		if !grants.Services[g.Service] {
			// The service went from this host (a reload) and its grants
			// with it, here only: they stay the fleet's.
			sn := f.seen[g]
			sn.Expires = max(sn.Expires, exp.UnixMilli())
			f.setAside(g, sn)
			continue
		}
		revokes = append(revokes, g)
	}
	f.adopt(grants.Services, now)
	if len(f.revs) > 2*len(f.known)+4096 {
		// Keys gone long ago: a write without their revision reads it
		// first (putGrant), so forgetting one costs a round trip.
		for g := range f.revs {
			if _, ok := f.known[g]; !ok {
				delete(f.revs, g)
			}
		}
	}
	var ids []uint32
	for id, ms := range replay {
		if ms > f.last[id] {
			ids = append(ids, id)
		}
	}
	f.saveState()
	f.mu.Unlock()
	writes := make(map[Grant]time.Time, len(puts))
	for _, g := range puts {
		writes[g] = grants.Expires[g]
	}
	pending += f.putGrants(ctx, kv, writes, nil)
	for _, g := range revokes {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		err := kv.Delete(ctx, f.grantKey(g))
		cancel()
		if err != nil {
			pending++
			continue
		}
		f.mu.Lock()
		delete(f.known, g)
		f.forget(g)
		f.mu.Unlock()
		f.published.Add(1)
	}
	for _, id := range ids {
		if err := f.putReplay(ctx, kv, id, replay[id]); err != nil {
			pending++
		}
	}
	pending += f.syncFwknop(ctx, kv)
	f.pending.Store(int64(pending))
}

// putGrants writes grants, each until its expiry, in a pipeline of
// pubWindow writes at once, and what more (if not nil) gives while they
// are on their way: each expects the key's revision as last seen (none: a
// key never written), so that none overwrites a later expiry another host
// wrote meanwhile; one that finds the key moved on is written again by
// putGrant, which reads it first. It returns how many could not be
// written (the next round tries them again).
func (f *Fleet) putGrants(ctx context.Context, kv jetstream.KeyValue, grants map[Grant]time.Time,
	more func() map[Grant]time.Time) (pending int) {
	if len(grants) == 0 {
		return 0
	}
	type write struct {
		g   Grant
		exp time.Time
		fut jetstream.PubAckFuture
	}
	type put struct {
		g   Grant
		exp time.Time
		rev uint64
	}
	queue := func(grants map[Grant]time.Time) []put {
		f.mu.Lock()
		defer f.mu.Unlock()
		out := make([]put, 0, len(grants))
		for g, exp := range grants {
			out = append(out, put{g, exp, f.revs[g]})
		}
		return out
	}
	todo := queue(grants)
	var again []put
	done := func(w write) {
		select {
		case ack := <-w.fut.Ok():
			f.mu.Lock()
			if w.exp.After(f.known[w.g]) {
				f.known[w.g] = w.exp
			}
			f.revs[w.g] = max(f.revs[w.g], ack.Sequence)
			f.mu.Unlock()
			f.published.Add(1)
		case err := <-w.fut.Err():
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				again = append(again, put{g: w.g, exp: w.exp})
				return
			}
			f.fail(fmt.Errorf("write grant of %s: %w", w.g, err))
			pending++
		case <-ctx.Done():
			pending++
		}
	}
	var flight []write
	for len(todo) > 0 || len(flight) > 0 {
		if len(todo) == 0 && more != nil {
			if m := more(); len(m) > 0 {
				todo = queue(m)
				continue
			}
		}
		if len(todo) == 0 || len(flight) >= pubWindow {
			done(flight[0])
			flight = flight[1:]
			continue
		}
		p := todo[0]
		todo = todo[1:]
		data, err := json.Marshal(record{Version: 1, Expires: p.exp.UnixMilli(), Origin: f.name})
		if err != nil {
			pending++
			continue
		}
		fut, err := f.js.PublishAsync("$KV."+Bucket+"."+f.grantKey(p.g), data,
			jetstream.WithExpectLastSequencePerSubject(p.rev), jetstream.WithMsgTTL(time.Until(p.exp)+f.ttlSlack))
		if err != nil {
			f.fail(fmt.Errorf("write grant of %s: %w", p.g, err))
			pending++
			continue
		}
		flight = append(flight, write{p.g, p.exp, fut})
	}
	for _, p := range again {
		if err := f.putGrant(ctx, kv, p.g, p.exp); err != nil {
			f.fail(fmt.Errorf("write grant of %s: %w", p.g, err))
			pending++
		}
	}
	return pending
}

// putGrant writes g unless the bucket has a later one: a compare-and-swap
// on the key's revision, tried again on a conflict.
func (f *Fleet) putGrant(ctx context.Context, kv jetstream.KeyValue, g Grant, exp time.Time) error {
	rec := record{Version: 1, Expires: exp.UnixMilli(), Origin: f.name}
	ttl := time.Until(exp) + f.ttlSlack
	return f.casPut(ctx, kv, f.grantKey(g), rec, ttl, func(cur record) bool { return cur.Expires >= rec.Expires }, func(rev uint64) {
		f.mu.Lock()
		if exp.After(f.known[g]) {
			f.known[g] = exp
		}
		f.revs[g] = max(f.revs[g], rev)
		f.mu.Unlock()
	})
}

func (f *Fleet) putReplay(ctx context.Context, kv jetstream.KeyValue, id uint32, ms uint64) error {
	rec := record{Version: 1, Last: ms, Origin: f.name}
	return f.casPut(ctx, kv, f.replayKey(id), rec, 0, func(cur record) bool { return cur.Last >= ms }, func(uint64) {
		f.mu.Lock()
		if ms > f.last[id] {
			f.last[id] = ms
		}
		f.mu.Unlock()
	})
}

// casPut writes rec at key unless newer(the current record) says the
// bucket's is as new: created if missing, else updated at the revision it
// was read at; a conflict reads again. done is told the key's revision.
func (f *Fleet) casPut(ctx context.Context, kv jetstream.KeyValue, key string, rec record, ttl time.Duration,
	newer func(record) bool, done func(rev uint64)) error {
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
				done(cur.Revision())
				return nil
			}
			rev = cur.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			// No live value: rev 0 makes it.
		default:
			cancel()
			return err
		}
		var wrote uint64
		wrote, err = f.publish(ctx, kv, key, data, rev, ttl)
		cancel()
		if err == nil {
			f.published.Add(1)
			done(wrote)
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
// a TTL (what KeyValue.Update does, with the TTL it does not take). It
// returns the record's revision.
func (f *Fleet) publish(ctx context.Context, kv jetstream.KeyValue, key string, data []byte, rev uint64, ttl time.Duration) (uint64, error) {
	if rev == 0 {
		opts := []jetstream.KVCreateOpt{}
		if ttl > 0 {
			opts = append(opts, jetstream.KeyTTL(ttl))
		}
		wrote, err := kv.Create(ctx, key, data, opts...)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
		}
		return wrote, err
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	ack, err := f.js.Publish(ctx, "$KV."+Bucket+"."+key, data, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}
