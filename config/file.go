package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
)

// FileError is a mistake in a config file: where it is and what is wrong.
type FileError struct {
	Path string
	Line int    // 0: not tied to a line
	Key  string // "": not tied to a key
	Err  error
}

func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *FileError) Unwrap() error { return e.Err }

// Load reads and checks the config file at path (see Parse).
func Load(path string) (*Settings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes a config file and checks it whole: every key must be an
// option's (Options, In File), a [services.NAME] table's (options In Named)
// or the [fleet] table's, every value must parse as its flag would, and the
// settings must make a gate. A table or key the schema does not have is
// refused, at any depth ([services.web.x], [fleet.tls], foo.bar = 1). The
// top level is the service default; each [services.NAME] table is a
// service, in the file's order. What is not given keeps its default (a
// service's: NewService); the gate's name defaults to the file's base name.
// Every SPA key must name services the file has, and a service without a
// sequence needs a key that may open it. The first mistake is returned as a
// *FileError naming the key (services.NAME.KEY in a service) and its line.
func Parse(path string, data []byte) (*Settings, error) {
	var raw map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &FileError{Path: path, Line: pe.Position.Line, Err: errors.New(pe.Message)}
		}
		return nil, &FileError{Path: path, Err: err}
	}
	s := Defaults()
	lines := make(map[string]int)
	fleet, services := false, false
	var svcLines map[string]serviceLines
	for _, key := range md.Keys() {
		name := key[0]
		if name == "services" {
			// Every table of it when its first key comes.
			if services {
				continue
			}
			services = true
			if svcLines, err = s.decodeServices(path, &md, raw); err != nil {
				return nil, err
			}
			continue
		}
		if name == "fleet" {
			// The table as a whole, when its first key comes (the table
			// itself, or [fleet.x] without it): its decoder refuses
			// what it does not know, at any depth.
			if fleet {
				continue
			}
			fleet = true
			if err := s.Fleet.decode(&md, raw[name]); err != nil {
				// (Found only now: finding a line decodes, which would
				// hide an unknown key from the table's decoder.)
				where := key
				var uk *unknownKeyError
				if errors.As(err, &uk) {
					where = uk.table
				}
				return nil, &FileError{Path: path, Line: keyLine(&md, raw, where), Key: name, Err: err}
			}
			continue
		}
		if len(key) > 1 {
			// A table, or a key inside one, that the schema does not
			// have: besides [fleet], every option is a value.
			return nil, &FileError{Path: path, Line: keyLine(&md, raw, key), Key: key.String(), Err: notInSchema(&md, key)}
		}
		prim := raw[name]
		lines[name] = lineOf(&md, prim)
		opt := Lookup(name)
		if opt == nil || opt.Key() != name || opt.In&File == 0 {
			return nil, &FileError{Path: path, Line: lines[name], Key: name, Err: unknownKey(name)}
		}
		if err := md.PrimitiveDecode(prim, &decoder{opt.bind(&s)}); err != nil {
			var pe toml.ParseError
			if errors.As(err, &pe) {
				return nil, &FileError{Path: path, Line: pe.Position.Line, Key: name, Err: errors.New(pe.Message)}
			}
			return nil, &FileError{Path: path, Line: lines[name], Key: name, Err: err}
		}
	}
	if len(s.Interfaces) == 0 {
		return nil, &FileError{Path: path, Key: "interfaces", Err: errors.New("missing: name at least one interface")}
	}
	if s.Gate == "" {
		s.Gate = GateFromPath(path)
		if err := loader.ValidateName(s.Gate); err != nil {
			return nil, &FileError{Path: path, Err: fmt.Errorf("the file's name makes the gate name: %w (set gate)", err)}
		}
	}
	if err := s.Check(); err != nil {
		var se *ScopeError
		if errors.As(err, &se) {
			// Keys that do not fit the services: a service no key opens
			// is the service's mistake, a key naming a missing one the
			// key file's.
			if se.Key == nil {
				key, line := svcLines[se.Service].blame(se.Service)
				return nil, &FileError{Path: path, Line: line, Key: key, Err: err}
			}
			return nil, &FileError{Path: path, Line: lines["spa_keys"], Key: "spa_keys", Err: err}
		}
		// A combination the program cannot run: tied to the keys that
		// make it (a step that is also protected), of the first service
		// that makes it (the policy with the services before it is good).
		key, line := "sequence", lines["sequence"]
		if lines["protect"] > line {
			key, line = "protect", lines["protect"]
		}
		p := s.Config()
		for i := range p.Services {
			q := p
			q.Services = p.Services[:i+1]
			verr := q.Validate()
			if verr == nil {
				continue
			}
			name := p.Services[i].Name
			var he *policy.HashError
			switch {
			case errors.As(verr, &he):
				// The name is the mistake: its table's line.
				key, line = "services."+name, svcLines[name].table
			case i > 0:
				key, line = svcLines[name].blame(name)
			}
			err = verr
			break
		}
		return nil, &FileError{Path: path, Line: line, Key: key, Err: err}
	}
	return &s, nil
}

