package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/netns"
)

// NAPI is the kernel thread that polls the receiving veth. With threaded
// NAPI every bit of receive work for the interface — the XDP program, skb
// building, GRO, the IP stack, netfilter, TCP — runs in this one thread, so
// its scheduler statistics are an exact account of the receiver's CPU time.
type NAPI struct {
	PID  int
	Name string
}

// napiThreads lists the kernel threads polling iface ("napi/IFACE-ID").
func napiThreads(iface string) (map[int]string, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*/comm")
	if err != nil {
		return nil, err
	}
	prefix := "napi/" + iface + "-"
	out := map[int]string{}
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the task ended while we looked
		}
		name := strings.TrimSpace(string(b))
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err == nil {
			out[pid] = name
		}
	}
	return out, nil
}

// ThreadedNAPI switches RxIface in rx to threaded NAPI and pins the new
// polling thread to cpu. NAPI must already be on (an XDP program attached,
// or GRO enabled); the thread is told apart from older ones of the same name
// (a previous topology being torn down) by appearing only now.
func ThreadedNAPI(rx *netns.NS, cpu int) (NAPI, error) {
	before, err := napiThreads(RxIface)
	if err != nil {
		return NAPI{}, err
	}
	if err := nsExecSh(rx, "echo 1 > /sys/class/net/"+RxIface+"/threaded"); err != nil {
		return NAPI{}, err
	}
	var found []NAPI
	// The thread is created synchronously by the sysfs write; the loop only
	// covers a slow /proc.
	for try := 0; try < 50 && len(found) == 0; try++ {
		after, err := napiThreads(RxIface)
		if err != nil {
			return NAPI{}, err
		}
		for pid, name := range after {
			if _, old := before[pid]; !old {
				found = append(found, NAPI{pid, name})
			}
		}
		if len(found) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(found) != 1 {
		return NAPI{}, fmt.Errorf("threaded NAPI on %s: want one new napi/%s-* thread, found %v (is NAPI enabled?)",
			RxIface, RxIface, found)
	}
	n := found[0]
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(n.PID, &set); err != nil {
		return NAPI{}, fmt.Errorf("pin %s (pid %d) to cpu %d: %w", n.Name, n.PID, cpu, err)
	}
	return n, nil
}

// CoalesceNAPI makes RxIface's NAPI, once it has emptied its ring, wait
// timeout before it polls again instead of being woken by the next frame
// (napi_defer_hard_irqs, gro_flush_timeout). A receiver faster than the
// sender would otherwise be woken for a handful of frames at a time, and on
// a VM each wake-up costs microseconds of its thread's time: its CPU per
// packet would measure the sender's rate more than the gate's work. A busy
// NAPI, which never empties its ring, is not affected.
func CoalesceNAPI(rx *netns.NS, timeout time.Duration) error {
	if timeout <= 0 {
		return nil
	}
	dir := "/sys/class/net/" + RxIface + "/"
	return nsExecSh(rx, fmt.Sprintf("echo 1 > %snapi_defer_hard_irqs && echo %d > %sgro_flush_timeout",
		dir, timeout.Nanoseconds(), dir))
}

// Sched is a thread's scheduler account: time on CPU and time runnable but
// waiting for a CPU, in nanoseconds (kept by the scheduler itself: exact,
// not sampled), and the number of times it was switched in.
type Sched struct {
	CPU  uint64
	Wait uint64
	Runs uint64
}

// Sched reads the NAPI thread's scheduler account.
func (n NAPI) Sched() (Sched, error) {
	return schedstat(fmt.Sprintf("/proc/%d/schedstat", n.PID))
}

// schedstat reads a schedstat file: "run_ns wait_ns timeslices".
func schedstat(path string) (Sched, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Sched{}, fmt.Errorf("read %s: %w", path, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return Sched{}, fmt.Errorf("read %s: %q is not a schedstat line", path, b)
	}
	cpu, err1 := strconv.ParseUint(f[0], 10, 64)
	wait, err2 := strconv.ParseUint(f[1], 10, 64)
	runs, err3 := strconv.ParseUint(f[2], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Sched{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return Sched{CPU: cpu, Wait: wait, Runs: runs}, nil
}

// LinkStats are an interface's counters as the kernel reports them over
// rtnetlink (struct rtnl_link_stats64). On a veth, RxPackets counts every
// frame the receiving NAPI took off its ring (XDP or not) plus skbs the peer
// handed over directly; RxDropped counts frames refused because the ring
// was full.
type LinkStats struct {
	RxPackets, TxPackets, RxDropped, TxDropped uint64
}

// linkStats reads iface's counters inside ns with one netlink dump.
func linkStats(ns *netns.NS, iface string) (LinkStats, error) {
	var st LinkStats
	found := false
	err := ns.Do(func() error {
		rib, err := syscall.NetlinkRIB(unix.RTM_GETLINK, unix.AF_UNSPEC)
		if err != nil {
			return fmt.Errorf("dump links: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rib)
		if err != nil {
			return fmt.Errorf("parse link dump: %w", err)
		}
		for i := range msgs {
			if msgs[i].Header.Type != unix.RTM_NEWLINK {
				continue
			}
			attrs, err := syscall.ParseNetlinkRouteAttr(&msgs[i])
			if err != nil {
				return fmt.Errorf("parse link attributes: %w", err)
			}
			var name string
			var stats []byte
			for _, a := range attrs {
				switch a.Attr.Type {
				case unix.IFLA_IFNAME:
					name = strings.TrimRight(string(a.Value), "\x00")
				case unix.IFLA_STATS64:
					stats = a.Value
				}
			}
			if name != iface || len(stats) < 8*8 {
				continue
			}
			u := func(i int) uint64 { return binary.NativeEndian.Uint64(stats[8*i:]) }
			// rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors,
			// tx_errors, rx_dropped, tx_dropped
			st = LinkStats{RxPackets: u(0), TxPackets: u(1), RxDropped: u(6), TxDropped: u(7)}
			found = true
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("%s: %w", ns.Name, err)
	}
	if !found {
		return st, fmt.Errorf("%s: no interface %s", ns.Name, iface)
	}
	return st, nil
}

// tcpInSegs reads the TCP segments received so far in ns (/proc/net/snmp):
// under a gate, flood SYNs must never get this far.
func tcpInSegs(ns *netns.NS) (uint64, error) {
	var v uint64
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return fmt.Errorf("read snmp: %w", err)
		}
		v, err = snmpField(string(b), "Tcp", "InSegs")
		return err
	})
	return v, err
}

// snmpField finds a counter in /proc/net/snmp's format: pairs of lines, a
// header naming the fields and a line of values, both prefixed "Proto:".
func snmpField(text, proto, field string) (uint64, error) {
	lines := strings.Split(text, "\n")
	for i := 0; i+1 < len(lines); i++ {
		head, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(head) == 0 || head[0] != proto+":" || len(vals) != len(head) || vals[0] != proto+":" {
			continue
		}
		for j, h := range head {
			if h == field {
				return strconv.ParseUint(vals[j], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s %s in snmp", proto, field)
}
