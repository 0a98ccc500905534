package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// packetGenerator floods from user space, for kernels that refuse live
// frames: an AF_PACKET socket in the sending namespace with
// PACKET_QDISC_BYPASS (each frame goes straight to the veth's xmit), handing
// the kernel a batch of frames per sendmmsg. The frames are the live
// generator's template with the source rewritten per frame, by the same rule
// and the same incremental checksum update as flood.c.
//
// The socket writes to the idle pair (idleA), not to TxIface: a relay
// program on its peer (idleB) redirects every frame to TxIface, whose
// receiver then gets XDP frames, as from the live generator. Written to
// TxIface itself, the frames would reach the receiver as socket buffers,
// and its NAPI thread would spend most of its time on the sender's account
// rather than the gate's: copying each buffer into an XDP-ready page and
// releasing the sender's socket memory across cores (about 500 ns a frame
// on the 2-CPU VM, against 1 % of it in an XDP_DROP program). The relay's
// share of that work runs in the sender's softirq, on the sender's core.
type packetGenerator struct {
	fd    int           // the socket while attached; -1 otherwise
	relay *ebpf.Program // on idleB: redirect to TxIface
	link  link.Link
	// sent counts the frames the relay took since the generator was made;
	// frame n comes from base + n mod sources, as in flood.c (where n
	// counts frames built).
	sent atomic.Uint64
}

func newPacketGenerator() *packetGenerator { return &packetGenerator{fd: -1} }

// Name is how the report names this generator.
func (g *packetGenerator) Name() string {
	return "AF_PACKET (sendmmsg, PACKET_QDISC_BYPASS, relayed by XDP_REDIRECT)"
}

// Attach brings the idle pair up, puts the relay on idleB and opens the
// socket on idleA. Bound with protocol 0, the socket takes no frames in.
func (g *packetGenerator) Attach(topo *Topology) (err error) {
	if err := g.Detach(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			g.Detach()
		}
	}()
	for _, dev := range []string{idleA, idleB} {
		if _, err := topo.TX.Run("ip", "link", "set", dev, "up"); err != nil {
			return err
		}
	}
	g.relay, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "kgb_relay",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(topo.TxIndex)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(), // XDP_REDIRECT, or XDP_ABORTED
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return fmt.Errorf("load relay program: %w", err)
	}
	return topo.TX.Do(func() error {
		ifc, err := net.InterfaceByName(idleB)
		if err != nil {
			return fmt.Errorf("find %s: %w", idleB, err)
		}
		g.link, err = link.AttachXDP(link.XDPOptions{Program: g.relay, Interface: ifc.Index, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attach relay to %s: %w", idleB, err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("packet socket: PACKET_QDISC_BYPASS: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: topo.IdleIndex}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", idleA, err)
		}
		g.fd = fd
		return nil
	})
}

// Detach closes the socket and removes the relay; the idle pair stays up
// until its namespace goes.
func (g *packetGenerator) Detach() error {
	var errs []error
	if g.fd >= 0 {
		if err := unix.Close(g.fd); err != nil {
			errs = append(errs, fmt.Errorf("close packet socket: %w", err))
		}
		g.fd = -1
	}
	if g.link != nil {
		if err := g.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach relay: %w", err))
		}
		g.link = nil
	}
	if g.relay != nil {
		errs = append(errs, g.relay.Close())
		g.relay = nil
	}
	return errors.Join(errs...)
}

// Close undoes Attach; there is nothing else to release.
func (g *packetGenerator) Close() error { return g.Detach() }

// Sent is how many frames the relay has taken since the generator was made.
func (g *packetGenerator) Sent() (uint64, error) { return g.sent.Load(), nil }