// serviceLines are where a [services.NAME] table and its keys are.
type serviceLines struct {
	table int
	keys  map[string]int
}

// blame is the key and line a mistake of the service called name is tied
// to: the later of its sequence and protect, else its table.
func (l serviceLines) blame(name string) (key string, line int) {
	key, line = "services."+name, l.table
	for _, k := range []string{"sequence", "protect"} {
		if n, ok := l.keys[k]; ok && n >= line {
			key, line = "services."+name+"."+k, n
		}
	}
	return key, line
}

// decodeServices decodes the file's [services.NAME] tables into s, a
// service each, in the file's order, and says where each is.
func (s *Settings) decodeServices(path string, md *toml.MetaData, raw map[string]toml.Primitive) (map[string]serviceLines, error) {
	fail := func(key toml.Key, err error) error {
		return &FileError{Path: path, Line: keyLine(md, raw, key), Key: key.String(), Err: err}
	}
	if t := md.Type("services"); t != "" && t != "Hash" {
		return nil, fail(toml.Key{"services"}, errors.New("want a table [services.NAME] for each service"))
	}
	var tables map[string]toml.Primitive
	if err := md.PrimitiveDecode(raw["services"], &tables); err != nil {
		return nil, fail(toml.Key{"services"}, err)
	}
	out := map[string]serviceLines{}
	var order []string
	for _, key := range md.Keys() {
		if key[0] != "services" || len(key) < 2 {
			continue
		}
		name := key[1]
		if _, seen := out[name]; !seen {
			if name == policy.DefaultService {
				return nil, fail(key[:2], errors.New("the service default is the top level: give its keys outside any table"))
			}
			if err := policy.CheckServiceName(name); err != nil {
				return nil, fail(key[:2], err)
			}
			order = append(order, name)
			s.Service(name)
			out[name] = serviceLines{table: keyLine(md, raw, key[:2]), keys: map[string]int{}}
		}
		if len(key) == 2 {
			if md.Type(key...) != "Hash" {
				return nil, fail(key, fmt.Errorf("want a table [services.%s] of the service's keys (%s)", name, strings.Join(NamedKeys(), ", ")))
			}
			continue
		}
		if len(key) > 3 || isTable(md, key) {
			if o := Lookup(key[2]); o != nil && o.Key() == key[2] && o.In&Named != 0 {
				return nil, fail(key, fmt.Errorf("%s is a setting, not a table", key[2]))
			}
			return nil, fail(key, fmt.Errorf("unknown table (a service's keys: %s)", strings.Join(NamedKeys(), ", ")))
		}
		k := key[2]
		o := Lookup(k)
		if o == nil || o.Key() != k || o.In&Named == 0 {
			if o != nil && o.Key() == k && o.In&File != 0 {
				return nil, fail(key, fmt.Errorf("%s is the gate's, not a service's: give it at the top level (a service's keys: %s)", k, strings.Join(NamedKeys(), ", ")))
			}
			return nil, fail(key, fmt.Errorf("unknown key (a service's keys: %s)", strings.Join(NamedKeys(), ", ")))
		}
		var keys map[string]toml.Primitive
		if err := md.PrimitiveDecode(tables[name], &keys); err != nil {
			return nil, fail(key, err)
		}
		prim := keys[k]
		out[name].keys[k] = lineOf(md, prim)
		if err := md.PrimitiveDecode(prim, &decoder{o.own(s, s.Service(name))}); err != nil {
			var pe toml.ParseError
			if errors.As(err, &pe) {
				return nil, &FileError{Path: path, Line: pe.Position.Line, Key: key.String(), Err: errors.New(pe.Message)}
			}
			return nil, &FileError{Path: path, Line: out[name].keys[k], Key: key.String(), Err: err}
		}
	}
	for _, name := range order {
		for i := range Options {
			o := &Options[i]
			if _, ok := out[name].keys[o.Key()]; o.In&Named != 0 && o.ServiceRequired && !ok {
				return nil, &FileError{Path: path, Line: out[name].table, Key: "services." + name,
					Err: fmt.Errorf("%s missing: a service needs it", o.Key())}
			}
		}
	}
	return out, nil
}

