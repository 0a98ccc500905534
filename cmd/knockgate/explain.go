package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"time"
)

// The client's errors are read by someone who does not run the gate: each
// says what went wrong in their terms and what they can do about it.

// explainSend is err from sending to addr, with what the user can do when
// there is no way there from this machine.
func explainSend(addr netip.Addr, err error) error {
	if isUnreachable(err) {
		return fmt.Errorf("no route from this machine to %s (%w): is this machine on a network that reaches the gate "+
			"(connected, the VPN up if it needs one), and is the address right?", addr, err)
	}
	return err
}

// explainLookup is err from looking host up, with what the user can do.
func explainLookup(host string, err error) error {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		switch {
		case dns.IsNotFound:
			return fmt.Errorf("resolve %q: no such name (%w): check its spelling, or give the gate's IP address instead", host, err)
		case dns.IsTimeout:
			return fmt.Errorf("resolve %q: no answer from the DNS server (%w): check this machine's network, or give the gate's IP address instead", host, err)
		}
	}
	return fmt.Errorf("resolve %q: %w", host, err)
}

// builtAt is when this knockgate's source was committed (RFC 3339), set at
// build time like version: -ldflags "-X main.builtAt=...". A clock earlier
// than that is certainly wrong.
var builtAt = ""

// checkClock refuses to send an SPA packet stamped by a clock that is
// surely wrong: one that says it is earlier than this program was built
// (a flat clock battery says 1970 or 2000), since the gate would refuse it
// without a word.
func checkClock(now time.Time) error {
	built, err := time.Parse(time.RFC3339, builtAt)
	if err != nil || !now.Before(built) {
		return nil
	}
	return fmt.Errorf("this machine's clock says %s, but this knockgate was built on %s: the clock is at least %s behind. "+
		"An SPA packet carries this clock's time, and the gate refuses one more than 30s (its window) from its own. "+
		"Set the clock right: %s",
		now.UTC().Format("2006-01-02 15:04:05 MST"), built.UTC().Format("2006-01-02"), roughly(built.Sub(now)), clockAdvice())
}

// clockHelp is the part of a failed --check's error about the clock: the
// time the packet carried, what this machine knows of its clock's accuracy,
// and how to set it right.
func clockHelp(sent time.Time) string {
	s := fmt.Sprintf("The packet carried %s UTC, this machine's clock", sent.UTC().Format("2006-01-02 15:04:05.000"))
	if sync := clockSync(); sync != "" {
		s += " (" + sync + ")"
	}
	return s + "; the gate refuses a packet more than its window (30s unless it is set otherwise) from the gate's own clock, " +
		"either way, and says nothing. If this clock may be off by that much (compare it with a clock you trust), set it right: " +
		clockAdvice() + "."
}

// clockAdvice says how to set this system's clock from the network.
func clockAdvice() string {
	switch runtime.GOOS {
	case "windows":
		return `Settings > Time & language > Date & time > "Sync now" (or "w32tm /resync" as administrator)`
	case "darwin":
		return `System Settings > General > Date & Time > "Set time and date automatically" (or "sudo sntp -sS time.apple.com")`
	case "freebsd":
		return `"service ntpd enable && service ntpd start" as root`
	case "openbsd":
		return `"rcctl enable ntpd && rcctl start ntpd" as root`
	case "linux":
		return `"timedatectl set-ntp true" (systemd), or start chrony or ntpd`
	}
	return "synchronize it with a time server (NTP)"
}

// roughly is d in the largest unit that fits: "3 days", "5h", "42s".
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	case d >= time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	}
	return d.Truncate(time.Second).String()
}
