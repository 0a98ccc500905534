//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/policy"
)

// knockd.conf, read the way knockd 0.8 reads it (src/knockd.c,
// parseconfig): "[name]" starts a section, "[options]" holds the global
// directives, "key = value" lines (keys in any case) fill the section, a
// line starting with '#' is a comment, and a command is a shell command
// line (knockd runs it with system()) with %IP% replaced by the knocker's
// address.

// knockdDefaults are knockd's own defaults (knockd.c): seq_timeout 25 s,
// cmd_timeout 10 s, interface eth0.
const (
	knockdSeqTimeout = 25
	knockdCmdTimeout = 10
	knockdInterface  = "eth0"
)

// knockdValue is one directive's value and the line it is on.
type knockdValue struct {
	value string
	line  int
}

// knockdSection is one [name] section.
type knockdSection struct {
	name string
	line int
	keys map[string]knockdValue // by lower-case key
}

func (s *knockdSection) get(keys ...string) (knockdValue, bool) {
	for _, k := range keys {
		if v, ok := s.keys[k]; ok {
			return v, true
		}
	}
	return knockdValue{}, false
}

// knockdFile is a parsed knockd.conf: its [options] and its sections, in
// order.
type knockdFile struct {
	options  *knockdSection
	sections []*knockdSection
}

// parseKnockd reads a knockd.conf. knockd itself refuses a line outside a
// section, or a section's line without '=' (but [options]' flags).
func parseKnockd(r io.Reader) (*knockdFile, []knockdNote, error) {
	f := &knockdFile{}
	var notes []knockdNote
	var cur *knockdSection
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			cur = &knockdSection{name: strings.TrimSpace(line[1 : len(line)-1]), line: n, keys: map[string]knockdValue{}}
			if strings.EqualFold(cur.name, "options") {
				f.options = cur
			} else {
				f.sections = append(f.sections, cur)
			}
			continue
		}
		if cur == nil {
			return nil, nil, fmt.Errorf("line %d: %q is outside any section", n, line)
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			if cur != f.options {
				notes = append(notes, knockdNote{section: cur, line: n, text: fmt.Sprintf("%q: not key = value, ignored (as knockd does not take it)", line)})
			}
			key, value = line, ""
		}
		cur.keys[strings.ToLower(strings.TrimSpace(key))] = knockdValue{strings.TrimSpace(value), n}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	return f, notes, nil
}

// knockdNote is what the import says about a section (or the file, with
// no section): on stderr, with the line.
type knockdNote struct {
	section *knockdSection
	line    int
	text    string
	refused bool // the section is left out
}

func (n knockdNote) String() string {
	where := ""
	if n.section != nil {
		where = "[" + n.section.name + "] "
	}
	if n.line > 0 {
		where += fmt.Sprintf("line %d: ", n.line)
	}
	if n.refused {
		return where + "not imported: " + n.text
	}
	return where + n.text
}

// importedService is one section as a service of the gate.
type importedService struct {
	section     *knockdSection
	name        string
	sequence    []policy.Port
	stepTimeout time.Duration
	open        time.Duration
	openWhy     string // a comment on the open window
	protect     []policy.Port
	onOpen      []string
	onClose     []string
	comments    []string // said above the service in the file
	undoes      []policy.Port
	undoLine    int
	accepts     bool // its command is a plain accept: protect
}

// knockdImport is the import of one file.
type knockdImport struct {
	source    string
	iface     string
	hookUser  string
	services  []*importedService
	notes     []knockdNote
	undoFirst []*importedService // sections whose command only undoes
}

