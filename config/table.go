package config

import (
	"fmt"
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
// an SPA port bring the default port). The rest of p stays.
func Merge(p *policy.Policy, s *Settings, given map[string]bool) {
	for i := range Options {
		o := &Options[i]
		if !given[o.Name] {
			continue
		}
		switch {
		case o.gate != nil:
			o.gate.Copy(p, &s.Policy)
		case o.svc != nil:
			o.svc.Copy(p.Default(), s.service())
		}
		if o.derive != nil {
			o.derive(s, p)
		}
	}
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
// 1h0m0s"), in the table's order; none: the gate is what s asks for.
func Compare(s *Settings, have *Held, given map[string]bool) []string {
	want := s.Config()
	compare := map[string]bool{}
	for i := range Options {
		if o := &Options[i]; given[o.Name] {
			compare[o.Name] = true
			if o.derives != "" {
				compare[o.derives] = true
			}
		}
	}
	var diff []string
	for i := range Options {
		o := &Options[i]
		if !compare[o.Name] {
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
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
