package bench

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/knockgate/knockgate/loader"
)

// fwknop's clients against knockgate: `knockgate run` reading an
// access.conf of Keys stanzas (the client's last), under the same flood
// fwknopd gets — a real fwknop datagram with one HMAC character changed —
// which the program refuses in XDP after an HMAC-SHA256 under every key.
// Valid datagrams come from Debian's fwknop client, as fwknopd's do, and
// are decided by run.

// Gate names of the fwknop gates: one key, and 16 with the client's last.
const (
	nameKnockgateFwknop1  = "knockgate fwknop 1 key"
	nameKnockgateFwknop16 = "knockgate fwknop 16 keys"
)

// KnockgateFwknop is `knockgate run` with fwknop_access.
type KnockgateFwknop struct {
	Binary    string
	Keys      int
	dir       string
	key, hmac string // the client's, base64
	cmd       *exec.Cmd
	exited    chan struct{}
}

func NewKnockgateFwknop(binary string, keys int) *KnockgateFwknop {
	return &KnockgateFwknop{Binary: binary, Keys: keys}
}

func (g *KnockgateFwknop) Name() string {
	if g.Keys == 1 {
		return nameKnockgateFwknop1
	}
	return nameKnockgateFwknop16
}

func (g *KnockgateFwknop) Setup(topo *Topology) error {
	if g.Binary == "" {
		return errors.New("needs the knockgate binary (run reads the access.conf)")
	}
	var err error
	if g.dir, err = os.MkdirTemp("", "kgb-fwknop-kg"); err != nil {
		return err
	}
	var access strings.Builder
	for range g.Keys {
		key, err := randomBase64(32)
		if err != nil {
			return err
		}
		hmac, err := randomBase64(64)
		if err != nil {
			return err
		}
		g.key, g.hmac = key, hmac // the last stanza's is the client's
		fmt.Fprintf(&access, "SOURCE ANY\nREQUIRE_SOURCE_ADDRESS Y\nOPEN_PORTS tcp/%d\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nFW_ACCESS_TIMEOUT %d\n\n",
			ProtectedPort, key, hmac, int(Open.Seconds()))
	}
	accessPath := filepath.Join(g.dir, "access.conf")
	if err := os.WriteFile(accessPath, []byte(access.String()), 0o600); err != nil {
		return err
	}
	// Named after the interface, so the gate is too (loader.Open(RxIface)).
	config := filepath.Join(g.dir, RxIface+".toml")
	text := fmt.Sprintf("interfaces = [%q]\nsequence = \"none\"\nprotect = \"%d\"\nmode = \"native\"\nfwknop_access = %q\n",
		RxIface, ProtectedPort, accessPath)
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		return err
	}
	g.cmd = topo.RX.Cmd(g.Binary, "run", "--config", config)
	// nsenter execs run in its place: should the benchmark die, so does run.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	g.cmd.Stderr = g.cmd.Stdout
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("start knockgate run: %w", err)
	}
	g.exited = make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		once := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), "msg=serving") && !once {
				once = true
				close(ready)
			}
		}
	}()
	go func() { g.cmd.Wait(); close(g.exited) }()
	select {
	case <-ready:
		return nil
	case <-g.exited:
		return errors.New("knockgate run exited at start")
	case <-time.After(30 * time.Second):
		return errors.New("knockgate run did not start within 30s")
	}
}

func (g *KnockgateFwknop) clientArgs(extra ...string) []string {
	return append([]string{"--no-rc-file", "--no-save-args", "-A", fmt.Sprintf("tcp/%d", ProtectedPort),
		"-a", txAddr.String(), "-D", rxAddr.String(), "-p", strconv.Itoa(SPAPort),
		"--key-base64-rijndael", g.key, "--key-base64-hmac", g.hmac, "--use-hmac"}, extra...)
}

// Forged is a real fwknop datagram with one character of its HMAC
// changed, as fwknopd's flood.
func (g *KnockgateFwknop) Forged() ([]byte, error) {
	path := filepath.Join(g.dir, "forged.spa")
	cmd := exec.Command("fwknop", g.clientArgs("-T", "--save-packet", path)...)
	cmd.Env = append(os.Environ(), "HOME="+g.dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fwknop -T: %w: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := []byte(strings.TrimSpace(string(b)))
	if len(p) == 0 {
		return nil, errors.New("fwknop -T saved no packet")
	}
	return forgeTag(p)
}

func (g *KnockgateFwknop) Open(topo *Topology) error {
	cmd := topo.TX.Cmd("fwknop", g.clientArgs()...)
	cmd.Env = append(os.Environ(), "HOME="+g.dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fwknop: %w: %s", err, out)
	}
	return nil
}

func (g *KnockgateFwknop) Revoke(*Topology) error { return revokeClient() }

// Processed counts every datagram to the SPA port the program dropped
// (each fwknop datagram, verified or not).
func (g *KnockgateFwknop) Processed() (uint64, error) { return droppedSPA() }

// DaemonCPU is run's: what the verified datagrams cost it (none of the
// forged ones reach it).
func (g *KnockgateFwknop) DaemonCPU() (uint64, error) {
	st, err := schedstat(fmt.Sprintf("/proc/%d/schedstat", g.cmd.Process.Pid))
	return st.CPU, err
}

func (g *KnockgateFwknop) Close() error {
	var errs []error
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(10 * time.Second):
			g.cmd.Process.Kill()
			<-g.exited
		}
		g.cmd = nil
	}
	if err := loader.Detach(RxIface); err != nil && !errors.Is(err, loader.ErrNotAttached) {
		errs = append(errs, err)
	}
	if g.dir != "" {
		errs = append(errs, os.RemoveAll(g.dir))
		g.dir = ""
	}
	return errors.Join(errs...)
}
