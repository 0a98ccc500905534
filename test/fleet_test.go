package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/test/netns"
)

// A fleet of three hosts on one bridge, each running `knockgate run` with
// a [fleet] table (embedded NATS servers clustered over the bridge, route
// authentication on), and a client: a knock on one host opens the
// protected port on all three within a second, and closes it on all three
// after the window; a host cut off while a grant is made catches up when it
// comes back.
type fleetHost struct {
	name  string
	ns    *netns.NS
	iface string
	addr  netip.Addr
	cmd   *exec.Cmd
	done  chan struct{}
}

func TestFleetSharesGrants(t *testing.T) {
	netns.Require(t)
	sw := netns.NewT(t, "kgf-sw-"+token)
	if _, err := sw.Run("ip", "link", "add", "br0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Run("ip", "link", "set", "br0", "up"); err != nil {
		t.Fatal(err)
	}
	plug := func(ns *netns.NS, iface, port string, addr netip.Addr) {
		t.Helper()
		if err := netns.Veth(ns, iface, sw, port); err != nil {
			t.Fatal(err)
		}
		for _, c := range [][]string{{"ip", "link", "set", port, "master", "br0"}} {
			if _, err := sw.Run(c[0], c[1:]...); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ns.Run("ip", "addr", "add", addr.String()+"/24", "dev", iface); err != nil {
			t.Fatal(err)
		}
	}
	client := netip.MustParseAddr("10.78.0.100")
	cli := netns.NewT(t, "kgf-cli-"+token)
	plug(cli, "kgf-"+token+"-c", "kgf-"+token+"-cb", client)

	dir := t.TempDir()
	pw := filepath.Join(dir, "route.password")
	if err := os.WriteFile(pw, []byte("fleet-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var hosts []*fleetHost
	var peers []string
	for i := range 3 {
		h := &fleetHost{name: fmt.Sprintf("kgf%s%c", token, 'a'+i), addr: netip.AddrFrom4([4]byte{10, 78, 0, byte(1 + i)})}
		h.ns = netns.NewT(t, "kgf-"+h.name)
		h.iface = fmt.Sprintf("kgf-%s-%d", token, i)
		plug(h.ns, h.iface, fmt.Sprintf("kgf-%s-%db", token, i), h.addr)
		hosts = append(hosts, h)
		peers = append(peers, fmt.Sprintf("%q", h.addr.String()+":6222"))
	}
	for _, h := range hosts {
		var ln net.Listener
		if err := h.ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":22"); return }); err != nil {
			t.Fatal(err)
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
		t.Cleanup(func() { ln.Close() })
		cfg := fmt.Sprintf(`interfaces = [%q]
protect = "22"
open = "4s"
[fleet]
name = %q
gate = "edge"
listen = "%s:6222"
peers = [%s]
route_user = "fleet"
route_password_file = %q
state_dir = %q
`, h.iface, h.name, h.addr, strings.Join(peers, ", "), pw, filepath.Join(dir, h.name))
		path := filepath.Join(dir, h.name+".toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		h.cmd = h.ns.Cmd(kgBin, "run", "--config", path)
		h.cmd.Stdout, h.cmd.Stderr = os.Stderr, os.Stderr
		if err := h.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h.done = make(chan struct{})
		go func() { h.cmd.Wait(); close(h.done) }()
		t.Cleanup(func() {
			h.cmd.Process.Signal(syscall.SIGTERM)
			<-h.done
			run(t, h.ns.Cmd(kgBin, "detach", h.name))
		})
	}
	// Formed: every host's run reports both peers and a current watch.
	fleetOf := func(h *fleetHost) (st struct {
		Peers    int    `json:"peers"`
		Received uint64 `json:"received"`
		LastSync string `json:"last_sync"`
	}) {
		b, err := os.ReadFile(filepath.Join("/run/knockgate", "fleet-"+h.name+".json"))
		if err == nil {
			json.Unmarshal(b, &st)
		}
		return st
	}
	eventually(t, 60*time.Second, "the fleet formed", func() bool {
		for _, h := range hosts {
			if st := fleetOf(h); st.Peers != 2 || st.LastSync == "" {
				return false
			}
		}
		return true
	})

	dial := func(h *fleetHost, wait time.Duration) bool {
		ok := false
		cli.Do(func() error {
			c, err := net.DialTimeout("tcp", h.addr.String()+":22", wait)
			if err == nil {
				c.Close()
				ok = true
			}
			return nil
		})
		return ok
	}
	for _, h := range hosts {
		if dial(h, filteredWait) {
			t.Fatalf("%s open before any knock", h.name)
		}
	}
	// Knock on the first host only.
	cli.Do(func() error {
		for _, p := range []int{9000, 8000} {
			net.DialTimeout("tcp", fmt.Sprintf("%s:%d", hosts[0].addr, p), 50*time.Millisecond)
		}
		return nil
	})
	knocked := time.Now()
	for _, h := range hosts {
		for !dial(h, 100*time.Millisecond) {
			if time.Since(knocked) > time.Second {
				t.Fatalf("%s did not open within 1s of the knock on %s", h.name, hosts[0].name)
			}
		}
		t.Logf("%s open %s after the knock on %s", h.name, time.Since(knocked).Round(time.Millisecond), hosts[0].name)
	}
	// The window (4s) ends everywhere.
	for _, h := range hosts {
		eventually(t, 10*time.Second, h.name+" closed after the window", func() bool { return !dial(h, filteredWait) })
	}

	// Cut the last host off, grant on the first, bring it back.
	cut := hosts[2]
	if _, err := cut.ns.Run("ip", "link", "set", cut.iface, "down"); err != nil {
		t.Fatal(err)
	}
	if r := run(t, hosts[0].ns.Cmd(kgBin, "grant", hosts[0].name, client.String(), "--for", "2m")); r.code != 0 {
		t.Fatalf("grant: %s", r)
	}
	eventually(t, 20*time.Second, hosts[1].name+" has the grant while "+cut.name+" is cut off", func() bool { return dial(hosts[1], filteredWait) })
	time.Sleep(time.Second)
	if _, err := cut.ns.Run("ip", "link", "set", cut.iface, "up"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, cut.name+" caught up after the partition", func() bool { return dial(cut, 200*time.Millisecond) })
	if st := fleetOf(cut); st.Received == 0 {
		t.Errorf("%s reports nothing received: %+v", cut.name, st)
	}
}
