package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/test/netns"
)

const (
	// filteredWait is how long a connect may hang before we call the port
	// filtered: a veth round trip takes microseconds, and a dropped SYN is
	// not retransmitted before 1 s, so the attempt sends exactly one SYN.
	filteredWait = 400 * time.Millisecond
	// openWait bounds a connect that should succeed.
	openWait = 2 * time.Second
)

// Listener accepts on the protected port in the receiving namespace and
// records who got through.
type Listener struct {
	ln       net.Listener
	mu       sync.Mutex
	accepted map[netip.Addr]int
	done     chan struct{}
}

// Listen opens the protected port in rx.
func Listen(rx *netns.NS) (*Listener, error) {
	l := &Listener{accepted: map[netip.Addr]int{}, done: make(chan struct{})}
	err := rx.Do(func() error {
		var err error
		l.ln, err = net.Listen("tcp4", netip.AddrPortFrom(rxAddr, ProtectedPort).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", ProtectedPort, err)
	}
	go func() {
		defer close(l.done)
		for {
			c, err := l.ln.Accept()
			if err != nil {
				return
			}
			if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
				l.mu.Lock()
				l.accepted[ap.Addr()]++
				l.mu.Unlock()
			}
			c.Close()
		}
	}()
	return l, nil
}

// Accepted returns how many connections each source completed.
func (l *Listener) Accepted() map[netip.Addr]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[netip.Addr]int, len(l.accepted))
	for a, n := range l.accepted {
		out[a] = n
	}
	return out
}

// Close stops accepting.
func (l *Listener) Close() error {
	err := l.ln.Close()
	<-l.done
	return err
}

// Sources hands out fresh client addresses from clientNet, one per call.
type Sources struct{ next netip.Addr }

func NewSources() *Sources { return &Sources{next: clientNet.Addr().Next()} }

func (s *Sources) Next() netip.Addr {
	a := s.next
	s.next = s.next.Next()
	return a
}

// knock sends one TCP SYN from src to the receiver's port and abandons the
// connection at once: connect on a non-blocking socket transmits the SYN
// before it returns, and closing a socket in SYN-SENT sends nothing more.
// Call it inside the sending namespace.
func knock(src netip.Addr, port int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("knock socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		return fmt.Errorf("knock: bind %s: %w", src, err)
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: rxAddr.As4(), Port: port})
	if !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("knock %s -> %d: want EINPROGRESS, got %v", src, port, err)
	}
	return nil
}

// dial connects from src to the protected port; call it inside the sending
// namespace.
func dial(src netip.Addr, wait time.Duration) error {
	d := net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	c, err := d.Dial("tcp4", netip.AddrPortFrom(rxAddr, ProtectedPort).String())
	if err != nil {
		return err
	}
	return c.Close()
}

// Client kinds of the correctness check.
const (
	clientKnocked  = "knocked"       // 9000, 8000, then connect: must connect
	clientNone     = "no knock"      // connect only: must not
	clientPartial  = "first step"    // 9000, then connect: must not
	clientReversed = "reverse order" // 8000, 9000, then connect: must not
)

// Check is the outcome of one correctness pass.
type Check struct {
	Knocked   int // knocked clients that connected
	KnockedOf int // knocked clients tried
	// LockedOut: after a churn, knocked clients that could not get in are
	// a finding about the gate (its tables full), not a failure.
	LockedOut bool
	Unauth    int // unauthorised clients that connected (must be 0)
	UnauthOf  int
	Failures  []string
	Accepted  int // connections the listener accepted from unauthorised sources
}

// Unauthorised is how many connections got through without knocking: as
// the clients saw them, or as the listener did (which also sees any other
// source), whichever is more.
func (c Check) Unauthorised() int { return max(c.Unauth, c.Accepted) }

// OK tells whether the gate behaved: every knocked client in, nobody else.
func (c Check) OK() bool {
	return (c.Knocked == c.KnockedOf || c.LockedOut) && c.Unauth == 0 && c.Accepted == 0 && len(c.Failures) == 0
}

