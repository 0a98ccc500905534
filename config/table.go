package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// What the commands do with the options, each driven by the table: no list
// of options is written anywhere else.

// text is the option's setting in p as its flag takes it, canonical (see
// policy.Setting); ok is false for an option the policy does not hold.
func (o *Option) text(p *policy.Policy) (s string, ok bool) {
	switch {
	case o.gate != nil:
		return o.gate.Text(p), true
	case o.svc != nil:
		return o.svc.Text(p.Default()), true
	}
	return "", false
}

// flag is the command line that asks for the value text: "--open 1h0m0s",
// a switch as "--flows=false".
func (o *Option) flag(text string) string {
	if o.isBool() {
		return "--" + o.Name + "=" + text
	}
	return "--" + o.Name + " " + text
}

// Merge changes p as `set` does: the options given (by name) take their
// value from s, and what they derive follows (keys given to a gate without
// an SPA port bring the default port). The rest of p stays. With service
// (--service), the options In Named set that service's settings, and a
// service p does not have is added, with the service defaults where no
// option is given; one without an option a named service needs (protect)
// is refused, naming it.
func Merge(p *policy.Policy, s *Settings, given map[string]bool, service string) error {
	var dst, src *policy.Service
	if service != "" {
		src = s.Service(service)
		if dst = p.Service(service); dst == nil {
			for i := range Options {
				if o := &Options[i]; o.In&Named != 0 && o.ServiceRequired && !given[o.Name] {
					return fmt.Errorf("service %s is new: give --%s", service, o.Name)
				}
			}
			svc := policy.Service{Name: service}
			for i := range Options {
				if o := &Options[i]; o.In&Named != 0 && o.ownSetting != nil {
					o.ownSetting.Copy(&svc, src)
				}
			}
			p.Services = append(p.Services, svc)
			dst = &p.Services[len(p.Services)-1]
		}
	}
	for i := range Options {
		o := &Options[i]
		if !given[o.Name] {
			continue
		}
		switch {
		case dst != nil && o.In&Named != 0 && o.ownSetting != nil:
			o.ownSetting.Copy(dst, src)
		case o.gate != nil:
			o.gate.Copy(p, &s.Policy)
		case o.svc != nil:
			o.svc.Copy(p.Default(), s.service())
		}
		if o.derive != nil {
			o.derive(s, p)
		}
	}
	return nil
}

// RemoveService takes the service called name out of p: not default, which
// every gate has.
func RemoveService(p *policy.Policy, name string) error {
	if name == policy.DefaultService {
		return fmt.Errorf("the service %s cannot be removed: every gate has it (change it with set's flags)", name)
	}
	for i := range p.Services {
		if p.Services[i].Name == name {
			p.Services = slices.Delete(p.Services, i, i+1)
			return nil
		}
	}
	return fmt.Errorf("no service %s to remove (the gate has %s)", name, ServiceNames(p))
}

// ServiceNames lists p's services, for a message: "default, web, rdp".
func ServiceNames(p *policy.Policy) string {
	names := make([]string, len(p.Services))
	for i, svc := range p.Services {
		names[i] = svc.Name
	}
	return strings.Join(names, ", ")
}

// Held is what an existing gate holds, as read back from it: what attach
// compares the flags it is given with.
type Held struct {
	Policy  policy.Policy // its allow list included
	SPAKeys []spa.Key
	Sizes   loader.Sizes // as its maps were made (loader.Gate.Sizes)
}

// Compare lists how the existing gate have differs from s in the options
// given (by name), each as what would ask for what the gate has ("--open
// 1h0m0s"), in the table's order; none: the gate is what s asks for. With
// service (--service), the options In Named are compared with that
// service's ("--service web --open 1h0m0s"), which the gate must have.
func Compare(s *Settings, have *Held, given map[string]bool, service string) []string {
	want := s.Config()
	var diff []string
	var ws, hs *policy.Service
	if service != "" {
		ws, hs = want.Service(service), have.Policy.Service(service)
		if hs == nil {
			diff = append(diff, "no service "+service)
		}
	}
	compare := map[string]bool{}
	for i := range Options {
		if o := &Options[i]; given[o.Name] {
			compare[o.Name] = true
			if o.derives != "" {
				compare[o.derives] = true
			}
		}
	}
	for i := range Options {
		o := &Options[i]
		if !compare[o.Name] {
			continue
		}
		if ws != nil && o.In&Named != 0 {
			if hs != nil && o.ownSetting != nil {
				if h := o.ownSetting.Text(hs); h != o.ownSetting.Text(ws) {
					diff = append(diff, "--service "+service+" "+o.flag(h))
				}
			}
			continue
		}
		if w, ok := o.text(&want); ok {
			if h, _ := o.text(&have.Policy); h != w {
				diff = append(diff, o.flag(h))
			}
			continue
		}
		if o.differs != nil {
			if d := o.differs(s, have); d != "" {
				diff = append(diff, d)
			}
		}
	}
	return diff
}

