package policy

import (
	"slices"
	"strconv"
)

// A Setting is one thing a policy says, of the gate (T = Policy) or of each
// service (T = Service), named as the option that sets it (--step-timeout,
// step_timeout). Diff compares policies by them, and `set` copies the ones
// given on its command line onto the policy in force.
type Setting[T Policy | Service] struct {
	Name string
	// Text is the value as its option takes it, canonical: two values that
	// make the gate do the same read the same (protected ports and allow
	// lists are sets).
	Text func(*T) string
	// Copy sets dst's value to src's, sharing no memory with it.
	Copy func(dst, src *T)
}

// ServiceSettings are the settings of each service.
var ServiceSettings = []Setting[Service]{
	{Name: "sequence",
		Text: func(s *Service) string { return FormatSequence(s.Sequence) },
		Copy: func(d, s *Service) { d.Sequence = slices.Clone(s.Sequence) }},
	{Name: "step-timeout",
		Text: func(s *Service) string { return s.StepTimeout.String() },
		Copy: func(d, s *Service) { d.StepTimeout = s.StepTimeout }},
	{Name: "open",
		Text: func(s *Service) string { return s.Open.String() },
		Copy: func(d, s *Service) { d.Open = s.Open }},
	{Name: "protect",
		Text: func(s *Service) string { return FormatProtect(SortPorts(s.Protect), s.ProtectAll) },
		Copy: func(d, s *Service) { d.Protect, d.ProtectAll = slices.Clone(s.Protect), s.ProtectAll }},
	{Name: "allow",
		Text: func(s *Service) string { return FormatCIDRs(SortCIDRs(s.Allow)) },
		Copy: func(d, s *Service) { d.Allow = slices.Clone(s.Allow) }},
}

// GateSettings are the settings of the gate, for every service.
var GateSettings = []Setting[Policy]{
	{Name: "allow",
		Text: func(p *Policy) string { return FormatCIDRs(SortCIDRs(p.Allow)) },
		Copy: func(d, s *Policy) { d.Allow = slices.Clone(s.Allow) }},
	{Name: "flows",
		Text: func(p *Policy) string { return strconv.FormatBool(p.Flows) },
		Copy: func(d, s *Policy) { d.Flows = s.Flows }},
	{Name: "flow-idle-tcp",
		Text: func(p *Policy) string { return p.FlowIdleTCP.String() },
		Copy: func(d, s *Policy) { d.FlowIdleTCP = s.FlowIdleTCP }},
	{Name: "flow-idle-udp",
		Text: func(p *Policy) string { return p.FlowIdleUDP.String() },
		Copy: func(d, s *Policy) { d.FlowIdleUDP = s.FlowIdleUDP }},
	{Name: "spa-port",
		Text: func(p *Policy) string { return strconv.Itoa(int(p.SPAPort)) },
		Copy: func(d, s *Policy) { d.SPAPort = s.SPAPort }},
	{Name: "spa-window",
		Text: func(p *Policy) string { return p.SPAWindow.String() },
		Copy: func(d, s *Policy) { d.SPAWindow = s.SPAWindow }},
}

// SettingOf returns the setting called name among settings, or nil.
func SettingOf[T Policy | Service](settings []Setting[T], name string) *Setting[T] {
	for i := range settings {
		if settings[i].Name == name {
			return &settings[i]
		}
	}
	return nil
}

// Change is one difference between two policies.
type Change struct {
	// Service is the service the setting is of; "" for the gate's.
	Service string
	// Setting is the setting's name (the option's); "" when the service
	// itself came or went.
	Setting string
	// Old and New are the setting's Text in each policy; for a service
	// that came, "" and "added", for one that went, "removed" and "".
	Old, New string
}

func (c Change) String() string {
	if c.Setting == "" {
		return "service " + c.Service + " " + c.Old + c.New
	}
	s := c.Setting + " " + orNone(c.Old) + " -> " + orNone(c.New)
	if c.Service != "" {
		s = "service " + c.Service + ": " + s
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Diff lists what changes from a to b: the settings of the services (by
// name, in b's order, then the services b no longer has), then the gate's,
// each in the order of its table.
func Diff(a, b *Policy) []Change {
	var out []Change
	for i := range b.Services {
		sb := &b.Services[i]
		sa := a.Service(sb.Name)
		if sa == nil {
			out = append(out, Change{Service: sb.Name, New: "added"})
			continue
		}
		for _, st := range ServiceSettings {
			if x, y := st.Text(sa), st.Text(sb); x != y {
				out = append(out, Change{Service: sb.Name, Setting: st.Name, Old: x, New: y})
			}
		}
	}
	for i := range a.Services {
		if b.Service(a.Services[i].Name) == nil {
			out = append(out, Change{Service: a.Services[i].Name, Old: "removed"})
		}
	}
	for _, st := range GateSettings {
		if x, y := st.Text(a), st.Text(b); x != y {
			out = append(out, Change{Setting: st.Name, Old: x, New: y})
		}
	}
	return out
}
