package fwknop

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Outcome is what became of a datagram whose HMAC the XDP program
// verified: accepted, or the reason it was refused.
type Outcome int

const (
	Accepted Outcome = iota
	// NoStanza: no stanza's SOURCE holds the datagram's source with that
	// HMAC key.
	NoStanza
	// Undecryptable: the key of no such stanza decrypts it to a message
	// whose digest matches.
	Undecryptable
	// Clock: its timestamp is outside the window.
	Clock
	// SourceRequired: it asks for 0.0.0.0 (fwknop -s) and the stanza has
	// REQUIRE_SOURCE_ADDRESS.
	SourceRequired
	// Username: REQUIRE_USERNAME names another user.
	Username
	// Unsupported: a command (fwknop -C) or NAT (-N) message.
	Unsupported
	// Ports: a proto/port asked for is outside what the stanza may open
	// (RESTRICT_PORTS, or not in OPEN_PORTS): the whole datagram is
	// refused, as fwknopd does.
	Ports
	// NoService: no port asked for is one a service of the gate protects:
	// nothing to open.
	NoService
	outcomes
)

var outcomeNames = [outcomes]string{"accepted", "no_stanza", "undecryptable", "clock",
	"source_required", "username", "unsupported", "ports", "no_service"}

func (o Outcome) String() string {
	if o < 0 || o >= outcomes {
		return fmt.Sprintf("outcome(%d)", int(o))
	}
	return outcomeNames[o]
}

// Outcomes lists every outcome, in order.
func Outcomes() []Outcome {
	out := make([]Outcome, outcomes)
	for i := range out {
		out[i] = Outcome(i)
	}
	return out
}

// Datagram is one datagram the XDP program verified and handed over.
type Datagram struct {
	Payload []byte
	Src     netip.Addr // unmapped: IPv4 or IPv6
	Now     time.Time
	// Window is how far its timestamp may be from Now, either way
	// (fwknopd's MAX_SPA_PACKET_AGE, 120 s by default).
	Window time.Duration
	// Protects says which services protect a proto/port ("" : none).
	Protects func(Port) string
}

// Decision is what to do with a datagram.
type Decision struct {
	Outcome Outcome
	// Stanza is the stanza that decided (accepted it, or refused it last);
	// nil for NoStanza.
	Stanza *Stanza
	Msg    *Message
	// Addr is the address to open; Services the services to open it for
	// (each once, in the order of the ports asked for) and Ports the
	// ports asked for; Timeout how long.
	Addr     netip.Addr
	Services []string
	Ports    []Port
	Timeout  time.Duration
	// Why says what a refusal was, for the log.
	Why string
}

// Decide decides a datagram as fwknopd's incoming_spa does, stanza by
// stanza in the file's order: a stanza whose SOURCE holds the source and
// whose keys verify and decrypt the datagram, then its checks (the clock,
// the address to open, REQUIRE_SOURCE_ADDRESS, REQUIRE_USERNAME, the
// message's type, the ports); a stanza whose check fails hands the
// datagram to the next one, and the first whose checks all pass decides.
// A refusal is the last stanza's that tried. Beyond fwknopd: a datagram
// that comes over IPv6 asking for 0.0.0.0 opens its IPv6 source.
func (a *Access) Decide(d *Datagram) Decision {
	dec := Decision{Outcome: NoStanza, Why: "no stanza's SOURCE holds " + d.Src.String() + " with this HMAC key"}
	_, body, err := Tag(d.Payload)
	if err != nil {
		dec.Why = err.Error()
		return dec
	}
	for i := range a.Stanzas {
		s := &a.Stanzas[i]
		if !s.holds(d.Src) || !Verify(d.Payload, s.HMACKey) {
			continue
		}
		msg, err := Decrypt(body, s.Key, s.Mode)
		if err != nil {
			dec = Decision{Outcome: Undecryptable, Stanza: s, Why: err.Error()}
			continue
		}
		dec = s.check(d, msg)
		if dec.Outcome == Accepted {
			return dec
		}
	}
	return dec
}

// holds: the stanza's SOURCE holds addr.
func (s *Stanza) holds(addr netip.Addr) bool {
	for _, p := range s.Source {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// check is one stanza's checks of a message it decrypted, in fwknopd's
// order.
func (s *Stanza) check(d *Datagram, m *Message) Decision {
	dec := Decision{Stanza: s, Msg: m}
	refuse := func(o Outcome, format string, args ...any) Decision {
		dec.Outcome, dec.Why = o, fmt.Sprintf(format, args...)
		return dec
	}
	// set_timeout: the client's own (message types with one), up to
	// MAX_FW_TIMEOUT; else FW_ACCESS_TIMEOUT.
	dec.Timeout = s.Timeout
	if m.ClientTimeout > 0 {
		dec.Timeout = min(time.Duration(m.ClientTimeout)*time.Second, s.MaxTimeout)
	}
	// check_pkt_age: whole seconds, as time(2) gives them.
	diff := d.Now.Unix() - m.Timestamp
	if diff > int64(d.Window/time.Second) || -diff > int64(d.Window/time.Second) {
		return refuse(Clock, "timestamp %s is %ds from the gate's clock (window ±%s)",
			time.Unix(m.Timestamp, 0).UTC().Format(time.RFC3339), diff, d.Window)
	}
	dec.Addr = m.Allow
	if m.Allow.IsUnspecified() {
		if s.RequireSource {
			return refuse(SourceRequired, "asks for 0.0.0.0 (fwknop -s) and the stanza has REQUIRE_SOURCE_ADDRESS")
		}
		dec.Addr = d.Src
	}
	if s.RequireUser != "" && m.User != s.RequireUser {
		return refuse(Username, "user %q is not REQUIRE_USERNAME %q", m.User, s.RequireUser)
	}
	switch m.Type {
	case AccessMsg, ClientTimeoutAccessMsg:
	case CommandMsg:
		return refuse(Unsupported, "a command message (fwknop -C): the gate runs no commands")
	default:
		return refuse(Unsupported, "a NAT access message (fwknop -N): not supported")
	}
	for _, item := range m.Access {
		p, err := ParsePort(item)
		if err != nil {
			return refuse(Ports, "%v", err)
		}
		dec.Ports = append(dec.Ports, p)
	}
	for _, p := range dec.Ports {
		for _, r := range s.Restrict {
			if p == r {
				return refuse(Ports, "%s is in RESTRICT_PORTS", p)
			}
		}
		if len(s.Open) > 0 && !contains(s.Open, p) {
			return refuse(Ports, "%s is not in OPEN_PORTS", p)
		}
	}
	for _, p := range dec.Ports {
		if svc := d.Protects(p); svc != "" && !contains(dec.Services, svc) {
			dec.Services = append(dec.Services, svc)
		}
	}
	if len(dec.Services) == 0 {
		return refuse(NoService, "no service of the gate protects %s", formatPorts(dec.Ports))
	}
	dec.Outcome = Accepted
	return dec
}

func contains[T comparable](list []T, x T) bool {
	for _, y := range list {
		if x == y {
			return true
		}
	}
	return false
}

func formatPorts(ps []Port) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
