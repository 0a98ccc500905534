package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// Man pages and shell completions are made from the command table, as
// --help is, so they cannot say otherwise: the files in doc/ are what these
// functions print for a Linux build, and docs_linux_test.go keeps them so
// (go test ./cmd/knockgate -update rewrites them).

// operand is what a command's first argument names, read from its
// synopsis, so that completion can offer it.
type operand int

const (
	operandNone   operand = iota
	operandIfaces         // IFACE...: network interfaces
	operandGate           // GATE|IFACE: a gate, or an interface of one
	operandHost           // HOST: a host name or address
)

func (c *command) operand() operand {
	first, _, _ := strings.Cut(c.synopsis, " ")
	switch strings.Trim(first, "[]") {
	case "IFACE...":
		return operandIfaces
	case "GATE|IFACE":
		return operandGate
	case "HOST":
		return operandHost
	}
	return operandNone
}

// docFlag is one flag as the docs show it.
type docFlag struct {
	name, short, arg, usage, def string
}

func docFlags(fs *pflag.FlagSet) []docFlag {
	var out []docFlag
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		arg, usage := pflag.UnquoteUsage(f)
		if f.Value.Type() == "bool" {
			arg = ""
		}
		def := ""
		if f.Value.Type() != "bool" && f.DefValue != "" && f.DefValue != "0" && f.DefValue != "[]" {
			def = f.DefValue
		}
		out = append(out, docFlag{f.Name, f.Shorthand, arg, usage, def})
	})
	return out
}

// roff escapes text for a man page line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// paragraph is help text as roff: its lines joined (help wraps them for a
// terminal; man wraps them for the page).
func paragraph(s string) string {
	return roff(strings.Join(strings.Fields(s), " "))
}

func writeFlags(b *strings.Builder, fs *pflag.FlagSet) {
	for _, f := range docFlags(fs) {
		b.WriteString(".TP\n")
		name := `\fB\-\-` + roff(f.name) + `\fR`
		if f.short != "" {
			name = `\fB\-` + roff(f.short) + `\fR, ` + name
		}
		if f.arg != "" {
			name += ` \fI` + roff(f.arg) + `\fR`
		}
		b.WriteString(name + "\n")
		usage := f.usage
		if f.def != "" {
			usage += " (default " + f.def + ")"
		}
		b.WriteString(paragraph(usage) + "\n")
	}
}

const topDescription = "knockgate keeps protected ports closed to everyone except sources that knock a secret " +
	"sequence of ports first, or send one signed SPA packet; an XDP program does the work."

// writeManGate prints knockgate(8): the gate and every command, the
// gate's in full.
func writeManGate(w io.Writer, cmds []*command) {
	var b strings.Builder
	b.WriteString(`.TH KNOCKGATE 8 "" "knockgate" "System Manager's Manual"` + "\n")
	b.WriteString(".SH NAME\nknockgate \\- a port\\-knocking and single\\-packet authorization gate in XDP\n")
	b.WriteString(".SH SYNOPSIS\n")
	for _, c := range cmds {
		b.WriteString(".B knockgate " + roff(c.name) + "\n")
		if s := strings.TrimSpace(c.synopsis); s != "" {
			b.WriteString(roff(s) + "\n")
		}
		b.WriteString(".br\n")
	}
	b.WriteString(".SH DESCRIPTION\n" + paragraph(topDescription) + "\n")
	b.WriteString(".PP\nThe gate's commands need root and run on Linux only; " +
		"\\fBknock\\fR, \\fBkeygen\\fR and \\fBversion\\fR are the client's, on every system " +
		"(see \\fBknockgate\\-knock\\fR(1) and \\fBknockgate\\-keygen\\fR(1)).\n")
	b.WriteString(".SH COMMANDS\n")
	for _, c := range cmds {
		b.WriteString(".SS " + roff(c.name) + "\n")
		b.WriteString(`\fBknockgate ` + roff(c.name) + `\fR ` + roff(c.synopsis) + "\n.PP\n")
		b.WriteString(paragraph(c.help) + "\n")
		writeFlags(&b, c.flags)
	}
	b.WriteString(".SH FILES\n.TP\n.I /etc/knockgate/knockgate.toml\nthe config file of \\fBknockgate run\\fR (the service knockgate.service)\n")
	b.WriteString(".TP\n.I /sys/fs/bpf/knockgate\nthe gates' pinned programs and maps\n")
	b.WriteString(".TP\n.I /var/lib/knockgate\nthe service's state directory (a fleet's store: state_dir)\n")
	b.WriteString(".SH SEE ALSO\n\\fBknockgate\\-knock\\fR(1), \\fBknockgate\\-keygen\\fR(1), \\fBsystemctl\\fR(1)\n")
	io.WriteString(w, b.String())
}

