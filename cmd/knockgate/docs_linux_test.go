package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The man pages and completion scripts in doc/ are what the command table
// makes (go test -update rewrites them), like testdata/help.
func TestDocsArePinned(t *testing.T) {
	cmds := commands()
	for dir, files := range map[string]map[string]string{
		"man":        manPages(cmds),
		"completion": completions(cmds),
	} {
		for _, name := range docNames(files) {
			path := filepath.Join("..", "..", "doc", dir, name)
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, []byte(files[name]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if files[name] != string(want) {
				t.Errorf("%s is not what the command table makes: run go test ./cmd/knockgate -update", path)
			}
		}
	}
}

// Every command's first argument is of a kind completion knows.
func TestOperands(t *testing.T) {
	want := map[string]operand{
		"attach": operandIfaces, "set": operandGate, "confirm": operandGate, "status": operandGate,
		"events": operandGate, "grant": operandGate, "revoke": operandGate, "detach": operandGate,
		"run": operandNone, "import": operandNone, "knock": operandHost, "keygen": operandNone, "version": operandNone,
	}
	for _, c := range commands() {
		got, ok := want[c.name]
		if !ok {
			t.Errorf("command %s: say here what its first argument is", c.name)
		} else if c.operand() != got {
			t.Errorf("command %s (synopsis %q): operand %d, want %d", c.name, c.synopsis, c.operand(), got)
		}
	}
}

// Each man page says what --help says: every flag and the help text's words.
func TestManPagesFollowHelp(t *testing.T) {
	pages := manPages(commands())
	for _, c := range commands() {
		page := pages["knockgate.8"]
		if c.name == "knock" || c.name == "keygen" {
			page = pages["knockgate-"+c.name+".1"]
		}
		for _, f := range docFlags(c.flags) {
			if !strings.Contains(page, `\fB\-\-`+roff(f.name)+`\fR`) {
				t.Errorf("%s: the man page lacks --%s", c.name, f.name)
			}
		}
		if !strings.Contains(page, paragraph(c.help)) {
			t.Errorf("%s: the man page lacks its help text", c.name)
		}
	}
	man, err := exec.LookPath("man")
	if err != nil {
		t.Log("man not installed: pages not rendered")
		return
	}
	for name, text := range pages {
		path := filepath.Join(t.TempDir(), name)
		os.WriteFile(path, []byte(text), 0o644)
		cmd := exec.Command(man, "--warnings", "-E", "UTF-8", "-l", path)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_STDERR=1", "PAGER=cat")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(string(out), "warning") {
			t.Errorf("man -l %s: %v\n%s", name, err, out)
		}
	}
}

// The bash script completes commands, flags, and interfaces (in this
// network namespace, lo is one) where a command takes one.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script := filepath.Join(t.TempDir(), "knockgate.bash")
	os.WriteFile(script, []byte(completions(commands())["knockgate.bash"]), 0o644)
	complete := func(words ...string) []string {
		t.Helper()
		line := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _knockgate; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command(bash, append([]string{"-c", line, "bash", script}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", words, err, out)
		}
		return strings.Fields(string(out))
	}
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"knockgate", "at"}, "attach"},
		{[]string{"knockgate", "kn"}, "knock"},
		{[]string{"knockgate", "attach", "--seq"}, "--sequence"},
		{[]string{"knockgate", "knock", "gate.example", "--spa-k"}, "--spa-key"},
		{[]string{"knockgate", "attach", "l"}, "lo"},
		{[]string{"knockgate", "status", "l"}, "lo"},
		{[]string{"knockgate", "help", "ke"}, "keygen"},
	} {
		if got := complete(c.words...); !strings.Contains(" "+strings.Join(got, " ")+" ", " "+c.want+" ") {
			t.Errorf("%q: %q, want %s among them", c.words, got, c.want)
		}
	}
	if got := complete("knockgate", "attach", "--open", ""); len(got) != 0 {
		t.Errorf("a value of --open: %q, want nothing offered", got)
	}
	for _, shell := range []string{"zsh", "fish"} {
		if path, err := exec.LookPath(shell); err == nil {
			name := map[string]string{"zsh": "_knockgate", "fish": "knockgate.fish"}[shell]
			f := filepath.Join(t.TempDir(), name)
			os.WriteFile(f, []byte(completions(commands())[name]), 0o644)
			if out, err := exec.Command(path, "-n", f).CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s", shell, name, err, out)
			}
		}
	}
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Errorf("bash -n: %v\n%s", err, out)
	}
}
