package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/packet"
)

// Generator floods the receiver with frames from the sending namespace. Two
// back ends send the same frames, which reach the receiver as XDP frames
// either way: live frames (BPF_PROG_RUN of an XDP program in live-frame
// mode, several Mpps from one core) and, where the kernel refuses that, an
// AF_PACKET socket whose frames an XDP relay passes on (under 1 Mpps).
// NewGenerator picks one.
type Generator interface {
	// Name says which back end floods, for the progress log and the report.
	Name() string
	// Attach readies the generator to send on topo's measured veth; it
	// lasts until Detach.
	Attach(topo *Topology) error
	Detach() error
	// Run floods port from topo's sending namespace with f's sources until
	// stop is closed, on a thread pinned to cpu, handing the veth batch
	// frames at a time.
	Run(topo *Topology, f Flood, port uint16, cpu int, batch uint32, stop <-chan struct{}) (FloodResult, error)
	// Sent is how many frames the generator has sent since it was made.
	Sent() (uint64, error)
	Close() error
}

// GeneratorKind names a back end of Generator, or auto.
type GeneratorKind string

const (
	// GenAuto: live frames if the kernel runs them, else AF_PACKET.
	GenAuto GeneratorKind = "auto"
	// GenLive: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.
	GenLive GeneratorKind = "live"
	// GenPacket: an AF_PACKET socket with PACKET_QDISC_BYPASS and sendmmsg.
	GenPacket GeneratorKind = "afpacket"
)

// ParseGeneratorKind validates a GeneratorKind name.
func ParseGeneratorKind(s string) (GeneratorKind, error) {
	switch k := GeneratorKind(s); k {
	case GenAuto, GenLive, GenPacket:
		return k, nil
	}
	return "", fmt.Errorf("unknown generator %q (want auto, live or afpacket)", s)
}

// NewGenerator makes the generator kind names. For auto it loads the flood
// program and probes live frames once (one run that sends nothing); if the
// kernel refuses them (EPERM, EOPNOTSUPP) it falls back to AF_PACKET and
// returns why in fallback, for the caller to say.
func NewGenerator(kind GeneratorKind) (g Generator, fallback error, err error) {
	if kind == GenPacket {
		return newPacketGenerator(), nil, nil
	}
	live, err := newLiveGenerator()
	if err != nil {
		return nil, nil, err
	}
	err = live.probe()
	switch {
	case err == nil:
		return live, nil, nil
	case kind == GenAuto && refused(err):
		live.Close()
		return newPacketGenerator(), err, nil
	}
	live.Close()
	return nil, nil, fmt.Errorf("live frames: %w", err)
}

// openGenerator is NewGenerator saying on log (if not nil) which back end
// it chose, and why when it fell back.
func openGenerator(kind GeneratorKind, log io.Writer) (Generator, error) {
	g, fallback, err := NewGenerator(kind)
	if err != nil {
		return nil, err
	}
	if log != nil {
		if fallback != nil {
			fmt.Fprintf(log, "generator: %s (the kernel refused live frames: %v)\n", g.Name(), fallback)
		} else {
			fmt.Fprintf(log, "generator: %s\n", g.Name())
		}
	}
	return g, nil
}

// SynFrame is the flood's template: an Ethernet frame carrying a bare TCP SYN
// (no options, like hping3's) from src to dst:dport, checksums filled in.
func SynFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	return TCPFrame(srcMAC, dstMAC, src, dst, sport, dport, packet.SYN)
}

// TCPFrame is SynFrame with other TCP flags (an ACK flood's).
func TCPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
	b := packet.TCP(src, dst, sport, dport, flags).Bytes()
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	return b
}

// UDPFrame is an Ethernet frame of a UDP datagram carrying payload.
func UDPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	f := packet.UDP(src, dst, sport, dport)
	f.Payload = payload
	b := f.Bytes()
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	return b
}

// template is the frame every flood frame starts from: f's TCP segment (or
// UDP datagram) to port, from floodBase; the generators rewrite the source.
func template(topo *Topology, f Flood, port uint16) []byte {
	if f.Payload != nil {
		return UDPFrame(topo.TxMAC, topo.RxMAC, floodBase, rxAddr, 40000, port, f.Payload)
	}
	flags := f.Flags
	if flags == 0 {
		flags = packet.SYN
	}
	return TCPFrame(topo.TxMAC, topo.RxMAC, floodBase, rxAddr, 40000, port, flags)
}

// Flood describes one flood of SYNs to the protected port: Sources spoofed
// sources counting up from Base (default floodBase; 1 for the single-source
// flood).
type Flood struct {
	Name     string
	Describe string
	Sources  uint32
	Base     netip.Addr
	// Churn: before the flood, this many other sources (from churnBase)
	// each send a first knock, as an attack that fills the gate's tables
	// does.
	Churn uint32
	// Rate caps the frames sent per second; 0: as fast as it goes.
	Rate float64
	// Flags are the TCP flags of every frame; 0: a bare SYN.
	Flags uint8
	// Primed floods start only after the same sources have each knocked
	// the first step: they are then known to the gates (knock progress,
	// and knockgate's hint slots set), the expensive case for a gate that
	// keeps per-source state.
	Primed bool
	// Payload, when set, makes the flood UDP datagrams carrying it (to the
	// port Run is given) instead of TCP segments.
	Payload []byte
}

// base is where f's sources count up from.
func (f Flood) base() netip.Addr {
	if f.Base.IsValid() {
		return f.Base
	}
	return floodBase
}

// FloodResult is what the sender did.
type FloodResult struct {
	Sent     uint64        // frames built (live) or taken by the relay (AF_PACKET)
	Elapsed  time.Duration // from the first send to the end of the last
	SenderNS uint64        // CPU time of the sending thread
	Calls    int           // BPF_PROG_RUN or sendmmsg calls
}

// MaxBatch is the most frames BPF_PROG_RUN builds before it flushes them to
// the device (the kernel's limit), and the size of a veth's receive ring.
const MaxBatch = 256

// refused: the kernel will not run live frames here (a policy or an old
// kernel, not a bug of ours).
func refused(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ebpf.ErrNotSupported)
}

// pinSender pins the calling thread, which must be one that is never reused
// (netns.NS.Do's), to cpu, and reads its CPU time so far.
func pinSender(cpu int) (Sched, error) {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return Sched{}, fmt.Errorf("pin sender to cpu %d: %w", cpu, err)
	}
	return schedstat("/proc/thread-self/schedstat")
}