// writeManClient prints knockgate-NAME(1) for a client's command.
func writeManClient(w io.Writer, c *command) {
	var b strings.Builder
	upper := strings.ToUpper("knockgate-" + c.name)
	fmt.Fprintf(&b, ".TH %s 1 \"\" \"knockgate\" \"User Commands\"\n", roff(upper))
	fmt.Fprintf(&b, ".SH NAME\nknockgate\\-%s \\- %s\n", roff(c.name), roff(c.summary))
	b.WriteString(".SH SYNOPSIS\n.B knockgate " + roff(c.name) + "\n" + roff(c.synopsis) + "\n")
	b.WriteString(".SH DESCRIPTION\n" + paragraph(c.help) + "\n")
	if c.flags.HasFlags() {
		b.WriteString(".SH OPTIONS\n")
		writeFlags(&b, c.flags)
	}
	b.WriteString(".SH SEE ALSO\n\\fBknockgate\\fR(8)")
	for _, other := range []string{"knock", "keygen"} {
		if other != c.name {
			b.WriteString(", \\fBknockgate\\-" + other + "\\fR(1)")
		}
	}
	b.WriteString("\n")
	io.WriteString(w, b.String())
}

// manPages is every man page by file name.
func manPages(cmds []*command) map[string]string {
	pages := map[string]string{}
	var b strings.Builder
	writeManGate(&b, cmds)
	pages["knockgate.8"] = b.String()
	for _, name := range []string{"knock", "keygen"} {
		var b strings.Builder
		writeManClient(&b, find(cmds, name))
		pages["knockgate-"+name+".1"] = b.String()
	}
	return pages
}

// How the completion scripts list what an operand names: gates are the
// directories under the pin root (readable by root only; others get none),
// interfaces those of /sys/class/net.
const (
	shGates  = "ls /sys/fs/bpf/knockgate 2>/dev/null"
	shIfaces = "ls /sys/class/net 2>/dev/null"
)

// fileArg says whether a flag's argument is a file.
func fileArg(f docFlag) bool { return strings.Contains(f.arg, "FILE") }

// shellWord quotes s for a shell's single quotes.
func shellWord(s string) string { return strings.ReplaceAll(s, "'", `'\''`) }

func writeBash(w io.Writer, cmds []*command) {
	var b strings.Builder
	b.WriteString("# bash completion for knockgate, made from its command table (do not edit).\n")
	b.WriteString("_knockgate() {\n\tlocal cur prev cmd i\n\tcur=${COMP_WORDS[COMP_CWORD]}\n\tprev=${COMP_WORDS[COMP_CWORD-1]}\n")
	b.WriteString("\tcmd=\n\tfor ((i = 1; i < COMP_CWORD; i++)); do\n\t\tcase ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac\n\tdone\n")
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	fmt.Fprintf(&b, "\tif [[ -z $cmd ]]; then\n\t\tCOMPREPLY=($(compgen -W 'help %s' -- \"$cur\"))\n\t\treturn\n\tfi\n", strings.Join(names, " "))
	b.WriteString("\tcase $cmd in\n")
	b.WriteString(fmt.Sprintf("\thelp)\n\t\tCOMPREPLY=($(compgen -W '%s' -- \"$cur\"))\n\t\treturn\n\t\t;;\n", strings.Join(names, " ")))
	for _, c := range cmds {
		fmt.Fprintf(&b, "\t%s)\n", c.name)
		var flags, valued, files []string
		for _, f := range docFlags(c.flags) {
			flags = append(flags, "--"+f.name)
			if f.short != "" {
				flags = append(flags, "-"+f.short)
			}
			if f.arg != "" {
				valued = append(valued, "--"+f.name)
				if fileArg(f) {
					files = append(files, "--"+f.name)
				}
			}
		}
		flags = append(flags, "--help")
		if len(files) > 0 {
			fmt.Fprintf(&b, "\t\tcase $prev in %s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;; esac\n", strings.Join(files, "|"))
		}
		if len(valued) > 0 {
			fmt.Fprintf(&b, "\t\tcase $prev in %s) return ;; esac\n", strings.Join(valued, "|"))
		}
		fmt.Fprintf(&b, "\t\tif [[ $cur == -* ]]; then\n\t\t\tCOMPREPLY=($(compgen -W '%s' -- \"$cur\"))\n\t\t\treturn\n\t\tfi\n", strings.Join(flags, " "))
		switch c.operand() {
		case operandIfaces:
			fmt.Fprintf(&b, "\t\tCOMPREPLY=($(compgen -W \"$(%s)\" -- \"$cur\"))\n", shIfaces)
		case operandGate:
			fmt.Fprintf(&b, "\t\tCOMPREPLY=($(compgen -W \"$(%s) $(%s)\" -- \"$cur\"))\n", shGates, shIfaces)
		case operandHost:
			b.WriteString("\t\tCOMPREPLY=($(compgen -A hostname -- \"$cur\"))\n")
		}
		b.WriteString("\t\t;;\n")
	}
	b.WriteString("\tesac\n}\ncomplete -F _knockgate knockgate\n")
	io.WriteString(w, b.String())
}

