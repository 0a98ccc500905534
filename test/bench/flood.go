package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/packet"
)

// Generator floods the receiver with TCP SYNs to the protected port from the
// kernel: BPF_PROG_RUN in live-frame mode runs the flood program on a context
// naming the sending veth, and each XDP_TX it returns is transmitted there.
// hping3 and AF_PACKET senders stay well under 1 Mpps on a small VM; this
// reaches several times the rate any gate here can absorb on one core.
type Generator struct {
	objs floodObjects
	idle link.Link
}

// xdpMD is struct xdp_md, the context BPF_PROG_RUN hands the program.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// NewGenerator loads the flood program.
func NewGenerator() (*Generator, error) {
	g := &Generator{}
	if err := loadFloodObjects(&g.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load flood program: %+v", verr)
		}
		return nil, fmt.Errorf("load flood program: %w", err)
	}
	return g, nil
}

// Close unloads the program.
func (g *Generator) Close() error {
	errs := []error{g.Detach()}
	errs = append(errs, g.objs.Close())
	return errors.Join(errs...)
}

// Attach keeps the program attached (natively) to the idle veth of topo for
// as long as the topology lives. Each BPF_PROG_RUN of an XDP program adds it
// to the kernel's XDP dispatcher and removes it afterwards, and a dispatcher
// update waits for an RCU grace period: tens of milliseconds during which
// nothing is sent. A program already attached somewhere stays in the
// dispatcher, so the runs only take and drop a reference.
func (g *Generator) Attach(topo *Topology) error {
	if err := g.Detach(); err != nil {
		return err
	}
	return topo.TX.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{
			Program:   g.objs.Flood,
			Interface: topo.IdleIndex,
			Flags:     link.XDPDriverMode,
		})
		if err != nil {
			return fmt.Errorf("attach flood program to %s: %w", idleA, err)
		}
		g.idle = l
		return nil
	})
}

// Detach undoes Attach.
func (g *Generator) Detach() error {
	if g.idle == nil {
		return nil
	}
	err := g.idle.Close()
	g.idle = nil
	if err != nil {
		return fmt.Errorf("detach flood program: %w", err)
	}
	return nil
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

// FloodResult is what the sender did.
type FloodResult struct {
	Sent     uint64        // frames the program built (XDP_TX)
	Elapsed  time.Duration // from the first run to the end of the last
	SenderNS uint64        // CPU time of the sending thread
	Calls    int           // BPF_PROG_RUN calls
}

// MaxBatch is the most frames BPF_PROG_RUN builds before it flushes them to
// the device (the kernel's limit), and the size of a veth's receive ring.
const MaxBatch = 256

// Run floods port from topo's sending namespace with f's sources until stop
// is closed, on a thread pinned to cpu, flushing every batch frames. Each flush wakes the
// receiver's NAPI thread: the fewer frames it finds per wake-up, the more of
// its time goes to being switched in and out rather than to packets.
func (g *Generator) Run(topo *Topology, f Flood, port uint16, cpu int, batch uint32, stop <-chan struct{}) (FloodResult, error) {
	var res FloodResult
	base := f.Base
	if !base.IsValid() {
		base = floodBase
	}
	if err := g.objs.FirstSaddr.Set(binary.BigEndian.Uint32(base.AsSlice())); err != nil {
		return res, fmt.Errorf("set flood source: %w", err)
	}
	if err := g.objs.Nsources.Set(f.Sources); err != nil {
		return res, fmt.Errorf("set flood sources: %w", err)
	}
	sent0, err := g.Sent()
	if err != nil {
		return res, err
	}
	flags := f.Flags
	if flags == 0 {
		flags = packet.SYN
	}
	frame := TCPFrame(topo.TxMAC, topo.RxMAC, floodBase, rxAddr, 40000, port, flags)
	if f.Payload != nil {
		frame = UDPFrame(topo.TxMAC, topo.RxMAC, floodBase, rxAddr, 40000, port, f.Payload)
	}
	opts := &ebpf.RunOptions{
		Data: frame,
		Context: xdpMD{
			DataEnd:        uint32(len(frame)),
			IngressIfindex: uint32(topo.TxIndex),
		},
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		BatchSize: batch,
	}
	err = topo.TX.Do(func() error {
		// Do's thread is never reused, so the pinning ends with it.
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pin sender to cpu %d: %w", cpu, err)
		}
		sched0, err := schedstat("/proc/thread-self/schedstat")
		if err != nil {
			return err
		}
		// Each call should last about a slice: short enough to stop on
		// time, long enough that the per-call setup (page pool, context
		// copy) is noise. The first call sizes the rest.
		const slice = 20 * time.Millisecond
		repeat := uint32(1 << 14)
		var sentSoFar uint64
		start := time.Now()
		for {
			select {
			case <-stop:
				res.Elapsed = time.Since(start)
				sched1, err := schedstat("/proc/thread-self/schedstat")
				res.SenderNS = sched1.CPU - sched0.CPU
				return err
			default:
			}
			opts.Repeat = repeat
			t0 := time.Now()
			if _, err := g.objs.Flood.Run(opts); err != nil {
				return fmt.Errorf("run flood program: %w", err)
			}
			res.Calls++
			if f.Rate > 0 {
				// Paced: no further than the rate allows.
				sentSoFar += uint64(repeat)
				if ahead := time.Duration(float64(sentSoFar)/f.Rate*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
				if r := uint32(f.Rate * slice.Seconds()); r >= 1 {
					repeat = min(repeat, r)
				}
				continue
			}
			if took := time.Since(t0); took > 0 {
				next := float64(repeat) * float64(slice) / float64(took)
				repeat = uint32(min(max(next, 1<<10), 1<<24))
			}
		}
	})
	if err != nil {
		return res, err
	}
	sent1, err := g.Sent()
	if err != nil {
		return res, err
	}
	res.Sent = sent1 - sent0
	return res, nil
}

// Sent is how many frames the generator has built since it was loaded.
func (g *Generator) Sent() (uint64, error) {
	var n uint64
	if err := g.objs.Sent.Get(&n); err != nil {
		return 0, fmt.Errorf("read frames sent: %w", err)
	}
	return n, nil
}
