package config

import (
	"fmt"
	"slices"

	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// Check checks a policy and the SPA keys that are to serve it, as one: the
// policy's own rules (policy.Validate), then the keys against its services
// (a *ScopeError): every service a key names (services=, default without
// it) must be p's, and a service of p other than default that has no knock
// sequence must be in some key's scope, or nothing could ever open it.
func Check(p *policy.Policy, keys []spa.Key) error { return CheckWith(p, keys, nil) }

// CheckWith is Check where a service without a sequence that opens(its
// name) (an fwknop stanza may open it) needs no key either.
func CheckWith(p *policy.Policy, keys []spa.Key, opens func(service string) bool) error {
	if err := p.Validate(); err != nil {
		return err
	}
	for i := range keys {
		k := &keys[i]
		for _, name := range k.Scope() {
			if p.Service(name) == nil {
				return &ScopeError{Service: name, Key: k, has: ServiceNames(p)}
			}
		}
	}
	for i := range p.Services {
		svc := &p.Services[i]
		if svc.Name == policy.DefaultService || len(svc.Sequence) > 0 {
			continue
		}
		if opens != nil && opens(svc.Name) {
			continue
		}
		if !slices.ContainsFunc(keys, func(k spa.Key) bool { return slices.Contains(k.Scope(), svc.Name) }) {
			return &ScopeError{Service: svc.Name}
		}
	}
	return nil
}

// ScopeError is SPA keys that do not fit a policy's services: Key names
// Service, which the policy does not have; or (Key nil) Service has no
// knock sequence and no key may open it.
type ScopeError struct {
	Service string
	Key     *spa.Key
	has     string // the policy's services, for the message
}

func (e *ScopeError) Error() string {
	if e.Key == nil {
		return fmt.Sprintf("service %s: sequence is none and no SPA key names it (services=%s): nothing could ever open it", e.Service, e.Service)
	}
	return fmt.Sprintf("SPA key %s (id %d) names service %s, which the gate does not have (it has %s)",
		e.Key.Name, e.Key.ID, e.Service, e.has)
}
