//go:build linux

package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/policy"
)

// importFile imports a knockd.conf of testdata/knockd and parses the
// result as run would.
func importFile(t *testing.T, name string, args ...string) (*config.Settings, result) {
	t.Helper()
	r := invoke(t, nil, append([]string{"import", "knockd", filepath.Join("testdata", "knockd", name)}, args...)...)
	if r.code != 0 {
		t.Fatalf("import %s: %+v", name, r)
	}
	s, err := config.Parse("knockgate.toml", []byte(r.stdout))
	if err != nil {
		t.Fatalf("the imported file does not parse: %v\n%s", err, r.stdout)
	}
	return s, r
}

func ports(t *testing.T, s string) []policy.Port {
	t.Helper()
	p, err := policy.ParsePorts(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Debian's own /etc/knockd.conf (knockd 0.8-2): [openSSH] is the service
// default, its iptables accept port 22 protected; [openHTTPS]'s
// knock_add is knock_helper_ipt.sh's accept of port 443; [closeSSH] only
// undoes [openSSH], and says so, naming its line.
func TestImportDebianKnockdConf(t *testing.T) {
	s, r := importFile(t, "debian.conf")
	want := []policy.Service{
		{Name: "default", Sequence: ports(t, "7000,8000,9000"), StepTimeout: 5 * time.Second, Open: 30 * time.Minute, Protect: ports(t, "22")},
		{Name: "openhttps", Sequence: ports(t, "12345,54321,24680,13579"), StepTimeout: 5 * time.Second, Open: 30 * time.Minute, Protect: ports(t, "443")},
	}
	if !reflect.DeepEqual(s.Policy.Services, want) {
		t.Errorf("services %+v\nwant %+v", s.Policy.Services, want)
	}
	if !reflect.DeepEqual(s.Interfaces, []string{"eth0"}) || s.AnyHooks() {
		t.Errorf("interfaces %v, hooks %v", s.Interfaces, s.Hooks)
	}
	for _, line := range []string{
		"[closeSSH] line 13: not imported: its command only undoes [openSSH]'s (removes the rule it adds): a grant here ends by itself after open (30m), or with knockgate revoke",
		"[openSSH] line 4: no stop_command: the grant lasts open = \"30m\" here",
	} {
		if !strings.Contains(r.stderr, "knockgate: testdata/knockd/debian.conf: "+line) {
			t.Errorf("stderr lacks %q:\n%s", line, r.stderr)
		}
	}
	if !strings.Contains(r.stdout, "# [openSSH] (line 4): the service default, at the top level.") {
		t.Errorf("the output does not say where default comes from:\n%s", r.stdout)
	}
}

// A richer file: UDP steps, cmd_timeout as the open window, a stop_command
// that removes start_command's rule (nothing to run), nftables, commands of
// their own (argv, or sh -c when they use the shell), and the refusals.
func TestImportRichKnockdConf(t *testing.T) {
	s, r := importFile(t, "rich.conf", "--hook-user", "nobody", "--interface", "veth9")
	if !reflect.DeepEqual(s.Interfaces, []string{"veth9"}) || s.HookUser != "nobody" {
		t.Errorf("interfaces %v, hook_user %s", s.Interfaces, s.HookUser)
	}
	want := []policy.Service{
		{Name: "default", Sequence: ports(t, "2222/udp,3333,4444/udp"), StepTimeout: 15 * time.Second, Open: 20 * time.Second, Protect: ports(t, "22")},
		{Name: "web", Sequence: ports(t, "5001,5002/udp"), StepTimeout: 25 * time.Second, Open: time.Hour, Protect: ports(t, "80,443")},
		{Name: "wake", Sequence: ports(t, "6001,6002"), StepTimeout: 25 * time.Second, Open: 30 * time.Minute},
		{Name: "notify", Sequence: ports(t, "6101/udp"), StepTimeout: 25 * time.Second, Open: time.Minute},
	}
	if !reflect.DeepEqual(s.Policy.Services, want) {
		t.Errorf("services %+v\nwant %+v", s.Policy.Services, want)
	}
	wantHooks := map[string]*config.Hooks{
		"web":  {OnClose: []string{"/usr/local/bin/web-closed", "{source}"}},
		"wake": {OnOpen: []string{"/usr/sbin/etherwake", "-i", "eth1", "00:11:22:33:44:55"}},
		"notify": {OnOpen: []string{"/bin/sh", "-c", `logger -t knockd "knock from {source}" && curl -s https://chat.example/hook?ip={source}`},
			OnClose: []string{"logger", "-t", "knockd", "closing {source}"}},
	}
	for name, h := range wantHooks {
		if got := s.HooksOf(name); !reflect.DeepEqual(got, h) {
			t.Errorf("hooks of %s: %+v, want %+v", name, got, h)
		}
	}
	if s.HooksOf("default") != nil {
		t.Errorf("default's stop_command removes its start_command's rule: no hook wanted, got %+v", s.HooksOf("default"))
	}
	for _, line := range []string{
		"[otp] line 33: not imported: one_time_sequences",
		`[subnet] line 39: not imported: %IP% in an unusual place ("%IP%/24")`,
		"[finflags] line 43: not imported: tcpflags fin,!ack: a knock with FIN set is not a knock to the gate",
		"[clash] line 46: not imported: port 22 is protected by both services default and clash",
		"[closeWeb] line 52: not imported: its command only removes a rule (accepting 8443 from the knocker)",
	} {
		if !strings.Contains(r.stderr, line) {
			t.Errorf("stderr lacks %q:\n%s", line, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "[clash] line 46: no stop_command") {
		t.Errorf("a section not imported has other notes:\n%s", r.stderr)
	}
}

// Nothing importable: exit 1 and nothing on stdout; a format other than
// knockd is a usage error.
func TestImportNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "knockd.conf")
	os.WriteFile(path, []byte("[options]\n\tUseSyslog\n[x]\n\tone_time_sequences = /etc/otp\n\tcommand = /bin/true\n"), 0o644)
	r := invoke(t, nil, "import", "knockd", path)
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "nothing to import: no section could be translated") ||
		!strings.Contains(r.stderr, "[x] line 4: not imported: one_time_sequences") {
		t.Errorf("%+v", r)
	}
	if r := invoke(t, nil, "import", "fwknop"); r.code != 2 || !strings.Contains(r.stderr, "the only format is knockd") {
		t.Errorf("import fwknop: %+v", r)
	}
	if r := invoke(t, nil, "import", "knockd", filepath.Join(t.TempDir(), "none")); r.code != 1 {
		t.Errorf("a missing file: %+v", r)
	}
	if r := invoke(t, nil, "import", "knockd", path, "--interface", "a/b"); r.code != 2 {
		t.Errorf("a bad interface: %+v", r)
	}
}

// What each command is to the gate.
func TestClassifyKnockdCommands(t *testing.T) {
	for _, tc := range []struct {
		cmd   string
		kind  cmdKind
		ports string   // accept, undo
		argv  []string // hook
		err   string
	}{
		{cmd: "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", kind: cmdAccept, ports: "22"},
		{cmd: "iptables -I INPUT 1 -s %IP% -p tcp --syn --dport 22 -j ACCEPT", kind: cmdAccept, ports: "22"},
		{cmd: "/usr/sbin/iptables -w -I INPUT -s %IP%/32 -p udp -m udp --dport 51820 -m comment --comment 'by knockd' -j ACCEPT", kind: cmdAccept, ports: "51820/udp"},
		{cmd: "iptables -A INPUT -m state --state NEW -s %IP% -p tcp -m multiport --dports 80,443,8000:8002 -j ACCEPT", kind: cmdAccept, ports: "80,443,8000-8002"},
		{cmd: "ip6tables -A INPUT -s %IP%/128 -p tcp --dport 22 -j ACCEPT", kind: cmdAccept, ports: "22"},
		{cmd: "/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", kind: cmdUndo, ports: "22"},
		{cmd: "iptables -t filter --append INPUT --source %IP% --protocol tcp --destination-port 22 --jump ACCEPT", kind: cmdAccept, ports: "22"},
		{cmd: "nft add rule inet filter input ip saddr %IP% tcp dport 22 accept", kind: cmdAccept, ports: "22"},
		{cmd: "nft insert rule ip filter INPUT ip saddr %IP% ct state new udp dport { 53, 1194 } counter accept", kind: cmdAccept, ports: "53/udp,1194/udp"},
		{cmd: "nft 'add rule inet filter input ip6 saddr %IP% tcp dport 1000-1002 accept'", kind: cmdAccept, ports: "1000-1002"},
		{cmd: "/usr/sbin/knock_helper_ipt.sh -i -c INPUT -p tcp -d 443 -f %IP%", kind: cmdAccept, ports: "443"},
		{cmd: "/usr/local/sbin/knock_add -x -d 443 -f %IP% -m", kind: cmdUndo, ports: "443"},
		// Not a plain accept to a port: a command of its own.
		{cmd: "iptables -A FORWARD -s %IP% -p tcp --dport 22 -j ACCEPT", kind: cmdHook,
			argv: []string{"iptables", "-A", "FORWARD", "-s", "{source}", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"}},
		{cmd: "iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT", kind: cmdHook,
			argv: []string{"iptables", "-A", "INPUT", "-s", "{source}", "-p", "tcp", "--syn", "-j", "ACCEPT"}},
		{cmd: "iptables -A INPUT -s %IP% -p tcp --dport 22 -j LOG", kind: cmdHook,
			argv: []string{"iptables", "-A", "INPUT", "-s", "{source}", "-p", "tcp", "--dport", "22", "-j", "LOG"}},
		{cmd: "nft add element inet filter knocked { %IP% }", kind: cmdHook,
			argv: []string{"nft", "add", "element", "inet", "filter", "knocked", "{{", "{source}", "}}"}},
		{cmd: `/usr/bin/curl -d "ip=%IP%" 'https://x.example/{a}'`, kind: cmdHook,
			argv: []string{"/usr/bin/curl", "-d", "ip={source}", "https://x.example/{{a}}"}},
		{cmd: "echo %IP% >> /var/log/knocks", kind: cmdHook, argv: []string{"/bin/sh", "-c", "echo {source} >> /var/log/knocks"}},
		{cmd: `logger "from $HOSTNAME: %IP%"`, kind: cmdHook, argv: []string{"/bin/sh", "-c", `logger "from $HOSTNAME: {source}"`}},
		// %IP% where a rule does not take the knocker alone as its source.
		{cmd: "iptables -A INPUT -s %IP%/24 -p tcp --dport 22 -j ACCEPT", err: `%IP% in an unusual place ("%IP%/24")`},
		{cmd: "iptables -A INPUT -d %IP% -p tcp --dport 22 -j ACCEPT", err: `%IP% in an unusual place ("%IP%", after -d)`},
		{cmd: "nft add rule inet filter input ip daddr %IP% tcp dport 22 accept", err: `%IP% in an unusual place ("%IP%", after daddr)`},
		{cmd: "/usr/sbin/knock_helper_ipt.sh -a -d %IP% -f %IP%", err: `%IP% in an unusual place ("%IP%", after -d)`},
		{cmd: "/opt/%IP%/run", err: "%IP% in an unusual place: the command's name"},
	} {
		c, ok := classify(tc.cmd)
		if tc.err != "" {
			if ok.ok || !strings.Contains(ok.why, tc.err) {
				t.Errorf("%s: %+v %+v, want %q", tc.cmd, c, ok, tc.err)
			}
			continue
		}
		if !ok.ok || c.kind != tc.kind {
			t.Errorf("%s: kind %d (%+v), want %d", tc.cmd, c.kind, ok, tc.kind)
			continue
		}
		if tc.ports != "" && !samePorts(c.ports, ports(t, tc.ports)) {
			t.Errorf("%s: ports %v, want %s", tc.cmd, c.ports, tc.ports)
		}
		if tc.argv != nil && !reflect.DeepEqual(c.argv, tc.argv) {
			t.Errorf("%s: argv %q, want %q", tc.cmd, c.argv, tc.argv)
		}
		for _, a := range c.argv[min(1, len(c.argv)):] {
			if _, err := config.Expand(a, func(string) string { return "x" }); err != nil {
				t.Errorf("%s: argument %q does not expand: %v", tc.cmd, a, err)
			}
		}
	}
}

// tcpflags against what the gate counts as a TCP knock.
func TestImportTCPFlags(t *testing.T) {
	for flags, want := range map[string]string{
		"syn":         "",
		"syn,!ack":    "",
		"SYN,!RST":    "",
		"!ack":        "the gate counts only a SYN without ACK, RST or FIN as a TCP knock",
		"syn,ack":     "not imported: tcpflags syn,ack: a knock with ACK set",
		"fin":         "not imported: tcpflags fin: a knock with FIN set",
		"!syn":        "not imported: tcpflags !syn: the gate counts TCP knocks with SYN set",
		"syn,bogus":   `not imported: tcpflags: unknown flag "bogus"`,
		"urg,syn,psh": "not imported: tcpflags urg,syn,psh: a knock with PSH set",
	} {
		conf := "[s]\nsequence = 7000,8000\ntcpflags = " + flags + "\ncommand = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
		_, notes, _ := importKnockd("t", strings.NewReader(conf), "", "")
		var said []string
		for _, n := range notes {
			if strings.Contains(n.text, "tcpflags") {
				said = append(said, n.String())
			}
		}
		got := strings.Join(said, "\n")
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("tcpflags %s: %q, want %q", flags, got, want)
		}
	}
	// UDP steps only: the flags do not matter.
	conf := "[s]\nsequence = 7000:udp\ntcpflags = fin\ncommand = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
	if out, _, err := importKnockd("t", strings.NewReader(conf), "", ""); err != nil || !strings.Contains(out, `sequence = "7000/udp"`) {
		t.Errorf("UDP steps with tcpflags: %v\n%s", err, out)
	}
}

// knockd's sequence syntax, and what the gate cannot take of it.
func TestKnockdSequence(t *testing.T) {
	for in, want := range map[string]string{
		"7000,8000,9000":          "7000,8000,9000",
		"2222:udp, 3333:TCP,4444": "2222/udp,3333,4444",
	} {
		got, err := knockdSequence(in)
		if err != nil || policy.FormatPorts(got) != want {
			t.Errorf("%q: %v, %v; want %s", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"1,2,3,4,5,6,7,8,9": "9 steps: the gate takes at most 8",
		"7000,7000":         "step 2 (7000) repeats step 1",
		"7000:icmp":         `protocol "icmp"`,
		"70000":             "not a port",
	} {
		if _, err := knockdSequence(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// Section names become service names the gate takes.
func TestImportServiceNames(t *testing.T) {
	im := &knockdImport{services: []*importedService{{name: "default"}, {name: "open-ssh"}}}
	for in, want := range map[string]string{
		"openHTTPS": "openhttps",
		"Open SSH":  "open-ssh-2",
		"default":   "section-default",
		"___":       "section-",
		"a-very-long-section-name-that-goes-past": "a-very-long-section-name-that-g",
	} {
		if got := im.serviceName(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
