package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/maps"
	"github.com/knockgate/knockgate/test/netns"
	"github.com/knockgate/knockgate/test/packet"
)

// tcxNext is TCX_NEXT as the test run reports it: the egress program never
// decides a packet's fate.
const tcxNext = 0xffffffff

// flowConfig is the default gate with flows on.
func flowConfig() conf {
	c := defaultConfig()
	c.Flows, c.FlowIdleTCP, c.FlowIdleUDP = true, time.Hour, 3*time.Minute
	return c
}

// protectAll is the seed's "drop everything else": every port protected,
// knocks still knocks, flows on.
func protectAll() conf {
	c := flowConfig()
	c.Protected, c.ProtectAll = nil, true
	return c
}

// send runs frame, a packet the host sends, through the egress program and
// checks it bumped exactly the named counters.
func (g *gate) send(what string, frame []byte, counters ...string) {
	g.t.Helper()
	before := g.counters()
	v, err := g.objs.Egress.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		g.t.Fatalf("%s: run egress program: %v", what, err)
	}
	after := g.counters()
	if v != tcxNext {
		g.t.Errorf("%s: egress returned %d, want TCX_NEXT", what, int32(v))
	}
	g.counted(what, before, after, counters...)
}

// flow is the table's entry for local-remote, if any.
func (g *gate) flow(local, remote netip.AddrPort, proto maps.Proto) (maps.Flow, bool) {
	g.t.Helper()
	fs, err := g.maps.Flows()
	if err != nil {
		g.t.Fatal(err)
	}
	for _, f := range fs {
		if f.Local == local && f.Remote == remote && f.Proto == proto {
			return f, true
		}
	}
	return maps.Flow{}, false
}

// conn is one connection between the gate's host (at f.dst) and a remote
// peer: out builds what the host sends, in what it receives.
type conn struct {
	f            family
	local        uint16
	remote       netip.Addr
	remotePort   uint16
	proto        maps.Proto
	localAddrPrt netip.AddrPort
}

func (f family) conn(local uint16, remote netip.Addr, remotePort uint16, proto maps.Proto) conn {
	return conn{f: f, local: local, remote: remote, remotePort: remotePort, proto: proto,
		localAddrPrt: netip.AddrPortFrom(f.dst, local)}
}

func (c conn) out(flags uint8) []byte {
	if c.proto == maps.UDP {
		return packet.UDP(c.f.dst, c.remote, c.local, c.remotePort).Bytes()
	}
	return packet.TCP(c.f.dst, c.remote, c.local, c.remotePort, flags).Bytes()
}

func (c conn) in(flags uint8) []byte {
	if c.proto == maps.UDP {
		return packet.UDP(c.remote, c.f.dst, c.remotePort, c.local).Bytes()
	}
	return packet.TCP(c.remote, c.f.dst, c.remotePort, c.local, flags).Bytes()
}

func (c conn) entry(g *gate) (maps.Flow, bool) {
	return g.flow(c.localAddrPrt, netip.AddrPortFrom(c.remote, c.remotePort), c.proto)
}

// The host's connection out (TCP and UDP, v4 and v6) under --protect all:
// its replies pass once egress has seen it, and the reverse of a tuple the
// host never sent on is dropped.
func TestFlowPassesReplies(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, protectAll())
		web := f.conn(41000, f.src, 443, maps.TCP)
		dns := f.conn(41001, f.src, 53, maps.UDP)

		g.expect("SYN+ACK before the host's SYN", web.in(packet.SYN|packet.ACK), xdpDrop, "dropped_protected")
		g.expect("DNS answer before the query", dns.in(0), xdpDrop, "dropped_protected")

		g.send("host's SYN", web.out(packet.SYN), "flows_learned")
		g.send("host's query", dns.out(0), "flows_learned")
		if e, ok := web.entry(g); !ok || !e.Live || e.Answered {
			t.Errorf("TCP flow after the SYN: %+v %v, want live, unanswered", e, ok)
		}
		g.expect("SYN+ACK of the host's connection", web.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
		g.expect("data of the host's connection", web.in(packet.ACK|packet.PSH), xdpPass, "passed_flow")
		g.expect("DNS answer", dns.in(0), xdpPass, "passed_flow")
		if e, _ := web.entry(g); !e.Answered {
			t.Errorf("TCP flow after its reply: %+v, want answered", e)
		}
		g.send("host's ACK", web.out(packet.ACK))

		// Not the host's flow: another remote port, another remote, the
		// other protocol, another local port.
		g.expect("reply from another remote port",
			packet.TCP(f.src, f.dst, 444, 41000, packet.ACK).Bytes(), xdpDrop, "dropped_protected")
		g.expect("reply from another remote",
			packet.TCP(f.other, f.dst, 443, 41000, packet.ACK).Bytes(), xdpDrop, "dropped_protected")
		g.expect("UDP on the TCP flow's ports",
			packet.UDP(f.src, f.dst, 443, 41000).Bytes(), xdpDrop, "dropped_protected")
		g.expect("reply to another local port",
			packet.TCP(f.src, f.dst, 443, 41002, packet.ACK).Bytes(), xdpDrop, "dropped_protected")
		// A flow never carries a new connection in, even on its own ports.
		g.expect("bare SYN on the flow's ports", web.in(packet.SYN), xdpDrop, "dropped_protected")
		g.expectEvents("flows")
	})
}

