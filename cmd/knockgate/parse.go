package main

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// The parsers below turn flag and argument text into values. Every failure
// is a usage error (exit status 2) whose message names the bad value.

// parseDuration is policy.ParseDuration for a flag of a command's own.
func parseDuration(flag, s string) (time.Duration, error) {
	d, err := policy.ParseDuration(s)
	if err != nil {
		return 0, usagef("--%s: %w", flag, err)
	}
	return d, nil
}

// parseAddr parses a source address for grant and revoke. v4-mapped IPv6
// is the same source as its IPv4 address, as the program sees it.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, usagef("bad address %q", s)
	}
	return a.Unmap(), nil
}

// sshClient reads the client address of this SSH session from
// $SSH_CONNECTION ("client_ip client_port server_ip server_port"). ok is
// false when the variable is unset.
func sshClient(getenv func(string) string) (addr netip.Addr, ok bool, err error) {
	v := strings.TrimSpace(getenv("SSH_CONNECTION"))
	if v == "" {
		return netip.Addr{}, false, nil
	}
	fields := strings.Fields(v)
	a, perr := netip.ParseAddr(fields[0])
	if perr != nil {
		return netip.Addr{}, false, fmt.Errorf("cannot read this SSH session's address from $SSH_CONNECTION %q "+
			"(refusing to lock it out: pass --no-grant-self, and --allow if needed)", v)
	}
	// A link-local client carries its zone; the gate keys on the address.
	return a.WithZone("").Unmap(), true, nil
}
