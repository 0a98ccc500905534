package loader

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/policy"
)

// TCP states (include/net/tcp_states.h) whose connections have packets to
// come: everything but listening, closed and TIME_WAIT.
var liveTCPStates = map[uint8]bool{
	1:  true, // ESTABLISHED
	2:  true, // SYN_SENT
	3:  true, // SYN_RECV
	4:  true, // FIN_WAIT1
	5:  true, // FIN_WAIT2
	8:  true, // CLOSE_WAIT
	9:  true, // LAST_ACK
	11: true, // CLOSING
}

// seedOpenFlows records in the gate's flow table the flows that exist already
// in the calling thread's network namespace, from the kernel's socket table
// (sock_diag): connected TCP sockets in a state with packets to come, and
// connected UDP sockets. The egress program learns flows only as the host
// sends, so without this an idle session older than the gate (the
// operator's own, attached with --no-grant-self) would be cut off. It
// returns how many flows it recorded; a set of the table with no room left
// keeps its flows.
func seedOpenFlows(set *maps.Set) (int, error) {
	cfg, err := set.ReadConfig()
	if err != nil {
		return 0, err
	}
	return seedFlows(set, &cfg)
}

// seedFlows is seedOpenFlows for the configuration cfg, which may not be
// written yet: a change seeds the flows it protects before it takes effect.
func seedFlows(set *maps.Set, cfg *maps.Config) (int, error) {
	if !cfg.Policy.Flows {
		return 0, nil
	}
	n := 0
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := netlink.SocketDiagTCP(family)
		if err != nil {
			return n, fmt.Errorf("list TCP sockets (sock_diag): %w", err)
		}
		for _, s := range tcp {
			if !liveTCPStates[s.State] {
				continue
			}
			ok, err := seed(set, cfg, s, policy.TCP, s.State != 2)
			if err != nil {
				return n, err
			}
			if ok {
				n++
			}
		}
		udp, err := netlink.SocketDiagUDP(family)
		if err != nil {
			return n, fmt.Errorf("list UDP sockets (sock_diag): %w", err)
		}
		for _, s := range udp {
			if s.ID.DestinationPort == 0 {
				continue // not connected: its replies cannot be told apart
			}
			ok, err := seed(set, cfg, s, policy.UDP, true)
			if err != nil {
				return n, err
			}
			if ok {
				n++
			}
		}
	}
	return n, nil
}

// seed records socket s's flow, if the egress program would: only a flow
// from a protected port needs its replies let in.
func seed(set *maps.Set, cfg *maps.Config, s *netlink.Socket, proto policy.Proto, answered bool) (bool, error) {
	local, ok1 := netip.AddrFromSlice(s.ID.Source)
	remote, ok2 := netip.AddrFromSlice(s.ID.Destination)
	if !ok1 || !ok2 || local.Unmap().IsLoopback() || remote.IsUnspecified() ||
		!cfg.Policy.Protects(policy.Port{Num: s.ID.SourcePort, Proto: proto}) {
		return false, nil
	}
	return set.PutFlow(netip.AddrPortFrom(local.Unmap(), s.ID.SourcePort),
		netip.AddrPortFrom(remote.Unmap(), s.ID.DestinationPort), proto, answered)
}
