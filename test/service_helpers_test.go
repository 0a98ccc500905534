package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// The second link of a gate's topology: another veth pair between the
// same two namespaces, in 10.78.0.0/24. The client reaches the server's
// address on it (srv4b) from its first-link address cli4, so one source
// can knock over one link and connect over the other.
var srv4b = netip.MustParseAddr("10.78.0.1")

// addLink adds the second link; its server end is returned. suffix names
// it (one character: interface names stay within 15).
func (g *gate) addLink(suffix string) string {
	g.t.Helper()
	srvIf := g.iface[:len(g.iface)-1] + suffix
	g.plug(srvIf)
	return srvIf
}

// peer is the client's end of the link whose server end is srvIf.
func peer(srvIf string) string {
	return srvIf[:len(srvIf)-1] + strings.ToUpper(srvIf[len(srvIf)-1:])
}

// plug makes (or makes again) the veth pair of the second link whose server
// end is srvIf.
func (g *gate) plug(srvIf string) {
	g.t.Helper()
	cliIf := peer(srvIf)
	if err := netns.Veth(g.srv, srvIf, g.cli, cliIf); err != nil {
		g.t.Fatal(err)
	}
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{g.srv, []string{"addr", "add", srv4b.String() + "/24", "dev", srvIf}},
		{g.cli, []string{"addr", "add", "10.78.0.2/24", "dev", cliIf}},
		// To srv4b from cli4: over this link, with the first link's
		// address; the server answers over the first link.
		{g.cli, []string{"route", "replace", srv4b.String() + "/32", "dev", cliIf, "src", cli4.String()}},
	} {
		if _, err := c.ns.Run("ip", c.args...); err != nil {
			g.t.Fatal(err)
		}
	}
}

// unplug deletes the veth pair whose server end is srvIf from the client's
// side, the way a VPN or a container going away removes the server's
// interface with it.
func (g *gate) unplug(srvIf string) {
	g.t.Helper()
	if _, err := g.cli.Run("ip", "link", "del", peer(srvIf)); err != nil {
		g.t.Fatal(err)
	}
}

// lineLog collects a process's output lines as they come.
type lineLog struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
}

func newLineLog(r io.Reader) *lineLog {
	l := &lineLog{added: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
			select {
			case l.added <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

func (l *lineLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *lineLog) String() string { return strings.Join(l.all(), "\n") }

// service is `knockgate run` in the server namespace, with the config file
// it reads and the sd_notify socket it reports to.
type service struct {
	t      *testing.T
	g      *gate
	path   string
	cmd    *exec.Cmd
	out    *lineLog
	stderr bytes.Buffer
	notify *net.UnixConn
	states chan string
	exited chan struct{}
}

// configPath is where the test's config file goes: named after the server
// interface, so the gate run makes is called that too and the test's
// teardown detaches it.
func (g *gate) configPath() string {
	return filepath.Join(g.t.TempDir(), g.iface+".toml")
}

// startRun writes config and starts `knockgate run` on it (with args),
// then waits until it tells systemd it is ready.
func (g *gate) startRun(config string, args ...string) *service {
	g.t.Helper()
	path := g.configPath()
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		g.t.Fatal(err)
	}
	return g.startRunAt(path, nil, args...)
}

// startRunAt starts `knockgate run --config path`; wrap, if given, is the
// command line that runs the binary (setpriv ...).
func (g *gate) startRunAt(path string, wrap []string, args ...string) *service {
	g.t.Helper()
	s := &service{t: g.t, g: g, path: path, states: make(chan string, 16), exited: make(chan struct{})}
	sock := filepath.Join(g.t.TempDir(), "notify")
	var err error
	s.notify, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		g.t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := s.notify.Read(buf)
			if err != nil {
				close(s.states)
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				s.states <- line
			}
		}
	}()
	cmdline := append(append(wrap, kgBin, "run", "--config", path), args...)
	s.cmd = g.srv.Cmd(cmdline[0], cmdline[1:]...)
	s.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	s.cmd.Stderr = &s.stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		g.t.Fatal(err)
	}
	s.out = newLineLog(stdout)
	if err := s.cmd.Start(); err != nil {
		g.t.Fatalf("start knockgate run: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	g.t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
		s.notify.Close()
	})
	s.waitState("READY=1", 30*time.Second)
	return s
}