// A session a grant let in goes on after the grant is revoked or ends; a
// new connection from that source does not.
func TestFlowOutlivesGrant(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, flowConfig())
		ssh := f.conn(22, f.src, 40000, maps.TCP)
		if err := g.maps.Grant(f.src, "default", maps.BootAfter(time.Minute)); err != nil {
			t.Fatal(err)
		}
		g.expect("SYN with a grant", ssh.in(packet.SYN), xdpPass, "passed_granted")
		g.send("host's SYN+ACK", ssh.out(packet.SYN|packet.ACK), "flows_learned")
		g.expect("ACK with a grant", ssh.in(packet.ACK), xdpPass, "passed_flow")
		if _, err := g.maps.Revoke(f.src, ""); err != nil {
			t.Fatal(err)
		}
		g.expect("session data after the grant", ssh.in(packet.ACK|packet.PSH), xdpPass, "passed_flow")
		g.expect("new connection after the grant", ssh.in(packet.SYN), xdpDrop, "dropped_protected")
		g.expect("the session's port from another source port",
			packet.TCP(f.src, f.dst, 40001, 22, packet.ACK).Bytes(), xdpDrop, "dropped_protected")

		// Without flows, the session ends with the grant, as before.
		off := flowConfig()
		off.Flows = false
		g.configure(off)
		g.expect("session data with flows off", ssh.in(packet.ACK), xdpDrop, "dropped_protected")
		g.send("host's data with flows off", ssh.out(packet.ACK))
		// Flows survive a set: on again, the session is back.
		g.configure(flowConfig())
		g.expect("session data with flows on again", ssh.in(packet.ACK), xdpPass, "passed_flow")
	})
}

// Only the host's packets make a flow: an inbound packet never does, nor
// does an RST the host sends, and the host sending from an unprotected port
// learns nothing (its replies need no flow).
func TestFlowsOnlyFromTheHost(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, flowConfig())
		ssh := f.conn(22, f.src, 40000, maps.TCP)
		g.expect("stranger's ACK", ssh.in(packet.ACK), xdpDrop, "dropped_protected")
		g.expect("stranger's ACK again", ssh.in(packet.ACK), xdpDrop, "dropped_protected")
		g.send("host's RST", ssh.out(packet.RST|packet.ACK))
		g.expect("ACK after the host's RST", ssh.in(packet.ACK), xdpDrop, "dropped_protected")
		g.send("host's SYN from an unprotected port", f.conn(41000, f.src, 22, maps.TCP).out(packet.SYN))
		if fs, _ := g.maps.Flows(); len(fs) != 0 {
			t.Errorf("flows: %+v, want none", fs)
		}
	})
}

// FIN both ways ends a flow (after a short grace for the last ACKs); an RST
// from the host ends it at once; an RST from the peer only shortens it until
// the host sends again, so a forged RST cannot end a session that goes on.
func TestFlowClose(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, protectAll())
		c := f.conn(41000, f.src, 443, maps.TCP)
		g.send("SYN", c.out(packet.SYN), "flows_learned")
		g.expect("SYN+ACK", c.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
		g.send("FIN out", c.out(packet.FIN|packet.ACK))
		g.expect("FIN in", c.in(packet.FIN|packet.ACK), xdpPass, "passed_flow")
		if e, _ := c.entry(g); !e.Closing || !e.Live {
			t.Errorf("after FIN both ways: %+v, want closing, still live", e)
		}
		g.send("last ACK", c.out(packet.ACK))
		if err := g.maps.SetFlowIdle(c.localAddrPrt, netip.AddrPortFrom(c.remote, 443), maps.TCP, 11*time.Second); err != nil {
			t.Fatal(err)
		}
		g.expect("ACK 11 s after the close", c.in(packet.ACK), xdpDrop, "dropped_protected")

		d := f.conn(41001, f.src, 443, maps.TCP)
		g.send("SYN", d.out(packet.SYN), "flows_learned")
		g.expect("SYN+ACK", d.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
		g.send("host's RST", d.out(packet.RST), "flows_ended")
		if _, ok := d.entry(g); ok {
			t.Error("flow kept after the host's RST")
		}
		g.expect("after the host's RST", d.in(packet.ACK), xdpDrop, "dropped_protected")

		e := f.conn(41002, f.src, 443, maps.TCP)
		g.send("SYN", e.out(packet.SYN), "flows_learned")
		g.expect("SYN+ACK", e.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
		g.expect("peer's RST", e.in(packet.RST), xdpPass, "passed_flow")
		if en, _ := e.entry(g); !en.Closing {
			t.Errorf("after the peer's RST: %+v, want closing", en)
		}
		g.send("host goes on", e.out(packet.ACK))
		if en, _ := e.entry(g); en.Closing {
			t.Errorf("after the host sent again: %+v, want open", en)
		}
	})
}