// importKnockd translates a knockd.conf into a knockgate config file: one
// service per section, the first of them the service default. iface and
// hookUser, if given, replace knockd's interface and the default hook
// user. It returns the file and what it has to say; an error when nothing
// could be imported.
func importKnockd(source string, r io.Reader, iface, hookUser string) (string, []knockdNote, error) {
	f, notes, err := parseKnockd(r)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", source, err)
	}
	im := &knockdImport{source: source, iface: iface, hookUser: hookUser, notes: notes}
	if im.iface == "" {
		im.iface = knockdInterface
		if f.options != nil {
			if v, ok := f.options.get("interface"); ok && v.value != "" {
				im.iface = v.value
			}
		}
		if err := config.CheckInterfaceName(im.iface); err != nil {
			return "", im.notes, fmt.Errorf("%s: interface: %w", source, err)
		}
	}
	for _, sec := range f.sections {
		if svc := im.section(sec); svc != nil {
			im.add(svc)
		}
	}
	// A section whose command only removes a rule another adds: the
	// grant ends by itself (or by revoke), nothing to import.
	for _, u := range im.undoFirst {
		im.refuseUndo(u)
	}
	if len(im.services) == 0 {
		return "", im.notes, fmt.Errorf("%s: nothing to import: no section could be translated", source)
	}
	out, err := im.render()
	if err != nil {
		return "", im.notes, err
	}
	return out, im.notes, nil
}

func (im *knockdImport) note(sec *knockdSection, line int, format string, args ...any) {
	im.notes = append(im.notes, knockdNote{section: sec, line: line, text: fmt.Sprintf(format, args...)})
}

func (im *knockdImport) refuse(sec *knockdSection, line int, format string, args ...any) {
	if line == 0 {
		line = sec.line
	}
	im.notes = append(im.notes, knockdNote{section: sec, line: line, text: fmt.Sprintf(format, args...), refused: true})
}

