package service

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/knockgate/knockgate/bpf"
	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/maps"
)

// fwknop's clients. The program verifies each datagram's HMAC under the
// access.conf's keys and hands a verified one over on a ring buffer (see
// bpf/fwknop.h for why a ring and not a socket: nothing of the datagram
// ever reaches the network stack, so the SPA port looks filtered whether
// run is up or not, no host firewall stands between, and run binds no
// port); run decrypts it and decides as fwknopd would (package fwknop),
// then grants through the program's own grant path, which counts it and
// sends the open event naming the stanza. Every outcome is counted in the
// program's counters and logged.

// fwknopState is run's part of fwknop: the access.conf in force and the
// reader.
type fwknopState struct {
	conf atomic.Pointer[fwknopConf]
	// now is the wall clock datagrams are judged by (tests set it).
	now func() time.Time
}

type fwknopConf struct {
	access *fwknop.Access
	window time.Duration
}

// outcomeCounters are the program's counters of run's outcomes.
var outcomeCounters = map[fwknop.Outcome]bpf.KnockgateCounter{
	fwknop.Accepted:       bpf.KnockgateCounterCOUNTER_FWKNOP_ACCEPTED,
	fwknop.NoStanza:       bpf.KnockgateCounterCOUNTER_FWKNOP_NO_STANZA,
	fwknop.Undecryptable:  bpf.KnockgateCounterCOUNTER_FWKNOP_UNDECRYPTABLE,
	fwknop.Clock:          bpf.KnockgateCounterCOUNTER_FWKNOP_CLOCK,
	fwknop.SourceRequired: bpf.KnockgateCounterCOUNTER_FWKNOP_SOURCE_REQUIRED,
	fwknop.Username:       bpf.KnockgateCounterCOUNTER_FWKNOP_USERNAME,
	fwknop.Unsupported:    bpf.KnockgateCounterCOUNTER_FWKNOP_UNSUPPORTED,
	fwknop.Ports:          bpf.KnockgateCounterCOUNTER_FWKNOP_PORTS,
	fwknop.NoService:      bpf.KnockgateCounterCOUNTER_FWKNOP_NO_SERVICE,
}

func init() {
	for _, o := range fwknop.Outcomes() {
		if _, ok := outcomeCounters[o]; !ok {
			panic("service: fwknop outcome " + o.String() + " has no counter")
		}
	}
}

// applyFwknop makes the gate take the datagrams of s's access.conf (none
// without one): its HMAC keys in the program, the file and the window for
// the reader. The file's warnings (keys ignored) are logged.
func (svc *service) applyFwknop(s *config.Settings) error {
	var keys []maps.FwknopKey
	if s.Fwknop != nil {
		hk, users := s.Fwknop.HMACKeys()
		for i := range hk {
			keys = append(keys, maps.FwknopKey{HMACKey: hk[i], Name: maps.FwknopStanzaNames(users[i])})
		}
		for _, w := range s.Fwknop.Warnings {
			svc.logger().Warn("fwknop access file: " + w)
		}
	}
	if err := svc.gate.SetFwknopKeys(keys); err != nil {
		return err
	}
	svc.fwknop.conf.Store(&fwknopConf{access: s.Fwknop, window: s.FwknopWindow})
	return nil
}

// serveFwknop reads the datagrams the program hands over until the
// returned stop is called, and forgets, once a minute, the replay entries
// no window can take any more.
func (svc *service) serveFwknop() (stop func(), err error) {
	rd, err := svc.gate.OpenFwknop()
	if err != nil {
		return nil, err
	}
	if svc.fwknop.now == nil {
		svc.fwknop.now = time.Now
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			d, err := rd.Read()
			if errors.Is(err, maps.ErrClosed) {
				return
			}
			if err != nil {
				svc.logger().Error("read fwknop datagrams", "error", err)
				return
			}
			svc.fwknopDatagram(&d)
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if _, err := svc.gate.FwknopForget(svc.fwknop.now()); err != nil {
					svc.logger().Warn("forget old fwknop replay entries", "error", err)
				}
			}
		}
	}()
	return func() {
		close(quit)
		rd.Close()
		wg.Wait()
	}, nil
}

