package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/knockgate/knockgate/maps"
)

// udpPayload is what a UDP knock carries; the gate only looks at the port.
var udpPayload = []byte("knock")

func knockCommand() *command {
	var (
		delay  string
		v4, v6 bool
	)
	fs := newFlags("knock")
	fs.StringVar(&delay, "delay", "100ms", "wait `DURATION` between knocks")
	fs.BoolVarP(&v4, "ipv4", "4", false, "resolve HOST to an IPv4 address only")
	fs.BoolVarP(&v6, "ipv6", "6", false, "resolve HOST to an IPv6 address only")
	return &command{
		name:     "knock",
		synopsis: "HOST PORT[/tcp|/udp]... [--delay 100ms] [-4|-6]",
		summary:  "knock on a gate (a client, no gate needed here)",
		help: "Knock on HOST: for each PORT in order, one TCP SYN (a connection attempt\n" +
			"abandoned at once) or one UDP datagram. PORT:PROTO (knockd's form) is accepted too.",
		minArgs: 2, maxArgs: -1,
		flags: fs,
		run: func(e *env, args []string) error {
			var ports []maps.Port
			for _, a := range args[1:] {
				p, err := maps.ParsePorts(a)
				if err != nil {
					return &usageError{err}
				}
				ports = append(ports, p...)
			}
			d, err := time.ParseDuration(strings.TrimSpace(delay))
			if err != nil {
				return usagef("--delay: bad duration %q (use e.g. 100ms, 1s)", delay)
			}
			if d < 0 {
				return usagef("--delay: duration %q must not be negative", delay)
			}
			if v4 && v6 {
				return usagef("-4 and -6 exclude each other")
			}
			addr, err := resolve(e.ctx, args[0], v4, v6)
			if err != nil {
				return err
			}
			for i, p := range ports {
				if i > 0 {
					if err := sleep(e.ctx, d); err != nil {
						return err
					}
				}
				if err := knock(addr, p); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "knock %s %d/%s\n", addr, p.Num, p.Proto)
			}
			return nil
		},
	}
}

// resolve turns HOST into one address, once, so that every knock goes to
// the same place. An IP literal needs no DNS.
func resolve(ctx context.Context, host string, v4, v6 bool) (netip.Addr, error) {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		if v4 && !a.Is4() {
			return netip.Addr{}, usagef("%s is not an IPv4 address (-4)", host)
		}
		if v6 && !a.Is6() {
			return netip.Addr{}, usagef("%s is not an IPv6 address (-6)", host)
		}
		return a, nil
	}
	network := "ip"
	switch {
	case v4:
		network = "ip4"
	case v6:
		network = "ip6"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %q: no %s address", host, network)
	}
	return addrs[0].Unmap(), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// knock sends one knock to port p of addr.
func knock(addr netip.Addr, p maps.Port) error {
	var err error
	if p.Proto == maps.UDP {
		err = knockUDP(addr, p.Num)
	} else {
		err = knockTCP(addr, p.Num)
	}
	if err != nil {
		return fmt.Errorf("knock %s %d/%s: %w", addr, p.Num, p.Proto, err)
	}
	return nil
}

// knockTCP sends exactly one SYN. A non-blocking connect transmits the SYN
// before it returns EINPROGRESS; closing the socket in SYN_SENT then moves it
// straight to CLOSE without a FIN or RST, and nothing is left to retransmit.
// (A blocking net.Dial would retransmit the SYN, which the gate counts as a
// repeat, and wait for a reply that never comes: knock ports are dropped.)
func knockTCP(addr netip.Addr, port uint16) error {
	family, sa, err := sockaddr(addr, port)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, sa)
	switch {
	case err == nil, errors.Is(err, unix.EINPROGRESS):
		return nil
	case errors.Is(err, unix.ECONNREFUSED):
		// Only on a local destination, whose RST can arrive inside
		// connect: the SYN was sent all the same.
		return nil
	}
	return os.NewSyscallError("connect", err)
}

func sockaddr(addr netip.Addr, port uint16) (int, unix.Sockaddr, error) {
	if addr.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}, nil
	}
	sa := &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
	if zone := addr.Zone(); zone != "" {
		if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		} else if ifc, err := net.InterfaceByName(zone); err == nil {
			sa.ZoneId = uint32(ifc.Index)
		} else {
			return 0, nil, fmt.Errorf("zone of %s: unknown interface %q", addr, zone)
		}
	}
	return unix.AF_INET6, sa, nil
}

// knockUDP sends one small datagram.
func knockUDP(addr netip.Addr, port uint16) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write(udpPayload)
	return err
}