// section translates one section; nil: refused (said why).
func (im *knockdImport) section(sec *knockdSection) *importedService {
	svc := &importedService{section: sec, stepTimeout: knockdSeqTimeout * time.Second}
	if v, ok := sec.get("one_time_sequences"); ok {
		im.refuse(sec, v.line, "one_time_sequences: knockgate's sequences are fixed; against a knock replayed by someone on the path, use single-packet authorization instead (knockgate keygen, spa_keys)")
		return nil
	}
	seqV, ok := sec.get("sequence")
	if !ok || seqV.value == "" {
		im.refuse(sec, 0, "no sequence")
		return nil
	}
	seq, err := knockdSequence(seqV.value)
	if err != nil {
		im.refuse(sec, seqV.line, "sequence: %v", err)
		return nil
	}
	svc.sequence = seq
	if v, ok := sec.get("seq_timeout"); ok {
		n, err := strconv.Atoi(v.value)
		if err != nil || n <= 0 {
			im.refuse(sec, v.line, "seq_timeout %q: not a number of seconds", v.value)
			return nil
		}
		svc.stepTimeout = time.Duration(n) * time.Second
	}
	if len(seq) > 1 {
		svc.comments = append(svc.comments, fmt.Sprintf("knockd's seq_timeout bounded the whole sequence: step_timeout bounds each step (%d steps: up to %s in all)",
			len(seq), time.Duration(len(seq)-1)*svc.stepTimeout))
	}
	if !im.tcpFlags(sec, svc) {
		return nil
	}
	if v, ok := sec.get("target"); ok {
		im.note(sec, v.line, "target %s ignored: the gate takes a knock to any of its addresses", v.value)
	}

	start, startOK := sec.get("start_command", "command")
	if !startOK || start.value == "" {
		im.refuse(sec, 0, "no start_command (or command)")
		return nil
	}
	open, ok := im.command(sec, start)
	if !ok {
		return nil
	}
	stop, hasStop := sec.get("stop_command")
	timeout := knockdCmdTimeout
	if v, ok := sec.get("cmd_timeout"); ok {
		n, err := strconv.Atoi(v.value)
		if err != nil || n <= 0 {
			im.refuse(sec, v.line, "cmd_timeout %q: not a number of seconds", v.value)
			return nil
		}
		timeout = n
		if !hasStop || stop.value == "" {
			im.note(sec, v.line, "cmd_timeout without stop_command: knockd ignores it; the open window is it here all the same")
		}
	}

	switch {
	case open.kind == cmdUndo:
		// Decided once every section is in: which one it undoes.
		svc.undoes, svc.undoLine = open.ports, start.line
		im.undoFirst = append(im.undoFirst, svc)
		return nil
	case open.kind == cmdAccept:
		svc.protect, svc.accepts = open.ports, true
	default:
		svc.onOpen = open.argv
	}
	if hasStop && stop.value != "" {
		closeCmd, ok := im.command(sec, stop)
		if !ok {
			return nil
		}
		switch {
		case closeCmd.kind == cmdUndo && open.kind == cmdAccept && samePorts(closeCmd.ports, open.ports):
			// Removes the rule start_command added: the grant's own end.
		case closeCmd.kind == cmdAccept:
			im.refuse(sec, stop.line, "stop_command adds a rule rather than removing one: nothing here runs at a grant's end that opens")
			return nil
		case closeCmd.kind == cmdUndo && open.kind == cmdAccept:
			im.refuse(sec, stop.line, "stop_command removes another rule (%s) than start_command adds (%s)",
				policy.FormatPorts(closeCmd.ports), policy.FormatPorts(open.ports))
			return nil
		case closeCmd.kind == cmdUndo:
			// Undoes an accept this section does not make (its start is a
			// command of its own): kept as its command.
			svc.onClose = closeCmd.argv
		default:
			svc.onClose = closeCmd.argv
		}
		svc.open = time.Duration(timeout) * time.Second
		svc.openWhy = "knockd's cmd_timeout: stop_command ran this long after start_command"
	} else {
		_, hasTimeout := sec.get("cmd_timeout")
		if hasTimeout {
			svc.open = time.Duration(timeout) * time.Second
			svc.openWhy = "knockd's cmd_timeout"
		} else {
			svc.open = 30 * time.Minute
			svc.openWhy = "knockd's rule stayed until something removed it; a grant here ends after open (or knockgate revoke)"
			im.note(sec, sec.line, "no stop_command: the grant lasts open = \"30m\" here (knockd's rule stayed until removed); change open to taste")
		}
	}
	im.familyCommands(sec, open)
	if svc.protect == nil {
		svc.comments = append(svc.comments, "its command is not a plain accept of the knocking address to a port: it runs as on_open, and the service protects no port")
	}
	return svc
}

// familyCommands says what knockgate does with start_command_6 and
// stop_command_6: one command serves both families, KNOCKGATE_FAMILY
// telling them apart.
func (im *knockdImport) familyCommands(sec *knockdSection, open knockdCommand) {
	for _, pair := range [][2]string{{"start_command_6", "command_6"}, {"stop_command_6", ""}} {
		v, ok := sec.get(pair[0], pair[1])
		if !ok {
			continue
		}
		if v.value == "" {
			im.note(sec, v.line, "%s is empty (nothing for IPv6 knocks there): here IPv6 knocks are treated as IPv4's", pair[0])
			continue
		}
		c6, read := classify(v.value)
		if !read.ok {
			continue
		}
		if open.kind == cmdAccept && (c6.kind == cmdAccept || c6.kind == cmdUndo) {
			continue // the ip6tables twin: the gate protects both families
		}
		im.note(sec, v.line, "%s not imported: one on_open and one on_close serve both families here ({family}, KNOCKGATE_FAMILY tell them apart)", pair[0])
	}
}

