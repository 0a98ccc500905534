package fleet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/knockgate/knockgate/policy"
)

// seen is what a member knew of one grant in the bucket: its expiry (Unix
// ms) and the bucket's revision then (the record's own, or the newest the
// watch had delivered when this host was about to write it).
type seen struct {
	Expires int64  `json:"expires_ms"`
	Rev     uint64 `json:"rev"`
}

// The state file (Options.StateFile) is a log: a header line naming the
// gate and the grant map it is about, then one line per grant recorded,
// "ADDR EXPIRES_MS REV SERVICE", the last for an address and service
// winning. (Version 1 had no services: its lines, without SERVICE, are
// read as the service default's.) A batch of
// records is one append, so a burst of grants costs a line each; the file
// is written anew (to a temporary file renamed into place) when it has
// grown to twice what it holds, and after reconcile. No fsync: the grant
// map it describes is lost with the machine anyway. A line that does not
// read is ignored.
type stateHeader struct {
	Version  int    `json:"v"`
	Gate     string `json:"gate"`
	Instance string `json:"instance"`
}

// stateVersion is the state file's format.
const stateVersion = 2

// loadState reads the state file; one of another gate or grant map, or
// none, is an empty one.
func (f *Fleet) loadState() map[Grant]seen {
	out := map[Grant]seen{}
	if f.stateFile == "" || f.instance == "" {
		return out
	}
	b, err := os.ReadFile(f.stateFile)
	if err != nil {
		if !os.IsNotExist(err) {
			f.fail(fmt.Errorf("read %s: %w", f.stateFile, err))
		}
		return out
	}
	lines := strings.Split(string(b), "\n")
	var h stateHeader
	if json.Unmarshal([]byte(lines[0]), &h) != nil || h.Version < 1 || h.Version > stateVersion ||
		h.Gate != f.gate || h.Instance != f.instance {
		return out
	}
	fields := 4
	if h.Version == 1 {
		fields = 3
	}
	for _, l := range lines[1:] {
		w := strings.Fields(l)
		if len(w) != fields {
			continue
		}
		a, err1 := netip.ParseAddr(w[0])
		exp, err2 := strconv.ParseInt(w[1], 10, 64)
		rev, err3 := strconv.ParseUint(w[2], 10, 64)
		g := Grant{a, policy.DefaultService}
		if fields == 4 {
			g.Service = w[3]
		}
		if err1 == nil && err2 == nil && err3 == nil && policy.CheckServiceName(g.Service) == nil {
			out[g] = seen{Expires: exp, Rev: rev}
		}
	}
	return out
}

// see records that the bucket has (or is about to have) grant g until
// expires; f.mu is held.
func (f *Fleet) see(g Grant, expires int64, rev uint64) {
	f.seen[g] = seen{Expires: expires, Rev: rev}
	f.unsaved = append(f.unsaved, g)
}

// forget drops g's record; the file loses it when it is next written anew
// (an entry too many only ever makes a restarted member revoke a grant the
// bucket has deleted anyway). f.mu is held.
func (f *Fleet) forget(g Grant) {
	delete(f.seen, g)
}