// Run floods port with f's sources until stop is closed, from a thread
// pinned to cpu, batch frames per sendmmsg. A frame idleA turns away (the
// relay's ring full: ENOBUFS) is sent again in the next call, so that every
// source of a churn gets its turn; frames the relay cannot pass on to the
// full ring of RxIface are lost there and counted in its rx_dropped, as
// live frames are.
func (g *packetGenerator) Run(topo *Topology, f Flood, port uint16, cpu int, batch uint32, stop <-chan struct{}) (FloodResult, error) {
	var res FloodResult
	if g.fd < 0 {
		return res, errors.New("packet generator not attached")
	}
	frames := newFrameBatch(template(topo, f, port), int(batch))
	base := binary.BigEndian.Uint32(f.base().AsSlice())
	span := uint64(max(f.Sources, 1))
	err := topo.TX.Do(func() error {
		sched0, err := pinSender(cpu)
		if err != nil {
			return err
		}
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
			n := g.sent.Load()
			for i := range frames.frames {
				frames.setSource(i, base+uint32((n+uint64(i))%span))
			}
			k, err := frames.send(g.fd)
			res.Calls++
			if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("sendmmsg on %s: %w", idleA, err)
			}
			g.sent.Add(uint64(k))
			res.Sent += uint64(k)
			if f.Rate > 0 {
				// Paced: no further than the rate allows.
				sentSoFar += uint64(k)
				if ahead := time.Duration(float64(sentSoFar)/f.Rate*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
		}
	})
	return res, err
}

// frameBatch is a batch of frames for one sendmmsg: copies of a template
// (Ethernet, a 20-byte IPv4 header, TCP or UDP) whose source address
// setSource rewrites in place.
type frameBatch struct {
	frames [][]byte
	iovs   []unix.Iovec
	msgs   []unix.Mmsghdr
	l4     int // offset of the TCP or UDP checksum
	udp    bool
}

const (
	offIPCheck = 14 + 10
	offSaddr   = 14 + 12
)

func newFrameBatch(tmpl []byte, n int) *frameBatch {
	r := &frameBatch{
		frames: make([][]byte, n),
		iovs:   make([]unix.Iovec, n),
		msgs:   make([]unix.Mmsghdr, n),
		l4:     14 + 20 + 16, // TCP
	}
	if tmpl[14+9] == unix.IPPROTO_UDP {
		r.l4, r.udp = 14+20+6, true
	}
	buf := make([]byte, n*len(tmpl))
	for i := range n {
		f := buf[i*len(tmpl) : (i+1)*len(tmpl) : (i+1)*len(tmpl)]
		copy(f, tmpl)
		r.frames[i] = f
		r.iovs[i].Base = &f[0]
		r.iovs[i].SetLen(len(f))
		r.msgs[i].Hdr.Iov = &r.iovs[i]
		r.msgs[i].Hdr.SetIovlen(1)
	}
	return r
}

// setSource makes frame i come from addr (host byte order), patching the IPv4
// and TCP or UDP checksums incrementally from whatever the frame holds now,
// as flood.c does (RFC 1624).
func (r *frameBatch) setSource(i int, addr uint32) {
	f := r.frames[i]
	from := binary.BigEndian.Uint32(f[offSaddr:])
	if from == addr {
		return
	}
	binary.BigEndian.PutUint32(f[offSaddr:], addr)
	ipc := binary.BigEndian.Uint16(f[offIPCheck:])
	binary.BigEndian.PutUint16(f[offIPCheck:], csumReplace4(ipc, from, addr))
	l4c := csumReplace4(binary.BigEndian.Uint16(f[r.l4:]), from, addr)
	if r.udp && l4c == 0 {
		l4c = 0xffff // 0 would say "no checksum"; RFC 768 sends zero as all ones
	}
	binary.BigEndian.PutUint16(f[r.l4:], l4c)
}

// csumReplace4 is RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a 32-bit
// field seen as two 16-bit words.
func csumReplace4(check uint16, from, to uint32) uint16 {
	sum := uint32(^check)
	sum += uint32(^uint16(from>>16)) + uint32(^uint16(from))
	sum += to>>16 + to&0xffff
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	return ^uint16(sum)
}

// send hands the kernel every frame with one sendmmsg, without blocking. It
// returns how many the kernel took; err is why it took none.
func (r *frameBatch) send(fd int) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.msgs[0])),
		uintptr(len(r.msgs)), unix.MSG_DONTWAIT, 0, 0)
	runtime.KeepAlive(r)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