// Correctness runs one client of each kind from fresh sources, concurrently,
// and returns what happened, with the sources it authorised. A client's
// packets leave one thread in order and the veth keeps them in order, so the
// knocks need no pause between them.
// After a churn (churned), knocked clients that stay out are counted, not
// failed.
func Correctness(topo *Topology, srcs *Sources, knocked int, churned bool) (Check, map[netip.Addr]bool) {
	type client struct {
		kind  string
		src   netip.Addr
		ports []int
		want  bool
	}
	var clients []client
	for i := 0; i < knocked; i++ {
		clients = append(clients, client{clientKnocked, srcs.Next(), []int{KnockPort1, KnockPort2}, true})
	}
	clients = append(clients,
		client{clientNone, srcs.Next(), nil, false},
		client{clientPartial, srcs.Next(), []int{KnockPort1}, false},
		client{clientReversed, srcs.Next(), []int{KnockPort2, KnockPort1}, false},
	)
	authorised := map[netip.Addr]bool{}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		chk = Check{LockedOut: churned}
	)
	for _, c := range clients {
		if c.want {
			authorised[c.src] = true
			chk.KnockedOf++
		} else {
			chk.UnauthOf++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait := filteredWait
			if c.want {
				wait = openWait
			}
			err := topo.TX.Do(func() error {
				for _, p := range c.ports {
					if err := knock(c.src, p); err != nil {
						return err
					}
				}
				return dial(c.src, wait)
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case c.want && err == nil:
				chk.Knocked++
			case c.want && churned:
			case c.want:
				chk.Failures = append(chk.Failures, fmt.Sprintf("%s client %s could not connect: %v", c.kind, c.src, err))
			case err == nil:
				chk.Unauth++
				chk.Failures = append(chk.Failures, fmt.Sprintf("%s client %s connected", c.kind, c.src))
			}
		}()
	}
	wg.Wait()
	return chk, authorised
}

// Latency measures knock-to-open for n fresh sources, one after another:
// from sending the first knock to the connection being established. The
// sources are added to authorised.
func Latency(topo *Topology, srcs *Sources, n int, authorised map[netip.Addr]bool) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	err := topo.TX.Do(func() error {
		for i := 0; i < n; i++ {
			src := srcs.Next()
			authorised[src] = true
			start := time.Now()
			if err := knock(src, KnockPort1); err != nil {
				return err
			}
			if err := knock(src, KnockPort2); err != nil {
				return err
			}
			if err := dial(src, openWait); err != nil {
				return fmt.Errorf("knocked source %s could not connect: %w", src, err)
			}
			out = append(out, time.Since(start))
		}
		return nil
	})
	return out, err
}

// UnderFloodResult is how many of the clients that knocked during a flood
// of spoofed first knocks, with Gap between their two knocks, got in.
type UnderFloodResult struct {
	Gap     time.Duration
	Rate    float64 // the flood's frames a second; 0: as fast as the sender goes
	In, Of  int
	Sources []netip.Addr // the clients, all of which knocked
}

// UnderFlood measures whether clients still get in while an attacker
// floods the first knock port from spoofed sources (2^20 of them, counting
// up from churnBase, as fast as the generator goes): n clients from fresh
// sources, their starts spread over 200 ms (rate, when not 0, paces the
// flood to that many frames a second), each knock the first port, wait
// gap, knock the second, and connect, waiting 500 ms (one SYN). The no
// filter gate's figure is the floor: how many connections the flooded link
// lets through at all.
func UnderFlood(topo *Topology, gen Generator, srcs *Sources, gap time.Duration, rate float64, n, cpu int, batch uint32) (UnderFloodResult, error) {
	res := UnderFloodResult{Gap: gap, Rate: rate, Of: n}
	stop := make(chan struct{})
	flood := make(chan error, 1)
	go func() {
		_, err := gen.Run(topo, Flood{Sources: 1 << 20, Base: churnBase, Rate: rate}, KnockPort1, cpu, batch, stop)
		flood <- err
	}()
	time.Sleep(200 * time.Millisecond) // the flood at full rate
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for i := range n {
		src := srcs.Next()
		res.Sources = append(res.Sources, src)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 200 * time.Millisecond / time.Duration(n))
			var dialErr error
			err := topo.TX.Do(func() error {
				if err := knock(src, KnockPort1); err != nil {
					return err
				}
				time.Sleep(gap)
				if err := knock(src, KnockPort2); err != nil {
					return err
				}
				dialErr = dial(src, 500*time.Millisecond)
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case dialErr == nil:
				res.In++
			}
		}()
	}
	wg.Wait()
	close(stop)
	errs = append(errs, <-flood)
	return res, errors.Join(errs...)
}