// tcpFlags checks the section's tcpflags against what the gate counts as
// a TCP knock: a SYN without ACK, RST or FIN (PSH and URG do not matter),
// which knockd's own client sends. A rule that needs another flag set, or
// SYN clear, is refused; one that lets through more than a SYN is said to
// be narrower here.
func (im *knockdImport) tcpFlags(sec *knockdSection, svc *importedService) bool {
	v, ok := sec.get("tcpflags")
	if !ok || v.value == "" || !slices.ContainsFunc(svc.sequence, func(p policy.Port) bool { return p.Proto == policy.TCP }) {
		return true
	}
	need, not := map[string]bool{}, map[string]bool{}
	for _, f := range strings.Split(strings.ToLower(v.value), ",") {
		f = strings.TrimSpace(f)
		neg := strings.HasPrefix(f, "!")
		f = strings.TrimPrefix(f, "!")
		switch f {
		case "fin", "syn", "rst", "psh", "ack", "urg":
		default:
			im.refuse(sec, v.line, "tcpflags: unknown flag %q", f)
			return false
		}
		if neg {
			not[f] = true
		} else {
			need[f] = true
		}
	}
	for _, f := range []string{"fin", "rst", "ack", "psh", "urg"} {
		if need[f] {
			im.refuse(sec, v.line, "tcpflags %s: a knock with %s set is not a knock to the gate, which counts a TCP SYN without ACK, RST or FIN", v.value, strings.ToUpper(f))
			return false
		}
	}
	if not["syn"] {
		im.refuse(sec, v.line, "tcpflags %s: the gate counts TCP knocks with SYN set (a SYN without ACK, RST or FIN)", v.value)
		return false
	}
	if !need["syn"] {
		im.note(sec, v.line, "tcpflags %s: the gate counts only a SYN without ACK, RST or FIN as a TCP knock (what knock sends)", v.value)
	}
	return true
}

// knockdSequence reads knockd's "port[:tcp|:udp],..." (TCP by default).
func knockdSequence(s string) ([]policy.Port, error) {
	var out []policy.Port
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		num, proto, hasProto := strings.Cut(item, ":")
		n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("step %d %q: not a port (1-65535)", i+1, item)
		}
		p := policy.Port{Num: uint16(n), Proto: policy.TCP}
		if hasProto {
			switch strings.ToLower(strings.TrimSpace(proto)) {
			case "tcp":
			case "udp":
				p.Proto = policy.UDP
			default:
				return nil, fmt.Errorf("step %d %q: protocol %q (tcp or udp)", i+1, item, proto)
			}
		}
		if j := slices.Index(out, p); j >= 0 {
			return nil, fmt.Errorf("step %d (%s) repeats step %d: the gate takes a resent SYN of a step for that step again, not for the next", i+1, p, j+1)
		}
		out = append(out, p)
	}
	if len(out) > policy.MaxSteps {
		return nil, fmt.Errorf("%d steps: the gate takes at most %d", len(out), policy.MaxSteps)
	}
	return out, nil
}

// What a command is.
type cmdKind int

const (
	cmdHook   cmdKind = iota // a command of its own: on_open or on_close
	cmdAccept                // a plain accept of the knocking address to ports
	cmdUndo                  // the removal of such an accept
)

// knockdCommand is a command as knockgate takes it.
type knockdCommand struct {
	kind  cmdKind
	ports []policy.Port // accept, undo
	argv  []string      // hook: the argv, placeholders escaped, %IP% as {source}
}

// classified says whether a command could be read, and if not why.
type classified struct {
	ok  bool
	why string
}

// command reads a section's command; false: the section is refused (said
// why).
func (im *knockdImport) command(sec *knockdSection, v knockdValue) (knockdCommand, bool) {
	c, ok := classify(v.value)
	if !ok.ok {
		im.refuse(sec, v.line, "%s", ok.why)
		return knockdCommand{}, false
	}
	return c, true
}

