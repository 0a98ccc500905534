package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// Every test gets its own server and client namespaces joined by one veth
// pair, with the same addresses: namespaces keep them apart. The client has a
// second address per family (alt4, alt6) so one test can show that a grant
// belongs to one source only.
var (
	srv4 = netip.MustParseAddr("10.77.0.1")
	cli4 = netip.MustParseAddr("10.77.0.2")
	alt4 = netip.MustParseAddr("10.77.0.3")
	srv6 = netip.MustParseAddr("fd00:77::1")
	cli6 = netip.MustParseAddr("fd00:77::2")
	alt6 = netip.MustParseAddr("fd00:77::3")
)

// protected is the port every gate protects; a listener waits on it.
const protected = 22

const (
	// filteredWait is how long a connect may take before we call the port
	// filtered. A veth round trip takes microseconds, so this only has to
	// outlast scheduling noise on a busy machine; a dropped SYN is not
	// retransmitted before 1 s, so the attempt sends exactly one SYN.
	filteredWait = 400 * time.Millisecond
	// openWait bounds a connect that is expected to succeed.
	openWait = 3 * time.Second
	// cmdWait bounds every external command, so a hang fails the test
	// instead of the whole run.
	cmdWait = 60 * time.Second
)

// pinRoot is where knockgate pins its gates (loader.PinRoot). The tests
// look at the filesystem directly, as an operator would.
const pinRoot = "/sys/fs/bpf/knockgate"

// token names this test process in every namespace and interface it makes,
// so two runs of the suite at once never collide, and leftovers of a killed
// run can be told apart (see sweepStale).
var token = strconv.FormatInt(int64(os.Getpid()), 36)

var gateSeq atomic.Int32

// gate is one test's topology: server and client namespaces, a veth pair
// (iface in the server, where knockgate attaches) and a TCP listener on the
// protected port in the server.
type gate struct {
	t        *testing.T
	srv, cli *netns.NS
	iface    string
	cliIface string
	// spare is an interface name that exists nowhere.
	spare string
}

// newGate builds the topology for t and registers its teardown: detach
// first (ignoring errors: most tests detach or never attached), then check
// that no pin is left, then the listener, then the namespaces.
func newGate(t *testing.T) *gate {
	t.Helper()
	return newGateNamed(t, "s")
}

// newGateNamed is newGate with the server interface's name ending in
// suffix (at most 3 characters, to stay within 15).
func newGateNamed(t *testing.T, suffix string) *gate {
	t.Helper()
	n := strconv.FormatInt(int64(gateSeq.Add(1)), 36)
	g := &gate{
		t:        t,
		iface:    "kgt-" + token + "-" + n + suffix,
		cliIface: "kgt-" + token + "-" + n + "c",
		spare:    "kgt-" + token + "-" + n + "z",
	}
	g.srv = netns.NewT(t, "kgt-srv-"+token+"-"+n)
	g.cli = netns.NewT(t, "kgt-cli-"+token+"-"+n)
	if err := netns.Veth(g.srv, g.iface, g.cli, g.cliIface); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{g.srv, []string{"addr", "add", srv4.String() + "/24", "dev", g.iface}},
		{g.srv, []string{"-6", "addr", "add", srv6.String() + "/64", "dev", g.iface, "nodad"}},
		{g.cli, []string{"addr", "add", cli4.String() + "/24", "dev", g.cliIface}},
		// A second address in the same subnet is "secondary": never
		// picked as a source unless a socket binds it.
		{g.cli, []string{"addr", "add", alt4.String() + "/24", "dev", g.cliIface}},
		{g.cli, []string{"-6", "addr", "add", cli6.String() + "/64", "dev", g.cliIface, "nodad"}},
		// Deprecated (preferred_lft 0), for the same reason: tools that
		// pick their own source use cli6.
		{g.cli, []string{"-6", "addr", "add", alt6.String() + "/64", "dev", g.cliIface, "nodad", "preferred_lft", "0"}},
	} {
		if _, err := c.ns.Run("ip", c.args...); err != nil {
			t.Fatal(err)
		}
	}
	g.listen()
	t.Cleanup(func() {
		g.kg(g.srv, "detach", g.iface)
		g.assertNoPins(g.iface)
	})
	return g
}

