package policy

import (
	"fmt"
	"regexp"
	"time"
)

// MaxServices is how many services a gate holds: an SPA key's scope is a
// 32-bit mask of them (KG_MAX_SERVICES).
const MaxServices = 32

// Validate reports the first thing wrong with p, naming the bad value, and
// both services when two of them disagree (two names of one ServiceHash: a
// *HashError).
func (p *Policy) Validate() error {
	if len(p.Services) == 0 || p.Services[0].Name != DefaultService {
		return fmt.Errorf("the first service must be %s", DefaultService)
	}
	if len(p.Services) > MaxServices {
		return fmt.Errorf("%d services: a gate holds at most %d (an SPA key's scope is a 32-bit mask)", len(p.Services), MaxServices)
	}
	for i := range p.Services {
		s := &p.Services[i]
		if err := CheckServiceName(s.Name); err != nil {
			return err
		}
		for _, t := range p.Services[:i] {
			if t.Name == s.Name {
				return fmt.Errorf("service %s is defined twice", s.Name)
			}
			if ServiceHash(t.Name) == ServiceHash(s.Name) {
				return &HashError{t.Name, s.Name}
			}
		}
	}
	for i := range p.Services {
		if err := p.Services[i].validate(p); err != nil {
			return err
		}
	}
	for i := range p.Services {
		for j := range i {
			if err := disjoint(&p.Services[j], &p.Services[i]); err != nil {
				return err
			}
		}
	}
	if p.SPAPort != 0 {
		// The program counts the window in whole milliseconds.
		if p.SPAWindow < time.Millisecond || p.SPAWindow > time.Hour || p.SPAWindow%time.Millisecond != 0 {
			return fmt.Errorf("SPA window %s must be whole milliseconds, from 1ms to 1h", p.SPAWindow)
		}
	}
	if p.Flows && (p.FlowIdleTCP <= 0 || p.FlowIdleUDP <= 0) {
		return fmt.Errorf("flow idle timeouts %s (tcp) and %s (udp) must be positive", p.FlowIdleTCP, p.FlowIdleUDP)
	}
	for _, a := range p.Allow {
		if !a.IsValid() {
			return fmt.Errorf("allow list: bad CIDR %s", a)
		}
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,30}$`)

// validate checks what concerns s alone (and the gate's SPA port, which
// every service's ports must keep clear of).
func (s *Service) validate(p *Policy) error {
	if len(s.Sequence) == 0 && p.SPAPort == 0 {
		what := "the gate"
		if s.Name != DefaultService {
			what = "it"
		}
		return s.errorf("sequence is none and there is no SPA port: nothing could ever open %s", what)
	}
	if len(s.Sequence) > MaxSteps {
		return s.errorf("sequence has %d steps, at most %d allowed", len(s.Sequence), MaxSteps)
	}
	for i := range s.Sequence {
		for j := range i {
			// A retransmitted SYN of step j would then complete step i.
			if s.Sequence[i] == s.Sequence[j] {
				return s.errorf("sequence step %d (%s) repeats step %d", i+1, s.Sequence[i], j+1)
			}
		}
	}
	if !s.ProtectAll {
		// (Under protect all, the steps stay knocks: they are judged first.)
		for _, k := range s.Sequence {
			for _, q := range s.Protect {
				if k == q {
					return s.errorf("port %s is both a knock step and protected", k)
				}
			}
		}
	}
	if p.SPAPort != 0 {
		spaPort := Port{Num: p.SPAPort, Proto: UDP}
		for _, k := range s.Sequence {
			if k == spaPort {
				return s.errorf("port %s is both a knock step and the SPA port", k)
			}
		}
		if !s.ProtectAll {
			for _, q := range s.Protect {
				if q == spaPort {
					return s.errorf("port %s is both protected and the SPA port", q)
				}
			}
		}
	}
	if s.StepTimeout <= 0 {
		return s.errorf("step timeout %s must be positive", s.StepTimeout)
	}
	if s.Open <= 0 {
		return s.errorf("open window %s must be positive", s.Open)
	}
	for _, a := range s.Allow {
		if !a.IsValid() {
			return s.errorf("allow list: bad CIDR %s", a)
		}
	}
	return nil
}

// errorf is an error about s: its name leads, except for the default
// service's, whose errors read as they did before services.
func (s *Service) errorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if s.Name == DefaultService {
		return err
	}
	return fmt.Errorf("service %s: %w", s.Name, err)
}

// disjoint checks the rules between two services: a port is protected by
// at most one of them, at most one protects all, and a knock step is a step
// of one sequence only and protected by no other service (a protect-all
// service does not claim it: the steps are judged first).
func disjoint(a, b *Service) error {
	if a.ProtectAll && b.ProtectAll {
		return fmt.Errorf("services %s and %s both protect all ports (at most one service may)", a.Name, b.Name)
	}
	if !a.ProtectAll && !b.ProtectAll {
		for _, q := range a.Protect {
			for _, r := range b.Protect {
				if q == r {
					return fmt.Errorf("port %s is protected by both services %s and %s", q, a.Name, b.Name)
				}
			}
		}
	}
	for _, k := range a.Sequence {
		for _, l := range b.Sequence {
			if k == l {
				return fmt.Errorf("port %s is a knock step of both services %s and %s", k, a.Name, b.Name)
			}
		}
	}
	for _, pair := range [][2]*Service{{a, b}, {b, a}} {
		steps, other := pair[0], pair[1]
		if other.ProtectAll {
			continue
		}
		for _, k := range steps.Sequence {
			for _, q := range other.Protect {
				if k == q {
					return fmt.Errorf("port %s is a knock step of service %s and protected by service %s", k, steps.Name, other.Name)
				}
			}
		}
	}
	return nil
}