// classify reads one knockd command line: a plain iptables, nftables or
// knock_helper_ipt.sh accept of %IP% to ports (or its removal), else a
// command to run, as an argv when it is a plain one and through /bin/sh
// when it uses the shell.
func classify(line string) (knockdCommand, classified) {
	words, shell := shellWords(line)
	if !shell && len(words) > 0 {
		if strings.Contains(words[0], "%IP%") {
			return knockdCommand{}, classified{why: "%IP% in an unusual place: the command's name"}
		}
		kind, ports, err := firewallRule(words)
		switch {
		case err != nil:
			return knockdCommand{}, classified{why: err.Error()}
		case kind != cmdHook:
			return knockdCommand{kind: kind, ports: ports}, classified{ok: true}
		}
		argv := make([]string, len(words))
		for i, w := range words {
			argv[i] = placeholders(w)
		}
		return knockdCommand{kind: cmdHook, argv: argv}, classified{ok: true}
	}
	// A shell command line, as knockd runs it: %IP% becomes the address
	// before the shell reads it, here as there.
	return knockdCommand{kind: cmdHook, argv: []string{"/bin/sh", "-c", placeholders(line)}}, classified{ok: true}
}

// placeholders escapes s's braces for a hook's argument and makes knockd's
// %IP% the {source} placeholder.
func placeholders(s string) string {
	s = strings.NewReplacer("{", "{{", "}", "}}").Replace(s)
	return strings.ReplaceAll(s, "%IP%", "{source}")
}

// shellWords splits a command line as sh would when it is only words
// (quotes and backslashes); shell reports that it uses more of the shell
// (operators, expansions, globs, comments), to be run by sh.
func shellWords(s string) (words []string, shell bool) {
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, true
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch s[i] {
				case '$', '`':
					return nil, true
				case '\\':
					if i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
						i++
					}
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, true
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, true
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case strings.IndexByte("|&;<>()$`*?[\n", c) >= 0,
			(c == '~' || c == '#') && !inWord:
			return nil, true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, false
}

// samePorts: a and b name the same ports.
func samePorts(a, b []policy.Port) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	less := func(x, y policy.Port) int {
		if x.Proto != y.Proto {
			return int(x.Proto) - int(y.Proto)
		}
		return int(x.Num) - int(y.Num)
	}
	slices.SortFunc(a, less)
	slices.SortFunc(b, less)
	return slices.Equal(a, b)
}

// firewallRule recognises a plain accept of the knocking address to ports
// in INPUT (iptables, ip6tables, nft, knockd's knock_helper_ipt.sh, or
// knock_add of knockd's example), or its removal. Anything else is a hook
// (cmdHook), unless it is such a rule with %IP% in an unusual place (a
// subnet, a destination): an error.
func firewallRule(words []string) (cmdKind, []policy.Port, error) {
	switch base := path.Base(words[0]); {
	case strings.HasPrefix(base, "iptables") || strings.HasPrefix(base, "ip6tables"):
		return iptablesRule(words[1:])
	case base == "nft":
		return nftRule(words[1:])
	case base == "knock_helper_ipt.sh" || base == "knock_add":
		return helperRule(words[1:])
	}
	return cmdHook, nil, nil
}

// sourceIP says whether v is the knocking address alone (%IP%, as a /32 or
// /128 too); an error when %IP% is in it otherwise.
func sourceIP(v string) (bool, error) {
	switch v {
	case "%IP%", "%IP%/32", "%IP%/128":
		return true, nil
	}
	if strings.Contains(v, "%IP%") {
		return false, fmt.Errorf("%%IP%% in an unusual place (%q): not the knocking address alone", v)
	}
	return false, nil
}

// portList reads iptables' "22", "1000:2000" or multiport "22,80,1000:2000".
func portList(v string, proto policy.Proto) ([]policy.Port, bool) {
	var out []policy.Port
	for _, item := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(item), ":")
		if !isRange {
			lo, hi, isRange = strings.Cut(lo, "-")
		}
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil || a == 0 {
			return nil, false
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
				return nil, false
			}
		}
		for n := a; n <= b; n++ {
			out = append(out, policy.Port{Num: uint16(n), Proto: proto})
		}
	}
	return out, len(out) > 0
}

