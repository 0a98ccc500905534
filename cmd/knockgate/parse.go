package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/maps"
)

// The parsers below turn flag and argument text into values. Every failure
// is a usage error (exit status 2) whose message names the bad value.

// Defaults of attach, as the flags show them.
const (
	defaultSequence    = "9000,8000"
	defaultStepTimeout = "1m"
	defaultOpen        = "30m"
	defaultProtect     = "22"
)

func parsePortsFlag(flag, s string) ([]maps.Port, error) {
	ports, err := maps.ParsePorts(s)
	if err != nil {
		return nil, usagef("--%s: %w", flag, err)
	}
	return ports, nil
}

// parseDuration accepts Go duration syntax (90s, 1m, 1h30m) and, so that a
// window can never be zero by accident, only positive values.
func parseDuration(flag, s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, usagef("--%s: bad duration %q (use e.g. 30s, 1m, 1h30m)", flag, s)
	}
	if d <= 0 {
		return 0, usagef("--%s: duration %q must be positive", flag, s)
	}
	return d, nil
}

// parseCIDRs parses comma-separated prefixes; a bare address is a single
// host (/32 or /128). Each value may itself be a list.
func parseCIDRs(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			p, err := parseCIDR(f)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, usagef("--allow: bad CIDR %q", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, usagef("--allow: bad CIDR %q", s)
	}
	return p.Masked(), nil
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

func parseMaxSources(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, usagef("--max-sources: %q is not a number", s)
	}
	if n < 1 || n > loader.MaxSourcesLimit {
		return 0, usagef("--max-sources: %d out of range (1-%d)", n, loader.MaxSourcesLimit)
	}
	return uint32(n), nil
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
