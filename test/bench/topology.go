package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"github.com/knockgate/knockgate/test/netns"
)

// Names of everything the benchmark creates. All start with "kgb" so that
// runs beside other users of the machine never collide, and leftovers of a
// killed run can be swept (Sweep) without touching anything else.
const (
	txName     = "kgb-tx" // sending namespace: flood generator and clients
	rxName     = "kgb-rx" // receiving namespace: the gate under test and a listener
	TxIface    = "kgb0"   // sending end of the measured veth pair
	RxIface    = "kgb1"   // receiving end: the gate attaches here
	idleA      = "kgbi0"  // pair in the sending namespace: the live generator stays
	idleB      = "kgbi1"  // attached to it, the AF_PACKET one relays through it
	namePrefix = "kgb"
)

// Addresses. Everything is in 198.18.0.0/15, the range RFC 2544 sets aside
// for benchmarks, so nothing here can be mistaken for a real network.
var (
	rxAddr = netip.MustParseAddr("198.18.0.1")
	txAddr = netip.MustParseAddr("198.18.0.2")
	// Clients bind fresh sources from this prefix: the sending namespace
	// owns all of it through a local route (AnyIP), the receiver routes it
	// back through txAddr, so no per-source address or ARP entry is needed.
	clientNet = netip.MustParsePrefix("198.18.128.0/17")
	// Flood sources: 198.19.0.1 upwards. The receiver has no route back to
	// them, so a SYN that does get through (no filter) cannot make its
	// SYN-ACK flood the sender and muddy the measurement.
	floodBase = netip.MustParseAddr("198.19.0.1")
	// churnBase is where the sources of first-knock floods count up from:
	// apart from the SYN flood's and the clients' (routing never sees
	// them; the receiver's answers, if any, die in the sender).
	churnBase = netip.MustParseAddr("10.64.0.1")
)

// Ports of the policy every gate enforces.
const (
	ProtectedPort = 22
	KnockPort1    = 9000
	KnockPort2    = 8000
)

// Topology is one fresh pair of namespaces joined by the measured veth pair.
type Topology struct {
	TX, RX       *netns.NS
	TxMAC, RxMAC net.HardwareAddr
	TxIndex      int // ifindex of TxIface inside TX
	IdleIndex    int // ifindex of idleA inside TX
}

// NewTopology builds the namespaces, the veth pairs, addresses and routes.
// On error nothing is left behind.
func NewTopology() (_ *Topology, err error) {
	t := &Topology{}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.TX, err = netns.New(txName); err != nil {
		return nil, err
	}
	if t.RX, err = netns.New(rxName); err != nil {
		return nil, err
	}
	// IPv6 off before the interfaces exist: no router solicitations, DAD or
	// MLD reports wandering through the measured path.
	for _, ns := range []*netns.NS{t.TX, t.RX} {
		if err := sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return nil, err
		}
	}
	// Reverse-path filtering would drop the spoofed sources (no route back)
	// before any gate sees them; a real server on a default route would not.
	if err := sysctl(t.RX, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		return nil, err
	}
	if err := netns.Veth(t.TX, TxIface, t.RX, RxIface); err != nil {
		return nil, err
	}
	if err := netns.Veth(t.TX, idleA, t.TX, idleB); err != nil {
		return nil, err
	}
	steps := []struct {
		ns   *netns.NS
		args []string
	}{
		// The idle pair holds the live generator's program; down, it
		// carries nothing at all. The AF_PACKET generator brings it up to
		// carry its flood to the relay (see packetGenerator).
		{t.TX, []string{"link", "set", idleA, "down"}},
		{t.TX, []string{"link", "set", idleB, "down"}},
		{t.TX, []string{"addr", "add", txAddr.String() + "/24", "dev", TxIface}},
		{t.TX, []string{"route", "add", "local", clientNet.String(), "dev", "lo"}},
		{t.RX, []string{"addr", "add", rxAddr.String() + "/24", "dev", RxIface}},
		{t.RX, []string{"route", "add", clientNet.String(), "via", txAddr.String()}},
	}
	for _, s := range steps {
		if _, err := s.ns.Run("ip", s.args...); err != nil {
			return nil, err
		}
	}
	if err := sysctl(t.RX, "net.ipv4.conf."+RxIface+".rp_filter=0"); err != nil {
		return nil, err
	}
	err = t.TX.Do(func() error {
		ifc, err := net.InterfaceByName(TxIface)
		if err != nil {
			return fmt.Errorf("find %s: %w", TxIface, err)
		}
		idle, err := net.InterfaceByName(idleA)
		if err != nil {
			return fmt.Errorf("find %s: %w", idleA, err)
		}
		t.TxMAC, t.TxIndex, t.IdleIndex = ifc.HardwareAddr, ifc.Index, idle.Index
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = t.RX.Do(func() error {
		ifc, err := net.InterfaceByName(RxIface)
		if err != nil {
			return fmt.Errorf("find %s: %w", RxIface, err)
		}
		t.RxMAC = ifc.HardwareAddr
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Permanent neighbours: no ARP exchange ever shares the measured path
	// or delays the first knock.
	if _, err := t.TX.Run("ip", "neigh", "replace", rxAddr.String(), "lladdr", t.RxMAC.String(),
		"dev", TxIface, "nud", "permanent"); err != nil {
		return nil, err
	}
	if _, err := t.RX.Run("ip", "neigh", "replace", txAddr.String(), "lladdr", t.TxMAC.String(),
		"dev", RxIface, "nud", "permanent"); err != nil {
		return nil, err
	}
	return t, nil
}

// Close deletes both namespaces and with them every interface, program
// attachment, netfilter table and socket inside.
func (t *Topology) Close() error {
	var errs []error
	for _, ns := range []*netns.NS{t.TX, t.RX} {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	t.TX, t.RX = nil, nil
	return errors.Join(errs...)
}

func sysctl(ns *netns.NS, settings ...string) error {
	_, err := ns.Run("sysctl", append([]string{"-q", "-w"}, settings...)...)
	return err
}

// nsExecSh runs a shell command through `ip netns exec`, which (unlike
// nsenter) mounts a sysfs of the namespace's own, so /sys/class/net shows the
// namespace's interfaces. Only for sysfs writes: bpffs pins made there would
// vanish with the command's private mounts.
func nsExecSh(ns *netns.NS, script string) error {
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %s: %w: %s", ns.Name, script, err, out)
	}
	return nil
}

// Sweep removes what a killed earlier run may have left: our namespaces and
// knockgate pins for our interfaces. It touches only kgb-prefixed names.
func Sweep() error {
	var errs []error
	for _, name := range []string{txName, rxName} {
		if _, err := os.Stat("/run/netns/" + name); err == nil {
			if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("remove stale namespace %s: %w: %s", name, err, out))
			}
		}
	}
	errs = append(errs, sweepPins())
	return errors.Join(errs...)
}

func hasOurPrefix(iface string) bool { return strings.HasPrefix(iface, namePrefix) }