// waitState waits for sd_notify message want (a "KEY=VALUE" line).
func (s *service) waitState(want string, bound time.Duration) {
	s.t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case st := <-s.states:
			if st == want {
				return
			}
		case <-s.exited:
			s.t.Fatalf("knockgate run exited (%v) before %s; stderr %q; log:\n%s", s.cmd.ProcessState, want, s.stderr.String(), s.out)
		case <-deadline:
			s.t.Fatalf("no %s from knockgate run within %s; log:\n%s", want, bound, s.out)
		}
	}
}

// waitLog waits for a log line containing every one of parts, and returns
// it.
func (s *service) waitLog(bound time.Duration, parts ...string) string {
	s.t.Helper()
	deadline := time.After(bound)
	for {
		for _, line := range s.out.all() {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		}
		select {
		case <-s.out.added:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			s.t.Fatalf("no log line with %q within %s; log:\n%s", parts, bound, s.out)
		}
	}
}

// reload rewrites the config file (unless config is empty) and sends
// SIGHUP, waiting for the reload to finish (RELOADING=1, then READY=1).
func (s *service) reload(config string) {
	s.t.Helper()
	if config != "" {
		if err := os.WriteFile(s.path, []byte(config), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		s.t.Fatal(err)
	}
	s.waitState("RELOADING=1", 10*time.Second)
	s.waitState("READY=1", 10*time.Second)
}

// stop sends sig and returns the exit code.
func (s *service) stop(sig os.Signal) int {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	select {
	case <-s.exited:
	case <-time.After(cmdWait):
		s.t.Fatalf("knockgate run ignored %v", sig)
	}
	return s.cmd.ProcessState.ExitCode()
}

// scrape fetches the metrics that a run serves on addr in the server
// namespace.
func (g *gate) scrape(addr string) string {
	g.t.Helper()
	// The connection is made on a thread inside the namespace; the HTTP
	// client then only uses it (it would dial from its own threads).
	var conn net.Conn
	if err := g.srv.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		g.t.Fatal(err)
	}
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	var body []byte
	resp, err := c.Get("http://" + addr + "/metrics")
	if err == nil {
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			err = fmt.Errorf("GET /metrics: %s", resp.Status)
		} else {
			body, err = io.ReadAll(resp.Body)
		}
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return string(body)
}

// metric is the value of the sample named exactly series ("name{l="v"}")
// in a scrape, or -1.
func metric(scrape, series string) float64 {
	for _, line := range strings.Split(scrape, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// ifaceStatus is one entry of status --json's interfaces.
type ifaceStatus struct {
	Name     string            `json:"name"`
	State    string            `json:"state"`
	Mode     string            `json:"mode"`
	Ifindex  int               `json:"ifindex"`
	Counters map[string]uint64 `json:"counters"`
}

// gateStatus is `knockgate status GATE --json` in full.
type gateStatus struct {
	status
	Gate       string        `json:"gate"`
	Interfaces []ifaceStatus `json:"interfaces"`
	SafeMode   *struct {
		State string `json:"state"`
	} `json:"safe_mode"`
}

func (g *gate) gateStatus(name string) gateStatus {
	g.t.Helper()
	out := g.mustKG(g.srv, "status", name, "--json")
	var st gateStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		g.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func (st gateStatus) iface(name string) ifaceStatus {
	for _, i := range st.Interfaces {
		if i.Name == name {
			return i
		}
	}
	return ifaceStatus{}
}

// eventually polls cond every 50 ms for at most bound.
func eventually(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