// NamedKeys are the keys of a [services.NAME] table.
func NamedKeys() []string {
	var keys []string
	for _, o := range Options {
		if o.In&Named != 0 {
			keys = append(keys, o.Key())
		}
	}
	return keys
}

// notInSchema says why key, inside a table, is not the schema's.
func notInSchema(md *toml.MetaData, key toml.Key) error {
	if o := Lookup(key[0]); o != nil && o.Key() == key[0] && o.In&File != 0 {
		return fmt.Errorf("%s is a setting, not a table", key[0])
	}
	if isTable(md, key) {
		return errors.New("unknown table (the tables are [services.NAME] and [fleet])")
	}
	return errors.New("unknown key (the tables are [services.NAME] and [fleet])")
}

// isTable: key names a table (or an array of them), not a value.
func isTable(md *toml.MetaData, key toml.Key) bool {
	t := md.Type(key...)
	return t == "Hash" || t == "ArrayHash"
}

// keyLine is the line key is on: a table's header, a value's key; for a
// key whose place cannot be read back (inside an array of tables), the
// line of the nearest table around it that can.
func keyLine(md *toml.MetaData, raw map[string]toml.Primitive, key toml.Key) int {
	prim, ok := raw[key[0]]
	if !ok {
		return 0
	}
	line := lineOf(md, prim)
	for _, k := range key[1:] {
		var sub map[string]toml.Primitive
		if md.PrimitiveDecode(prim, &sub) != nil {
			break
		}
		if prim, ok = sub[k]; !ok {
			break
		}
		if l := lineOf(md, prim); l > 0 {
			line = l
		}
	}
	return line
}

// unknownKey says a key is not one, suggesting the option meant.
func unknownKey(name string) error {
	var keys []string
	for _, o := range Options {
		if o.In&File != 0 {
			keys = append(keys, o.Key())
		}
	}
	sort.Slice(keys, func(i, j int) bool { return distance(name, keys[i]) < distance(name, keys[j]) })
	if len(keys) > 0 && distance(name, keys[0]) <= 3 {
		return fmt.Errorf("unknown key (did you mean %s?)", keys[0])
	}
	return fmt.Errorf("unknown key (known: %s)", strings.Join(sortedKeys(), ", "))
}

func sortedKeys() []string {
	var keys []string
	for _, o := range Options {
		if o.In&File != 0 {
			keys = append(keys, o.Key())
		}
	}
	sort.Strings(keys)
	return keys
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// decoder gives a value to the TOML decoder, which then reports its errors
// at the key's line.
type decoder struct{ v value }

func (d *decoder) UnmarshalTOML(data any) error { return d.v.setTOML(data) }

// errProbe is what probe answers, to learn where a key is.
var errProbe = errors.New("probe")

type probe struct{}

func (probe) UnmarshalTOML(any) error { return errProbe }

// lineOf is the line a key's value was read from: the decoder puts it in
// the error it makes of a value's refusal.
func lineOf(md *toml.MetaData, prim toml.Primitive) int {
	var pe toml.ParseError
	if err := md.PrimitiveDecode(prim, &probe{}); errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}