func iptablesRule(args []string) (cmdKind, []policy.Port, error) {
	if err := onlyAsSource(args, "-s", "--source", "--src"); err != nil {
		return cmdHook, nil, err
	}
	kind := cmdHook
	var src bool
	var proto policy.Proto
	var ports string
	accept := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := func() string {
			if i+1 >= len(args) {
				return ""
			}
			i++
			return args[i]
		}
		switch a {
		case "-A", "--append", "-I", "--insert", "-D", "--delete":
			if val() != "INPUT" {
				return cmdHook, nil, nil // not the host's own ports
			}
			kind = cmdAccept
			if a == "-D" || a == "--delete" {
				kind = cmdUndo
			}
			if (a == "-I" || a == "--insert") && i+1 < len(args) {
				if _, err := strconv.Atoi(args[i+1]); err == nil {
					i++ // the rule's position
				}
			}
		case "-t", "--table":
			if val() != "filter" {
				return cmdHook, nil, nil
			}
		case "-s", "--source", "--src":
			src, _ = sourceIP(val())
		case "-p", "--protocol":
			switch strings.ToLower(val()) {
			case "tcp":
				proto = policy.TCP
			case "udp":
				proto = policy.UDP
			default:
				return cmdHook, nil, nil
			}
		case "--dport", "--destination-port", "--dports", "--destination-ports":
			if ports != "" {
				return cmdHook, nil, nil
			}
			ports = val()
		case "-m", "--match":
			switch val() {
			case "tcp", "udp", "multiport", "state", "conntrack", "comment":
			default:
				return cmdHook, nil, nil
			}
		case "--state", "--ctstate", "--comment":
			val()
		case "--syn", "-w", "--wait":
		case "-j", "--jump":
			accept = val() == "ACCEPT"
		default:
			return cmdHook, nil, nil
		}
	}
	if kind == cmdHook || !src || !accept || ports == "" || (proto != policy.TCP && proto != policy.UDP) {
		return cmdHook, nil, nil
	}
	list, ok := portList(ports, proto)
	if !ok {
		return cmdHook, nil, nil
	}
	return kind, list, nil
}

// onlyAsSource refuses %IP% anywhere in a rule's arguments but as the
// value of one of flags, and there only alone.
func onlyAsSource(args []string, flags ...string) error {
	for i, a := range args {
		if !strings.Contains(a, "%IP%") {
			continue
		}
		if i == 0 || !slices.Contains(flags, args[i-1]) {
			where := "first"
			if i > 0 {
				where = "after " + args[i-1]
			}
			return fmt.Errorf("%%IP%% in an unusual place (%q, %s): the gate opens ports to the knocking address as a source only", a, where)
		}
		if _, err := sourceIP(a); err != nil {
			return err
		}
	}
	return nil
}

var nftPortRE = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