// saveState writes the records made since the last save: appended, or the
// file written anew (rewrite, or grown). f.mu is held.
func (f *Fleet) saveState() {
	if f.stateFile == "" || len(f.unsaved) == 0 && !f.rewrite {
		return
	}
	var b strings.Builder
	grown := f.logLines+len(f.unsaved) > 2*len(f.seen)+1024
	if f.rewrite || grown || f.logLines == 0 {
		cut := time.Now().Add(-f.ttlSlack).UnixMilli()
		h, _ := json.Marshal(stateHeader{Version: stateVersion, Gate: f.gate, Instance: f.instance})
		b.Write(h)
		b.WriteByte('\n')
		n := 0
		for g, sn := range f.seen {
			if sn.Expires < cut {
				delete(f.seen, g) // long expired everywhere
				continue
			}
			fmt.Fprintf(&b, "%s %d %d %s\n", g.Addr, sn.Expires, sn.Rev, g.Service)
			n++
		}
		err := os.MkdirAll(filepath.Dir(f.stateFile), 0o700)
		tmp := f.stateFile + ".tmp"
		if err == nil {
			err = os.WriteFile(tmp, []byte(b.String()), 0o600)
		}
		if err == nil {
			err = os.Rename(tmp, f.stateFile)
		}
		if err != nil {
			f.fail(fmt.Errorf("write %s: %w", f.stateFile, err))
			return
		}
		f.logLines, f.rewrite = n, false
	} else {
		for _, g := range f.unsaved {
			if sn, ok := f.seen[g]; ok {
				fmt.Fprintf(&b, "%s %d %d %s\n", g.Addr, sn.Expires, sn.Rev, g.Service)
			}
		}
		fd, err := os.OpenFile(f.stateFile, os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			_, err = fd.WriteString(b.String())
			if cerr := fd.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			f.fail(fmt.Errorf("write %s: %w", f.stateFile, err))
			f.logLines = 0 // written anew next time
			return
		}
		f.logLines += len(f.unsaved)
	}
	f.unsaved = f.unsaved[:0]
}

// reconcile takes the bucket as the first watch delivered it (the newest
// record of every key), with the map as it is and what this member knew
// before (f.prior), and makes them one before this member writes anything.
// For each grant (an address and a service):
//
//   - The bucket has a live grant, and the map too, or this member never
//     knew it: max(map, bucket) as always (a later one here is written by
//     sync).
//   - The bucket has a live grant no later than the one this member knew,
//     and the map has none: it was revoked here while this member was away
//     (`knockgate revoke`); sync writes the revoke.
//   - The bucket deleted the grant after this member knew it (a later
//     revision) and the map's is no later than that one: it was revoked
//     while this member was away; it is revoked here.
//   - Otherwise a grant in the map is this host's own (made by a knock, SPA
//     or `knockgate grant` while this member was away, or written before
//     it went): sync writes it.
//
// A grant of a service the host does not have (now) is none of these: it
// was not revoked here, whatever the map lacks; apply sets it aside.
func (f *Fleet) reconcile(first []jetstream.KeyValueEntry) {
	f.mu.Lock()
	grants, err := f.local.Grants()
	read := err == nil
	if !read {
		// Without the map nothing can be told apart: the records are
		// applied as they are (apply, below).
		f.fail(fmt.Errorf("read the grants: %w", err))
	}
	prior := f.prior
	f.prior = nil
	if !read {
		prior = nil
	}
	var live []jetstream.KeyValueEntry
	var revokes []Grant
	now := time.Now()
	slack := jitter.Milliseconds()
	for _, e := range first {
		g, _, isGrant, ok := f.parseKey(e.Key())
		if !ok || !isGrant {
			live = append(live, e)
			continue
		}
		p, knew := prior[g]
		mine, here := grants.Expires[g]
		if e.Operation() != jetstream.KeyValuePut {
			if here && knew && e.Revision() > p.Rev && mine.UnixMilli() <= p.Expires+slack {
				revokes = append(revokes, g)
			}
			continue
		}
		var r record
		if json.Unmarshal(e.Value(), &r) != nil {
			continue
		}
		if !here && knew && read && grants.Services[g.Service] && r.Expires <= p.Expires+slack &&
			time.UnixMilli(r.Expires).After(now) {
			f.known[g] = time.UnixMilli(r.Expires)
			f.see(g, r.Expires, e.Revision())
			continue
		}
		live = append(live, e)
	}
	// Revoked before the file forgets what it knew of them (apply below
	// rewrites it from the bucket's records): killed in between, the next
	// start revokes them again.
	for _, g := range revokes {
		if f.local.Revoke(g) == nil {
			f.received.Add(1)
			if f.revoked != nil {
				f.revoked(g)
			}
		}
	}
	f.rewrite = true // what the file knew and the bucket no longer has goes
	f.mu.Unlock()
	f.apply(live)
	f.mu.Lock()
	f.saveState() // when apply had nothing to write
	f.mu.Unlock()
	f.ready.Store(true)
}