func writeZsh(w io.Writer, cmds []*command) {
	var b strings.Builder
	b.WriteString("#compdef knockgate\n# zsh completion for knockgate, made from its command table (do not edit).\n\n")
	fmt.Fprintf(&b, "_knockgate_gates() {\n\tlocal -a gates\n\tgates=(${(f)\"$(%s)\"})\n\t_describe -t gates gate gates\n}\n\n", shGates)
	fmt.Fprintf(&b, "_knockgate_ifaces() {\n\tlocal -a ifaces\n\tifaces=(${(f)\"$(%s)\"})\n\t_describe -t interfaces interface ifaces\n}\n\n", shIfaces)
	b.WriteString("_knockgate() {\n\tlocal -a commands\n\tcommands=(\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "\t\t'%s:%s'\n", c.name, shellWord(strings.ReplaceAll(c.summary, ":", `\:`)))
	}
	b.WriteString("\t)\n\tif (( CURRENT == 2 )); then\n\t\t_describe -t commands command commands\n\t\treturn\n\tfi\n")
	b.WriteString("\tlocal cmd=${words[2]}\n\tshift 'words'\n\t(( CURRENT-- ))\n\tcase $cmd in\n")
	b.WriteString("\thelp)\n\t\t_describe -t commands command commands\n\t\t;;\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "\t%s)\n\t\t_arguments -s \\\n", c.name)
		for _, f := range docFlags(c.flags) {
			desc := shellWord(strings.NewReplacer("[", `\[`, "]", `\]`, ":", `\:`).Replace(f.usage))
			spec := ""
			if f.arg != "" {
				action := " "
				if fileArg(f) {
					action = "_files"
				}
				spec = ":" + strings.ToLower(f.arg) + ":" + action
			}
			if f.short != "" {
				fmt.Fprintf(&b, "\t\t\t'(-%s --%s)'{-%s,--%s}'[%s]%s' \\\n", f.short, f.name, f.short, f.name, desc, spec)
			} else {
				fmt.Fprintf(&b, "\t\t\t'--%s[%s]%s' \\\n", f.name, desc, spec)
			}
		}
		switch c.operand() {
		case operandIfaces:
			b.WriteString("\t\t\t'*:interface:_knockgate_ifaces'\n")
		case operandGate:
			b.WriteString("\t\t\t'1:gate or interface:{_knockgate_gates; _knockgate_ifaces}' \\\n\t\t\t'*: :'\n")
		case operandHost:
			b.WriteString("\t\t\t'1:host:_hosts' \\\n\t\t\t'*:port:'\n")
		default:
			b.WriteString("\t\t\t'*: :'\n")
		}
		b.WriteString("\t\t;;\n")
	}
	b.WriteString("\tesac\n}\n\n_knockgate \"$@\"\n")
	io.WriteString(w, b.String())
}

func writeFish(w io.Writer, cmds []*command) {
	var b strings.Builder
	b.WriteString("# fish completion for knockgate, made from its command table (do not edit).\n")
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	all := strings.Join(names, " ")
	b.WriteString("complete -c knockgate -f\n")
	fmt.Fprintf(&b, "complete -c knockgate -n 'not __fish_seen_subcommand_from help %s' -a help -d 'show a command\\'s help'\n", all)
	for _, c := range cmds {
		fmt.Fprintf(&b, "complete -c knockgate -n 'not __fish_seen_subcommand_from help %s' -a %s -d '%s'\n", all, c.name, fishWord(c.summary))
	}
	fmt.Fprintf(&b, "complete -c knockgate -n '__fish_seen_subcommand_from help' -a '%s'\n", all)
	for _, c := range cmds {
		cond := "__fish_seen_subcommand_from " + c.name
		for _, f := range docFlags(c.flags) {
			line := fmt.Sprintf("complete -c knockgate -n '%s' -l %s", cond, f.name)
			if f.short != "" {
				line += " -s " + f.short
			}
			if f.arg != "" {
				if fileArg(f) {
					line += " -r -F"
				} else {
					line += " -x"
				}
			}
			b.WriteString(line + " -d '" + fishWord(f.usage) + "'\n")
		}
		switch c.operand() {
		case operandIfaces:
			fmt.Fprintf(&b, "complete -c knockgate -n '%s' -a '(%s)'\n", cond, shIfaces)
		case operandGate:
			fmt.Fprintf(&b, "complete -c knockgate -n '%s' -a '(%s; %s)'\n", cond, shGates, shIfaces)
		case operandHost:
			fmt.Fprintf(&b, "complete -c knockgate -n '%s' -a '(__fish_print_hostnames)'\n", cond)
		}
	}
	io.WriteString(w, b.String())
}

// fishWord quotes s for fish's single quotes.
func fishWord(s string) string {
	return strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s)
}

// completions is every completion script by its path under doc/completion.
func completions(cmds []*command) map[string]string {
	out := map[string]string{}
	for name, write := range map[string]func(io.Writer, []*command){
		"knockgate.bash": writeBash, "_knockgate": writeZsh, "knockgate.fish": writeFish,
	} {
		var b strings.Builder
		write(&b, cmds)
		out[name] = b.String()
	}
	return out
}

// docNames is the sorted keys of m.
func docNames(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