// sameKeys: the gate holds exactly the keys want.
func sameKeys(have, want []spa.Key) bool {
	if len(have) != len(want) {
		return false
	}
	byID := map[uint32]spa.Key{}
	for _, k := range have {
		byID[k.ID] = k
	}
	for _, k := range want {
		if h, ok := byID[k.ID]; !ok || !h.Equal(&k) {
			return false
		}
	}
	return true
}

// ReloadCheck compares the settings in force with a file's as a reload of
// run does: a change that only a new run can make is refused, and the
// changes the running gate keeps (they apply when it is made or an
// interface attached) are named, by key, for a warning.
func ReloadCheck(cur, next *Settings) (kept []string, err error) {
	for i := range Options {
		o := &Options[i]
		if o.Reload == Live {
			continue
		}
		was, is := o.bind(cur).String(), o.bind(next).String()
		if was == is {
			continue
		}
		if o.Reload == Restart {
			return nil, fmt.Errorf("%s changed from %s to %s: a reload keeps it (restart run to change it)", o.Key(), was, is)
		}
		kept = append(kept, o.Key())
	}
	return kept, nil
}

// Summary is the one-line form of a policy that attach, set and run
// --check print: "sequence 9000,8000, step timeout 1m0s, open 30m0s,
// protecting 22".
func Summary(p *policy.Policy) string {
	var parts []string
	for i := range Options {
		o := &Options[i]
		if o.show == nil {
			continue
		}
		if t := o.show.text(p, p.Default()); t != "" {
			parts = append(parts, o.show.label+" "+t)
		}
	}
	return strings.Join(parts, ", ")
}

// ServiceSummaries are the one-line forms of p's services besides default,
// as attach, set and run --check print them below Summary: "service web:
// sequence 7000,7100, step timeout 30s, open 2h0m0s, protecting 443,8443,
// allowing 198.51.100.0/24".
func ServiceSummaries(p *policy.Policy) []string {
	var out []string
	for i := range p.Services {
		svc := &p.Services[i]
		if svc.Name == policy.DefaultService {
			continue
		}
		var parts []string
		for _, l := range serviceShows(p, svc, false) {
			if l.Value != "" {
				parts = append(parts, l.Label+" "+l.Value)
			}
		}
		out = append(out, "service "+svc.Name+": "+strings.Join(parts, ", "))
	}
	return out
}

// ServiceLines are the settings of svc, a service of p, as status's table
// of services shows them ("none" for what is empty), in the table's order.
func ServiceLines(p *policy.Policy, svc *policy.Service) []Line {
	out := serviceShows(p, svc, true)
	for i := range out {
		if out[i].Value == "" {
			out[i].Value = "none"
		}
	}
	return out
}

// serviceShows are the shown options In Named, as svc has them; status:
// as status shows them.
func serviceShows(p *policy.Policy, svc *policy.Service, status bool) []Line {
	var out []Line
	for i := range Options {
		o := &Options[i]
		if o.show == nil || o.In&Named == 0 {
			continue
		}
		var v string
		switch {
		case o.show.own != nil:
			v = o.show.own(svc)
		case status && o.show.statusText != nil:
			v = o.show.statusText(p, svc)
		default:
			v = o.show.text(p, svc)
		}
		out = append(out, Line{o.show.label, v})
	}
	return out
}

// Line is one labelled line of a policy as status prints it.
type Line struct{ Label, Value string }

// Lines are the lines of a policy that status prints: "sequence",
// "9000,8000", and so on.
func Lines(p *policy.Policy) []Line {
	var out []Line
	for i := range Options {
		o := &Options[i]
		if o.show == nil || !o.show.status {
			continue
		}
		t := o.show.text
		if o.show.statusText != nil {
			t = o.show.statusText
		}
		v := t(p, p.Default())
		if v == "" {
			v = "none"
		}
		out = append(out, Line{o.show.label, v})
	}
	return out
}

// FlagList names the flags of where, for a message: "--sequence,
// --step-timeout or --open".
func FlagList(where Where) string {
	var names []string
	for _, o := range Options {
		if o.In&where != 0 && o.In&(Attach|Set) != 0 {
			names = append(names, "--"+o.Name)
		}
	}
	return joinOr(names, " or ")
}

// Synopsis is the flags of where, for a command's usage line: "[--sequence
// PORTS|none] [--step-timeout D] ... [--service NAME]" (set: "[--service
// NAME [--remove]]").
func Synopsis(where Where) string {
	var parts []string
	for _, o := range Options {
		if o.In&where == 0 || o.In&(Attach|Set) == 0 {
			continue
		}
		if o.isBool() {
			parts = append(parts, "[--"+o.Name+"="+o.Arg+"]")
			continue
		}
		parts = append(parts, "[--"+o.Name+" "+o.Arg+"]")
	}
	switch where {
	case Attach:
		parts = append(parts, "[--service NAME]")
	case Set:
		parts = append(parts, "[--service NAME [--remove]]")
	}
	return strings.Join(parts, " ")
}

// joinOr lists names as "a, b or c" (last: " or ", " and ").
func joinOr(names []string, last string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + last + names[len(names)-1]
}
