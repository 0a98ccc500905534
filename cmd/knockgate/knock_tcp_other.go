//go:build !linux || knockgate_portable

package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// abandonAfter is how long a TCP knock's connect may wait for an answer,
// counted from just before the connect: well inside the initial
// retransmission timeout of the SYN (1 s on Linux, macOS, FreeBSD and
// Windows 10 on, RFC 6298's value; OpenBSD's and older Windows' are longer),
// so that the knock is one SYN.
const abandonAfter = 250 * time.Millisecond

// knockTCP sends one SYN where raw sockets are not at hand, with only the
// standard library: a connect abandoned well before the first
// retransmission. The SYN leaves inside the connect call; closing a socket
// whose connect is still pending sends nothing (no FIN, no RST: nothing was
// established), on Linux, the BSDs, macOS and Windows alike. The timer
// starts in Control, which runs just before the connect, so a busy machine
// cannot abandon the attempt before its SYN went out. Built on Linux with
// -tags knockgate_portable, this is what the tests prove there.
func knockTCP(parent context.Context, addr netip.Addr, port uint16) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var timer *time.Timer
	d := net.Dialer{
		ControlContext: func(context.Context, string, string, syscall.RawConn) error {
			timer = time.AfterFunc(abandonAfter, cancel)
			return nil
		},
	}
	c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, port).String())
	if timer != nil {
		timer.Stop()
	}
	switch {
	case err == nil:
		// Something listens there: the SYN was answered, so it arrived.
		// (A gate drops knock ports; this is a host without one.)
		return c.Close()
	case parent.Err() != nil:
		return parent.Err()
	case timer != nil && errors.Is(err, context.Canceled):
		// The usual end: nothing answers a knock.
		return nil
	case isRefused(err):
		// A closed port's RST: the SYN arrived all the same.
		return nil
	}
	return err
}
