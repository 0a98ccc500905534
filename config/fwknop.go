package config

import (
	"errors"
	"strings"

	"github.com/knockgate/knockgate/fwknop"
	"github.com/knockgate/knockgate/policy"
)

// fwknop's clients: run reads fwknopd's access.conf (fwknop_access) and
// takes their datagrams on the SPA port (package fwknop; bpf/fwknop.h).

// DefaultFwknopWindow is fwknopd's MAX_SPA_PACKET_AGE.
const DefaultFwknopWindow = "120s"

// accessFileValue reads an access.conf when it is given, so a bad file is
// refused with the rest of the settings, before anything changes.
type accessFileValue struct {
	path   *string
	access **fwknop.Access
}

func (v *accessFileValue) Type() string   { return "file" }
func (v *accessFileValue) String() string { return *v.path }
func (v *accessFileValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("no access file given")
	}
	a, err := fwknop.ReadAccess(s)
	if err != nil {
		return err
	}
	*v.path, *v.access = s, a
	return nil
}
func (v *accessFileValue) setTOML(x any) error { return setText(v, x) }

// FwknopPolicyPort is proto/port of an access.conf as the policy names it.
func FwknopPolicyPort(p fwknop.Port) policy.Port {
	proto := policy.TCP
	if p.Proto == "udp" {
		proto = policy.UDP
	}
	return policy.Port{Num: p.Num, Proto: proto}
}

// fwknopMayOpen says whether some stanza of a may open the service called
// name of p: one without OPEN_PORTS (any port), or one whose OPEN_PORTS
// hold a port the service protects. Such a service needs no SPA key to be
// opened.
func fwknopMayOpen(a *fwknop.Access, p *policy.Policy, name string) bool {
	if a == nil {
		return false
	}
	for _, s := range a.Stanzas {
		if len(s.Open) == 0 {
			return true
		}
		for _, o := range s.Open {
			if svc := p.Protector(FwknopPolicyPort(o)); svc != nil && svc.Name == name {
				return true
			}
		}
	}
	return false
}
