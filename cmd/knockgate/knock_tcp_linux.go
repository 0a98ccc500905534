//go:build linux && !knockgate_portable

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// knockTCP sends exactly one SYN, at once. A non-blocking connect transmits the SYN
// before it returns EINPROGRESS; closing the socket in SYN_SENT then moves it
// straight to CLOSE without a FIN or RST, and nothing is left to retransmit.
// (A blocking net.Dial would retransmit the SYN, which the gate counts as a
// repeat, and wait for a reply that never comes: knock ports are dropped.)
func knockTCP(_ context.Context, addr netip.Addr, port uint16) error {
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
