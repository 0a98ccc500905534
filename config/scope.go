package config

import (
	"fmt"
	"slices"

	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// CheckKeys checks SPA keys against the policy they are to serve: every
// service a key names (services=, default without it) must be p's, and a
// service of p other than default that has no knock sequence must be in
// some key's scope, or nothing could ever open it. Errors name the key and
// the service.
func CheckKeys(p *policy.Policy, keys []spa.Key) error {
	for i := range keys {
		k := &keys[i]
		for _, name := range k.Scope() {
			if p.Service(name) == nil {
				return fmt.Errorf("SPA key %s (id %d) names service %s, which the gate does not have (it has %s)",
					k.Name, k.ID, name, ServiceNames(p))
			}
		}
	}
	for i := range p.Services {
		svc := &p.Services[i]
		if svc.Name == policy.DefaultService || len(svc.Sequence) > 0 {
			continue
		}
		if !slices.ContainsFunc(keys, func(k spa.Key) bool { return slices.Contains(k.Scope(), svc.Name) }) {
			return &noKeyError{svc.Name}
		}
	}
	return nil
}

// noKeyError: a service without a sequence that no key may open.
type noKeyError struct{ service string }

func (e *noKeyError) Error() string {
	return fmt.Sprintf("service %s: sequence is none and no SPA key names it (services=%s): nothing could ever open it", e.service, e.service)
}