// fwknopDatagram decides one datagram the program verified, and does what
// it asks if it is accepted.
func (svc *service) fwknopDatagram(d *maps.FwknopDatagram) {
	log := svc.logger()
	g := svc.gate
	c := svc.fwknop.conf.Load()
	now := svc.fwknop.now()
	digest, _ := d.Digest()
	attrs := []any{"src", d.Src.String(), "digest", digest.String()[:16]}
	cfg, err := g.Config()
	if err != nil {
		log.Error("fwknop datagram: read the configuration", append(attrs, "error", err)...)
		return
	}
	var dec fwknop.Decision
	if c == nil || c.access == nil {
		// A datagram verified under keys since removed, left on the ring.
		dec = fwknop.Decision{Outcome: fwknop.NoStanza, Why: "no fwknop access file in force"}
	} else {
		dec = c.access.Decide(&fwknop.Datagram{Payload: d.Payload, Src: d.Src, Now: now, Window: c.window,
			Protects: func(p fwknop.Port) string {
				if s := cfg.Policy.Protector(config.FwknopPolicyPort(p)); s != nil {
					return s.Name
				}
				return ""
			}})
	}
	// Remembered until no window can take a copy: its timestamp's, once
	// known; else an hour (a copy is refused here meanwhile anyway, and
	// decrypts no better later).
	window := time.Duration(0)
	if c != nil {
		window = c.window
	}
	until := now.Add(maps.FwknopUndecidedFor)
	if dec.Msg != nil {
		until = time.Unix(dec.Msg.Timestamp, 0).Add(window + time.Minute)
	}
	if err := g.FwknopKeepUntil(digest, until); err != nil {
		log.Warn("fwknop datagram: record it against replays", append(attrs, "error", err)...)
	}
	svc.fleet.publishFwknop(digest, until)
	if dec.Stanza != nil {
		attrs = append(attrs, "stanza", dec.Stanza.Num, "stanza_line", dec.Stanza.Line)
	}
	if dec.Msg != nil {
		attrs = append(attrs, "user", dec.Msg.User, "asks", strings.Join(dec.Msg.Access, ","), "allow", dec.Msg.Allow.String())
	}
	if dec.Outcome == fwknop.Accepted {
		n, err := svc.fwknopGrant(&dec)
		if err != nil {
			log.Error("fwknop datagram accepted, but the grant failed", append(attrs, "error", err)...)
			return
		}
		svc.countFwknop(dec.Outcome)
		log.Info("fwknop datagram accepted", append(attrs, "open", dec.Addr.String(), "services", strings.Join(dec.Services, ","),
			"granted", n, "timeout", dec.Timeout.String())...)
		return
	}
	svc.countFwknop(dec.Outcome)
	log.Warn("fwknop datagram refused", append(attrs, "reason", "fwknop_"+dec.Outcome.String(), "why", dec.Why)...)
}

func (svc *service) countFwknop(o fwknop.Outcome) {
	if err := svc.gate.CountFwknop(outcomeCounters[o]); err != nil {
		svc.logger().Warn("count an fwknop outcome", "outcome", o.String(), "error", err)
	}
}

// fwknopGrant grants dec's address its services for its timeout, by the
// services' indices under the configuration in force, picked again should
// it change meanwhile.
func (svc *service) fwknopGrant(dec *fwknop.Decision) (int, error) {
	for range 5 {
		cfg, err := svc.gate.Config()
		if err != nil {
			return 0, err
		}
		fg := &maps.FwknopGrant{Addr: dec.Addr, Stanza: dec.Stanza.Num, Open: dec.Timeout, Generation: cfg.Generation,
			Services: map[int]maps.Port{}}
		for _, name := range dec.Services {
			i, ok := cfg.Index[name]
			if !ok {
				continue // removed meanwhile
			}
			for _, p := range dec.Ports {
				pp := config.FwknopPolicyPort(p)
				if s := cfg.Policy.Protector(pp); s != nil && s.Name == name {
					fg.Services[i] = pp
					break
				}
			}
		}
		n, err := svc.gate.FwknopGrant(fg)
		if errors.Is(err, maps.ErrStaleGeneration) {
			continue
		}
		return n, err
	}
	return 0, fmt.Errorf("the configuration kept changing: %w", maps.ErrStaleGeneration)
}

// publishFwknop shares a datagram this host handed over with the fleet,
// which remembers it as long (nothing without a fleet).
func (m *member) publishFwknop(d maps.FwknopDigest, until time.Time) {
	if m == nil {
		return
	}
	m.fl.PublishFwknop(d, until)
}

// ApplyFwknop remembers a datagram another host of the fleet handed over:
// a copy of it is refused here as there.
func (l gateLocal) ApplyFwknop(d [32]byte, until time.Time) error {
	_, err := l.g.FwknopRemember(maps.FwknopDigest(d), until)
	return err
}