func nftRule(args []string) (cmdKind, []policy.Port, error) {
	// nft 'add rule ...' as one argument, or options first.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		args = args[1:]
	}
	if len(args) == 1 {
		args = strings.Fields(args[0])
	}
	if len(args) < 5 || args[1] != "rule" {
		return cmdHook, nil, nil // a set's element, a table, a chain: a command of its own
	}
	if err := onlyAsSource(args, "saddr"); err != nil {
		return cmdHook, nil, err
	}
	kind := cmdHook
	switch args[0] {
	case "add", "insert":
		kind = cmdAccept
	case "delete", "destroy":
		if args[1] == "rule" && strings.Contains(strings.Join(args, " "), "%IP%") {
			return cmdUndo, nil, nil
		}
		return cmdHook, nil, nil
	default:
		return cmdHook, nil, nil
	}
	if args[1] != "rule" || !slices.Contains([]string{"ip", "ip6", "inet"}, args[2]) || !strings.EqualFold(args[4], "input") {
		return cmdHook, nil, nil
	}
	rest := args[5:]
	src, accept := false, false
	var ports []policy.Port
	for i := 0; i < len(rest); i++ {
		w := rest[i]
		switch {
		case (w == "ip" || w == "ip6") && i+2 < len(rest) && rest[i+1] == "saddr":
			src, _ = sourceIP(rest[i+2])
			i += 2
		case (w == "tcp" || w == "udp") && i+2 < len(rest) && rest[i+1] == "dport":
			proto := policy.TCP
			if w == "udp" {
				proto = policy.UDP
			}
			i += 2
			spec := rest[i]
			if strings.HasPrefix(spec, "{") {
				for !strings.HasSuffix(spec, "}") && i+1 < len(rest) {
					i++
					spec += rest[i]
				}
				spec = strings.Trim(spec, "{}")
			}
			for _, item := range strings.Split(spec, ",") {
				item = strings.TrimSpace(item)
				if item == "" {
					continue
				}
				if !nftPortRE.MatchString(item) {
					return cmdHook, nil, nil
				}
				list, ok := portList(item, proto)
				if !ok {
					return cmdHook, nil, nil
				}
				ports = append(ports, list...)
			}
		case w == "ct" && i+2 < len(rest) && rest[i+1] == "state":
			i += 2
		case w == "counter":
		case w == "accept" && i == len(rest)-1:
			accept = true
		default:
			return cmdHook, nil, nil
		}
	}
	if !src || !accept || len(ports) == 0 {
		return cmdHook, nil, nil
	}
	return kind, ports, nil
}

// helperRule reads knockd's knock_helper_ipt.sh (knock_add in knockd's
// example): -a|-i|-x, -f SRC, -d PORT, -p PROTO (tcp), -c CHAIN (INPUT).
func helperRule(args []string) (cmdKind, []policy.Port, error) {
	if err := onlyAsSource(args, "-f", "--srcaddr"); err != nil {
		return cmdHook, nil, err
	}
	kind := cmdHook
	src := false
	proto := policy.TCP
	var port string
	for i := 0; i < len(args); i++ {
		val := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch args[i] {
		case "-a", "--append", "-i", "--insert":
			kind = cmdAccept
		case "-x", "--delete":
			kind = cmdUndo
		case "-f", "--srcaddr":
			src, _ = sourceIP(val())
		case "-d", "--dstport":
			port = val()
		case "-p", "--proto":
			switch val() {
			case "tcp":
			case "udp":
				proto = policy.UDP
			default:
				return cmdHook, nil, nil
			}
		case "-c", "--chain":
			if val() != "INPUT" {
				return cmdHook, nil, nil
			}
		case "-m", "--comment", "-v", "--verbose":
			if args[i] == "-m" || args[i] == "--comment" {
				if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
					i++
				}
			}
		default:
			return cmdHook, nil, nil
		}
	}
	if kind == cmdHook || !src || port == "" {
		return cmdHook, nil, nil
	}
	list, ok := portList(port, proto)
	if !ok {
		return cmdHook, nil, nil
	}
	return kind, list, nil
}

// add takes svc as the next service (the first is default), unless the
// gate it would make cannot be (a port two sections protect, a step of two
// sequences): then it is refused with the reason.
func (im *knockdImport) add(svc *importedService) {
	svc.name = policy.DefaultService
	if len(im.services) > 0 {
		svc.name = im.serviceName(svc.section.name)
	}
	im.services = append(im.services, svc)
	text, err := im.render()
	if err == nil {
		_, err = config.Parse("knockgate.toml", []byte(text))
	}
	if err != nil {
		im.services = im.services[:len(im.services)-1]
		var fe *config.FileError
		if errors.As(err, &fe) {
			err = fe.Err
		}
		// What was said of it is moot: it is not imported.
		im.notes = slices.DeleteFunc(im.notes, func(n knockdNote) bool { return n.section == svc.section })
		im.refuse(svc.section, 0, "%v", err)
	}
}