// listen accepts (and closes) connections on the protected port, over both
// IPv4 and IPv6, in the server namespace.
func (g *gate) listen() {
	var ln net.Listener
	err := g.srv.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", protected))
		return err
	})
	if err != nil {
		g.t.Fatalf("listen on port %d in %s: %v", protected, g.srv.Name, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	g.t.Cleanup(func() { ln.Close() })
}

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// run runs cmd to completion, killing it after cmdWait.
func run(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd, err)
	}
	timer := time.AfterFunc(cmdWait, func() { cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", cmd, err)
	}
	return result{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// kg runs the knockgate binary in ns.
func (g *gate) kg(ns *netns.NS, args ...string) result {
	g.t.Helper()
	return run(g.t, ns.Cmd(kgBin, args...))
}

// mustKG runs the knockgate binary in ns and fails the test unless it
// succeeds; it returns stdout.
func (g *gate) mustKG(ns *netns.NS, args ...string) string {
	g.t.Helper()
	r := g.kg(ns, args...)
	if r.code != 0 {
		g.t.Fatalf("knockgate %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// attach attaches knockgate to the server interface with args, protecting
// only the listener's port unless args say otherwise.
func (g *gate) attach(args ...string) {
	g.t.Helper()
	g.mustKG(g.srv, append([]string{"attach", g.iface, "--protect", strconv.Itoa(protected)}, args...)...)
}

// Outcomes of a connect attempt.
const (
	open     = "open"     // handshake completed
	filtered = "filtered" // no answer at all: the SYN was dropped
	refused  = "refused"  // RST: nothing listens, but the SYN got through
)

// dial connects from src (in the client namespace) to dst:port, waiting at
// most wait, and says what happened.
func (g *gate) dial(src, dst netip.Addr, port int, wait time.Duration) string {
	g.t.Helper()
	var outcome string
	err := g.cli.Do(func() error {
		d := net.Dialer{Timeout: wait, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		c, err := d.Dial("tcp", netip.AddrPortFrom(dst, uint16(port)).String())
		var nerr net.Error
		switch {
		case err == nil:
			c.Close()
			outcome = open
		case errors.Is(err, syscall.ECONNREFUSED):
			outcome = refused
		case errors.As(err, &nerr) && nerr.Timeout():
			outcome = filtered
		default:
			return err
		}
		return nil
	})
	if err != nil {
		g.t.Fatalf("connect %s -> %s port %d: %v", src, dst, port, err)
	}
	return outcome
}

// expect asserts the outcome of a connect from src to the protected port.
func (g *gate) expect(want string, src, dst netip.Addr) {
	g.t.Helper()
	wait := filteredWait
	if want == open {
		wait = openWait
	}
	if got := g.dial(src, dst, protected, wait); got != want {
		g.t.Fatalf("connect %s -> [%s]:%d: %s, want %s", src, dst, protected, got, want)
	}
}

// knockTCP knocks with plain connects, the way a Winbox-style client does:
// each attempt must go unanswered (a knock port is never refused, so a
// scanner cannot tell it from a filtered one).
func (g *gate) knockTCP(src, dst netip.Addr, ports ...int) {
	g.t.Helper()
	for _, p := range ports {
		if got := g.dial(src, dst, p, filteredWait); got != filtered {
			g.t.Fatalf("knock %s -> [%s]:%d: %s, want filtered", src, dst, p, got)
		}
	}
}

// waitFiltered waits, at most bound, until the gate itself no longer lists
// src open (its grant's window has ended by the gate's clock), then checks
// that a connect from src is filtered. A connect that times out on a
// loaded machine is no proof the window ended; the gate's own view is.
func (g *gate) waitFiltered(src, dst netip.Addr, bound time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		if s, ok := g.status().source(src); !ok || s.State != "open" {
			break
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s still open on the gate after %s", src, bound)
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.expect(filtered, src, dst)
}

// status is `knockgate status IFACE --json`.
type status struct {
	Interface string `json:"interface"`
	Mode      string `json:"mode"`
	Config    struct {
		Sequence    []string `json:"sequence"`
		StepTimeout string   `json:"step_timeout"`
		Open        string   `json:"open"`
		Protect     []string `json:"protect"`
		Allow       []string `json:"allow"`
		Generation  uint64   `json:"generation"`
	} `json:"config"`
	Counters map[string]uint64 `json:"counters"`
	Sources  []source          `json:"sources"`
}

type source struct {
	Addr    string    `json:"addr"`
	State   string    `json:"state"`
	Stage   int       `json:"stage"`
	Expires time.Time `json:"expires"`
}

func (g *gate) status() status {
	g.t.Helper()
	out := g.mustKG(g.srv, "status", g.iface, "--json")
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		g.t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.Interface != g.iface {
		g.t.Fatalf("status --json: interface %q, want %q", st.Interface, g.iface)
	}
	return st
}

// source returns addr's entry in st, if any.
func (st status) source(addr netip.Addr) (source, bool) {
	for _, s := range st.Sources {
		if a, err := netip.ParseAddr(s.Addr); err == nil && a == addr {
			return s, true
		}
	}
	return source{}, false
}

// event is one line of `knockgate events IFACE --json`.
type event struct {
	Time    time.Time  `json:"time"`
	Type    string     `json:"type"`
	Src     string     `json:"src"`
	Port    int        `json:"port"`
	Proto   string     `json:"proto"`
	Stage   int        `json:"stage"`
	Expires *time.Time `json:"expires"`
}

// eventStream is a running `knockgate events --json`.
type eventStream struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
}

func (g *gate) events() *eventStream {
	g.t.Helper()
	es := &eventStream{cmd: g.srv.Cmd(kgBin, "events", g.iface, "--json"), lines: make(chan string, 64)}
	es.cmd.Stderr = &es.stderr
	out, err := es.cmd.StdoutPipe()
	if err != nil {
		g.t.Fatal(err)
	}
	if err := es.cmd.Start(); err != nil {
		g.t.Fatalf("start knockgate events: %v", err)
	}
	go func() {
		defer close(es.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			es.lines <- sc.Text()
		}
	}()
	// In case the test fails before it stops the stream itself.
	g.t.Cleanup(func() {
		if es.cmd.ProcessState == nil {
			es.cmd.Process.Kill()
			es.cmd.Wait()
		}
	})
	return es
}

// next returns the next event, failing the test if none comes within bound.
func (es *eventStream) next(t *testing.T, bound time.Duration) event {
	t.Helper()
	select {
	case line, ok := <-es.lines:
		if !ok {
			es.cmd.Wait()
			t.Fatalf("events ended early (%v): %s", es.cmd.ProcessState, es.stderr.String())
		}
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("events --json line %q: %v", line, err)
		}
		return ev
	case <-time.After(bound):
		t.Fatalf("no event within %s", bound)
	}
	panic("unreachable")
}

// stop interrupts the stream as a user's Ctrl-C would and returns its exit
// code.
func (es *eventStream) stop(t *testing.T) int {
	t.Helper()
	if err := es.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("interrupt knockgate events: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		for range es.lines {
			// Drain, so the process is never blocked on a full pipe.
		}
		done <- es.cmd.Wait()
	}()
	select {
	case <-done:
	case <-time.After(cmdWait):
		es.cmd.Process.Kill()
		<-done
		t.Fatalf("knockgate events ignored SIGINT")
	}
	if code := es.cmd.ProcessState.ExitCode(); code != 0 {
		t.Logf("events stderr: %s", es.stderr.String())
		return code
	}
	return 0
}

var xdpProgRE = regexp.MustCompile(`prog/xdp\S* id (\d+)`)

// xdpProg returns the id of the XDP program on the server interface, or 0.
func (g *gate) xdpProg() int {
	g.t.Helper()
	return g.xdpProgOn(g.iface)
}

// xdpProgOn returns the id of the XDP program on the server namespace's
// interface iface, or 0.
func (g *gate) xdpProgOn(iface string) int {
	g.t.Helper()
	out, err := g.srv.Run("ip", "-d", "link", "show", "dev", iface)
	if err != nil {
		g.t.Fatal(err)
	}
	m := xdpProgRE.FindStringSubmatch(out)
	if m == nil {
		if strings.Contains(out, "xdp") {
			g.t.Fatalf("cannot read the XDP program id from:\n%s", out)
		}
		return 0
	}
	id, _ := strconv.Atoi(m[1])
	return id
}

// assertNoPins checks that nothing is pinned for iface, not even the
// temporary directory an attach pins into before renaming it: no entry may
// contain the name, up to any '.' (which bpffs does not allow, so a VLAN
// interface's pins cannot carry its name as is). Interface names are unique
// to their test, so nothing else matches.
func (g *gate) assertNoPins(iface string) {
	g.t.Helper()
	base, _, _ := strings.Cut(iface, ".")
	entries, err := os.ReadDir(pinRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		g.t.Fatalf("read %s: %v", pinRoot, err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), base) {
			g.t.Errorf("%s left behind in %s", e.Name(), pinRoot)
		}
	}
}

// assertPinned checks that the gate on the server interface is pinned: its
// program, and the link on the interface.
func (g *gate) assertPinned() {
	g.t.Helper()
	for _, pin := range []string{"prog", "ifaces/" + g.iface + "/xdp-native"} {
		if _, err := os.Stat(filepath.Join(pinRoot, g.iface, pin)); err != nil {
			g.t.Fatalf("gate not pinned: %v", err)
		}
	}
}