// A flow the host stops sending on idles out: TCP after --flow-idle-tcp
// (sooner when never answered), UDP after --flow-idle-udp; the peer's
// packets do not keep it. A set changes the timeouts live.
func TestFlowIdle(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, protectAll())
		tcpc := f.conn(41000, f.src, 443, maps.TCP)
		udpc := f.conn(41001, f.src, 123, maps.UDP)
		quiet := f.conn(41002, f.src, 443, maps.TCP)
		g.send("SYN", tcpc.out(packet.SYN), "flows_learned")
		g.expect("SYN+ACK", tcpc.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
		g.send("NTP query", udpc.out(0), "flows_learned")
		g.send("SYN nobody answers", quiet.out(packet.SYN), "flows_learned")
		back := func(c conn, ago time.Duration) {
			t.Helper()
			if err := g.maps.SetFlowIdle(c.localAddrPrt, netip.AddrPortFrom(c.remote, c.remotePort), c.proto, ago); err != nil {
				t.Fatal(err)
			}
		}
		back(tcpc, 59*time.Minute)
		back(udpc, 2*time.Minute+50*time.Second)
		back(quiet, 61*time.Second)
		g.expect("TCP after 59 min of an hour", tcpc.in(packet.ACK), xdpPass, "passed_flow")
		g.expect("UDP after 2m50s of 3m", udpc.in(0), xdpPass, "passed_flow")
		g.expect("unanswered SYN's reply after 61 s", quiet.in(packet.SYN|packet.ACK), xdpDrop, "dropped_protected")
		back(tcpc, 61*time.Minute)
		back(udpc, 3*time.Minute+time.Second)
		g.expect("TCP after 61 min", tcpc.in(packet.ACK), xdpDrop, "dropped_protected")
		g.expect("UDP after 3m01s", udpc.in(0), xdpDrop, "dropped_protected")

		// A set lengthens the timeouts live: the same entries pass again.
		long := protectAll()
		long.FlowIdleTCP, long.FlowIdleUDP = 2*time.Hour, 10*time.Minute
		g.configure(long)
		g.expect("TCP after 61 min of two hours", tcpc.in(packet.ACK), xdpPass, "passed_flow")
		g.expect("UDP after 3m01s of 10m", udpc.in(0), xdpPass, "passed_flow")

		// An idle flow's slot is reused: the host's next flow to that peer
		// is learned afresh, counted once.
		back(udpc, time.Hour)
		g.send("NTP query again", udpc.out(0))
		if e, ok := udpc.entry(g); !ok || !e.Live {
			t.Errorf("UDP flow after the host sent again: %+v %v, want live", e, ok)
		}
	})
}

// ICMP errors: one quoting a packet of a live flow passes (path MTU
// discovery), one quoting a tuple the host never sent on is dropped, and
// one about an unprotected port is not judged.
func TestFlowICMPErrors(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, flowConfig())
		ssh := f.conn(22, f.src, 40000, maps.TCP)
		router := f.other
		sent := packet.TCP(f.dst, f.src, 22, 40000, packet.ACK|packet.PSH)
		g.expect("too big, no flow", packet.TooBig(router, f.dst, sent).Bytes(), xdpDrop, "dropped_protected")
		if err := g.maps.Grant(f.src, "default", maps.BootAfter(time.Minute)); err != nil {
			t.Fatal(err)
		}
		g.send("host's SYN+ACK", ssh.out(packet.SYN|packet.ACK), "flows_learned")
		g.expect("too big about the session", packet.TooBig(router, f.dst, sent).Bytes(), xdpPass, "passed_flow")
		other := packet.TCP(f.dst, f.src, 22, 40001, packet.ACK)
		g.expect("too big about another tuple", packet.TooBig(router, f.dst, other).Bytes(), xdpDrop, "dropped_protected")
		open := packet.TCP(f.dst, f.src, 41000, 443, packet.ACK)
		g.expect("too big about an unprotected port", packet.TooBig(router, f.dst, open).Bytes(), xdpPass, "passed")
		short := packet.TooBig(router, f.dst, sent)
		short.Payload = short.Payload[:len(short.Payload)-6]
		g.expect("too big with its quote cut short of the ports", short.Bytes(), xdpDrop, "dropped_malformed")
	})
}

