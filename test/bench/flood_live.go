package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// liveGenerator floods the receiver from the kernel: BPF_PROG_RUN in
// live-frame mode runs the flood program on a context naming the sending
// veth, and each XDP_TX it returns is transmitted there. hping3 and
// AF_PACKET senders stay well under 1 Mpps on a small VM; this reaches
// several times the rate any gate here can absorb on one core.
type liveGenerator struct {
	objs floodObjects
	idle link.Link
}

// xdpMD is struct xdp_md, the context BPF_PROG_RUN hands the program.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// newLiveGenerator loads the flood program.
func newLiveGenerator() (*liveGenerator, error) {
	g := &liveGenerator{}
	if err := loadFloodObjects(&g.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load flood program: %+v", verr)
		}
		return nil, fmt.Errorf("load flood program: %w", err)
	}
	return g, nil
}

// Name is how the report names this generator.
func (g *liveGenerator) Name() string { return "live frames (BPF_PROG_RUN, XDP_TX)" }

// probe runs the flood program once in live-frame mode, on a frame too short
// for it (it returns XDP_ABORTED: nothing is sent), on a thread in a network
// namespace of its own that ends with the thread. The kernel refuses the
// mode, if it does, before the program runs.
func (g *liveGenerator) probe() error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime retires the thread, and the
		// namespace with it, when this goroutine ends.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("probe live frames: new network namespace: %w", err)
			return
		}
		opts := probeOptions()
		opts.Flags = unix.BPF_F_TEST_XDP_LIVE_FRAMES
		_, err := g.objs.Flood.Run(opts)
		if err != nil {
			err = fmt.Errorf("run flood program: %w", err)
		}
		errc <- err
	}()
	return <-errc
}

// probeOptions is the probe's run: one frame, just an Ethernet header, which
// the flood program refuses (XDP_ABORTED).
func probeOptions() *ebpf.RunOptions {
	frame := make([]byte, 14)
	return &ebpf.RunOptions{Data: frame, Context: xdpMD{DataEnd: uint32(len(frame))}, Repeat: 1}
}

// Close unloads the program.
func (g *liveGenerator) Close() error {
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
func (g *liveGenerator) Attach(topo *Topology) error {
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
func (g *liveGenerator) Detach() error {
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

// Run floods port from topo's sending namespace with f's sources until stop
// is closed, on a thread pinned to cpu, flushing every batch frames. Each flush wakes the
// receiver's NAPI thread: the fewer frames it finds per wake-up, the more of
// its time goes to being switched in and out rather than to packets.
func (g *liveGenerator) Run(topo *Topology, f Flood, port uint16, cpu int, batch uint32, stop <-chan struct{}) (FloodResult, error) {
	var res FloodResult
	if err := g.objs.FirstSaddr.Set(binary.BigEndian.Uint32(f.base().AsSlice())); err != nil {
		return res, fmt.Errorf("set flood source: %w", err)
	}
	if err := g.objs.Nsources.Set(f.Sources); err != nil {
		return res, fmt.Errorf("set flood sources: %w", err)
	}
	sent0, err := g.Sent()
	if err != nil {
		return res, err
	}
	frame := template(topo, f, port)
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
		sched0, err := pinSender(cpu)
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
func (g *liveGenerator) Sent() (uint64, error) {
	var n uint64
	if err := g.objs.Sent.Get(&n); err != nil {
		return 0, fmt.Errorf("read frames sent: %w", err)
	}
	return n, nil
}