// serviceName makes a section's name a service's: lower case,
// [a-z0-9_-], at most 31 characters, not default, none twice.
func (im *knockdImport) serviceName(section string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(section) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '-':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.TrimLeft(b.String(), "-_")
	if name == "" || name == policy.DefaultService {
		name = "section-" + name
	}
	if len(name) > 31 {
		name = name[:31]
	}
	base := name
	for n := 2; slices.ContainsFunc(im.services, func(s *importedService) bool { return s.name == name }) ||
		policy.CheckServiceName(name) != nil; n++ {
		suffix := "-" + strconv.Itoa(n)
		name = base[:min(len(base), 31-len(suffix))] + suffix
	}
	return name
}

// refuseUndo says why a section whose command only removes an accept is
// not imported, naming the section whose rule it removes.
func (im *knockdImport) refuseUndo(u *importedService) {
	for _, svc := range im.services {
		if svc.accepts && samePorts(svc.protect, u.undoes) {
			im.refuse(u.section, u.undoLine, "its command only undoes [%s]'s (removes the rule it adds): a grant here ends by itself after open (%s), or with knockgate revoke",
				svc.section.name, durationText(svc.open))
			return
		}
	}
	im.refuse(u.section, u.undoLine, "its command only removes a rule (accepting %s from the knocker): a grant here ends by itself after its open window, or with knockgate revoke",
		policy.FormatPorts(u.undoes))
}

// render writes the config file: the interface, the first service at the
// top level (default), the others as [services.NAME] tables.
func (im *knockdImport) render() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# knockgate config imported from %s by \"knockgate import knockd\":\n", im.source)
	b.WriteString("# one service per knockd section. Check it with knockgate run --check --config FILE.\n\n")
	fmt.Fprintf(&b, "interfaces = [%s]\n", tomlString(im.iface))
	hooks := false
	for _, svc := range im.services {
		hooks = hooks || svc.onOpen != nil || svc.onClose != nil
	}
	if hooks {
		if im.hookUser != "" {
			fmt.Fprintf(&b, "\n# knockd ran its commands as root.\nhook_user = %s\n", tomlString(im.hookUser))
		} else {
			b.WriteString("\n# knockd ran its commands as root; here they run as hook_user (default\n" +
				"# knockgate, which the package makes). A command that needs root needs:\n#hook_user = \"root\"\n")
		}
	}
	for i, svc := range im.services {
		b.WriteString("\n")
		if i == 0 {
			fmt.Fprintf(&b, "# [%s] (line %d): the service default, at the top level.\n", svc.section.name, svc.section.line)
		} else {
			fmt.Fprintf(&b, "# [%s] (line %d)\n[services.%s]\n", svc.section.name, svc.section.line, svc.name)
		}
		for _, c := range svc.comments {
			fmt.Fprintf(&b, "# %s\n", c)
		}
		fmt.Fprintf(&b, "sequence = %s\n", tomlString(policy.FormatPorts(svc.sequence)))
		fmt.Fprintf(&b, "step_timeout = %s\n", tomlString(durationText(svc.stepTimeout)))
		fmt.Fprintf(&b, "open = %s  # %s\n", tomlString(durationText(svc.open)), svc.openWhy)
		protect := "none"
		if len(svc.protect) > 0 {
			protect = policy.FormatPorts(svc.protect)
		}
		fmt.Fprintf(&b, "protect = %s\n", tomlString(protect))
		if svc.onOpen != nil {
			fmt.Fprintf(&b, "on_open = %s\n", tomlArray(svc.onOpen))
		}
		if svc.onClose != nil {
			fmt.Fprintf(&b, "on_close = %s\n", tomlArray(svc.onClose))
		}
	}
	return b.String(), nil
}

// durationText is a duration as a person writes it: "5s", "30m", "1h30m".
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// tomlString is s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", c)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func tomlArray(a []string) string {
	q := make([]string, len(a))
	for i, s := range a {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
