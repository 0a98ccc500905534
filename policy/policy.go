// Package policy is what a gate lets through, in pure Go: ports, port
// lists, durations and CIDRs as users write them, the services of a gate and
// the rules they keep, and how two policies differ, setting by setting. It
// imports nothing of BPF or of Linux, so it builds for every GOOS: the
// client (knock, keygen) can use it as the gate does, and maps encodes it
// into the program's ABI.
package policy

import (
	"net/netip"
	"slices"
	"time"
)

// DefaultService is the service every gate has: the top-level options
// configure it.
const DefaultService = "default"

// MaxSteps is the longest knock sequence the program takes (KG_MAX_STEPS;
// maps checks it against the C ABI, which this package cannot see).
const MaxSteps = 8

// Service is one door of a gate: the ports it protects, what opens them
// (its knock sequence; SPA keys are the gate's), for how long, and who
// passes without opening them.
type Service struct {
	// Name is [a-z0-9][a-z0-9_-]{0,30}; a policy's first service is
	// DefaultService.
	Name string
	// Sequence is the knock sequence that grants the service, step by
	// step; nil: none (SPA only).
	Sequence []Port
	// StepTimeout: each step must follow the previous one within it.
	StepTimeout time.Duration
	// Open is how long a grant of the service lasts.
	Open time.Duration
	// Protect are the ports closed to sources without a grant of the
	// service. ProtectAll protects every TCP and UDP port no other service
	// claims (Protect is then ignored): the host's own flows, and its DHCP
	// client, still get their replies.
	Protect    []Port
	ProtectAll bool
	// Allow are the sources that always reach this service's ports.
	Allow []netip.Prefix
}

// Policy is everything a gate decides: its services, and what holds for
// all of them.
type Policy struct {
	// Services are the gate's services; Services[0] is DefaultService.
	Services []Service
	// Allow are the sources that always reach every service's ports.
	Allow []netip.Prefix
	// Flows: the host's flows are learned on egress and their replies pass
	// protected ports, until they close or idle past FlowIdleTCP or
	// FlowIdleUDP. A session a grant let in outlives the grant, whatever
	// its service.
	Flows       bool
	FlowIdleTCP time.Duration
	FlowIdleUDP time.Duration
	// SPAPort is the UDP port of single-packet authorization datagrams (0:
	// none); SPAWindow how far their timestamps may be from the gate's
	// clock, either way.
	SPAPort   uint16
	SPAWindow time.Duration
}

// Default is the service DefaultService, or nil when p has none.
func (p *Policy) Default() *Service { return p.Service(DefaultService) }

// Service is the service called name, or nil.
func (p *Policy) Service(name string) *Service {
	for i := range p.Services {
		if p.Services[i].Name == name {
			return &p.Services[i]
		}
	}
	return nil
}

// Clone is a deep copy of p: changing one leaves the other as it was.
func (p *Policy) Clone() Policy {
	c := *p
	c.Allow = slices.Clone(p.Allow)
	c.Services = make([]Service, len(p.Services))
	for i := range p.Services {
		c.Services[i] = p.Services[i].clone()
	}
	if p.Services == nil {
		c.Services = nil
	}
	return c
}

func (s *Service) clone() Service {
	c := *s
	c.Sequence = slices.Clone(s.Sequence)
	c.Protect = slices.Clone(s.Protect)
	c.Allow = slices.Clone(s.Allow)
	return c
}

// Protector is the service whose grant a packet to port needs, or nil
// when port is open to all: the service that lists it, else the one that
// protects all (which also guards the knock steps against what is no knock).
func (p *Policy) Protector(port Port) *Service {
	var all *Service
	for i := range p.Services {
		s := &p.Services[i]
		if s.ProtectAll {
			all = s
			continue
		}
		if slices.Contains(s.Protect, port) {
			return s
		}
	}
	if all != nil && (port.Proto == TCP || port.Proto == UDP) {
		return all
	}
	return nil
}

// Protects says whether some service protects port.
func (p *Policy) Protects(port Port) bool { return p.Protector(port) != nil }