// --protect all keeps what a host needs to keep its address and neighbours:
// ARP, neighbour discovery, DHCP and DHCPv6 client replies; knocks are still
// knocks, and every other stranger's TCP or UDP packet is dropped.
func TestProtectAll(t *testing.T) {
	netns.Require(t)
	forFamilies(t, func(t *testing.T, f family) {
		g := newGate(t, protectAll())
		for _, port := range []uint16{1, 22, 80, 443, 8080, 65535} {
			g.expect(fmt.Sprintf("SYN to %d", port), f.tcp(f.src, port, packet.SYN), xdpDrop, "dropped_protected")
			g.expect(fmt.Sprintf("ACK to %d", port), f.tcp(f.src, port, packet.ACK), xdpDrop, "dropped_protected")
			g.expect(fmt.Sprintf("UDP to %d", port), packet.UDP(f.src, f.dst, 40000, port).Bytes(), xdpDrop, "dropped_protected")
		}
		g.expect("ICMP echo", packet.ICMP(f.src, f.dst).Bytes(), xdpPass, "passed")
		if f.dst.Is4() {
			g.expect("ARP", packet.ARP(f.src, f.dst), xdpPass, "passed")
			g.expect("DHCP offer", packet.UDP(f.src, netip.MustParseAddr("255.255.255.255"), 67, 68).Bytes(), xdpPass, "passed")
			g.expect("not a DHCP reply", packet.UDP(f.src, f.dst, 68, 68).Bytes(), xdpDrop, "dropped_protected")
		} else {
			ns := packet.Frame{Src: f.src, Dst: f.dst, Proto: packet.ProtoICMP, ICMPType: 135}
			g.expect("neighbour solicitation", ns.Bytes(), xdpPass, "passed")
			g.expect("DHCPv6 advertise", packet.UDP(f.src, f.dst, 547, 546).Bytes(), xdpPass, "passed")
		}
		// The sequence still opens everything.
		g.knockSteps(f, f.src, len(seq))
		g.expect("SYN to 80 after the knock", f.tcp(f.src, 80, packet.SYN), xdpPass, "passed_granted")
		g.expect("UDP to 5000 after the knock", packet.UDP(f.src, f.dst, 40000, 5000).Bytes(), xdpPass, "passed_granted")
		g.expect("another source", f.tcp(f.other, 80, packet.SYN), xdpDrop, "dropped_protected")
	})
}

// A set of the table's 4 ways full of live flows keeps them: the host's
// next flow there goes unrecorded (counted), and none is evicted.
func TestFlowSetFull(t *testing.T) {
	netns.Require(t)
	f := families[0]
	g := newGate(t, protectAll())
	cfg, err := g.maps.ReadConfig()
	if err != nil {
		t.Fatal(err)
	}
	slots := g.objs.Flows.MaxEntries()
	want, _ := maps.FlowPlace(cfg.SlotKey, slots, maps.FlowKey(netip.AddrPortFrom(f.dst, 30000), netip.AddrPortFrom(f.src, 443), maps.TCP))
	var same []conn
	for p := uint16(30000); len(same) < maps.FlowWays+1; p++ {
		c := f.conn(p, f.src, 443, maps.TCP)
		if base, _ := maps.FlowPlace(cfg.SlotKey, slots, maps.FlowKey(c.localAddrPrt, netip.AddrPortFrom(f.src, 443), maps.TCP)); base == want {
			same = append(same, c)
		}
	}
	for i, c := range same[:maps.FlowWays] {
		g.send(fmt.Sprintf("flow %d", i), c.out(packet.SYN), "flows_learned")
	}
	g.send("a fifth flow into the set", same[maps.FlowWays].out(packet.SYN), "flows_full")
	for i, c := range same[:maps.FlowWays] {
		g.expect(fmt.Sprintf("flow %d's reply", i), c.in(packet.SYN|packet.ACK), xdpPass, "passed_flow")
	}
	g.expect("the fifth flow's reply", same[maps.FlowWays].in(packet.SYN|packet.ACK), xdpDrop, "dropped_protected")
}
