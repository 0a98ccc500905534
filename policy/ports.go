package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Proto is an IP protocol number; only TCP and UDP are used.
type Proto uint8

// The IANA numbers, which are the kernel's on every system (maps checks
// them against golang.org/x/sys, which this package must not import).
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// ParseProto accepts "tcp" or "udp" in any case.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}

// Port is a transport port with its protocol.
type Port struct {
	Num   uint16
	Proto Proto
}

func (p Port) String() string {
	if p.Proto == TCP {
		return strconv.Itoa(int(p.Num))
	}
	return strconv.Itoa(int(p.Num)) + "/" + p.Proto.String()
}

// ParsePort parses PORT, PORT/PROTO or (knockd's form) PORT:PROTO; TCP is
// the default protocol.
func ParsePort(s string) (Port, error) {
	num, proto, found := strings.Cut(s, "/")
	if !found {
		num, proto, found = strings.Cut(s, ":")
	}
	p := Port{Proto: TCP}
	if found {
		var err error
		if p.Proto, err = ParseProto(proto); err != nil {
			return Port{}, fmt.Errorf("port %q: %w", s, err)
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return Port{}, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return Port{}, fmt.Errorf("port %s out of range (1-65535)", strings.TrimSpace(num)) // as written: "00" too
	}
	p.Num = uint16(n)
	return p, nil
}

// ParsePorts parses a comma-separated list of ParsePort forms and ranges
// LOW-HIGH[/PROTO] (both ends included), each expanded to its ports.
func ParsePorts(s string) ([]Port, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty port list")
	}
	var ports []Port
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("empty item %d in port list %q", i+1, s)
		}
		if lo, rest, isRange := strings.Cut(f, "-"); isRange && lo != "" {
			r, err := parseRange(f, lo, rest)
			if err != nil {
				return nil, err
			}
			ports = append(ports, r...)
			continue
		}
		p, err := ParsePort(f)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// parseRange parses "LOW-HIGH[/PROTO]" (lo and rest are its two sides).
func parseRange(f, lo, rest string) ([]Port, error) {
	first, err := ParsePort(lo)
	if err != nil {
		return nil, fmt.Errorf("range %q: %w", f, err)
	}
	last, err := ParsePort(rest)
	if err != nil {
		return nil, fmt.Errorf("range %q: %w", f, err)
	}
	if strings.ContainsAny(lo, "/:") {
		return nil, fmt.Errorf("range %q: give the protocol after the range (LOW-HIGH/udp)", f)
	}
	if last.Num < first.Num {
		return nil, fmt.Errorf("range %q runs backwards", f)
	}
	out := make([]Port, 0, int(last.Num)-int(first.Num)+1)
	for n := int(first.Num); n <= int(last.Num); n++ {
		out = append(out, Port{Num: uint16(n), Proto: last.Proto})
	}
	return out, nil
}

// FormatPorts is the inverse of ParsePorts; runs of three or more ports of
// one protocol are written as ranges.
func FormatPorts(ports []Port) string {
	var s []string
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1].Proto == ports[i].Proto && ports[j+1].Num == ports[j].Num+1 {
			j++
		}
		if j-i >= 2 {
			r := strconv.Itoa(int(ports[i].Num)) + "-" + ports[j].String()
			s = append(s, r)
		} else {
			for k := i; k <= j; k++ {
				s = append(s, ports[k].String())
			}
		}
		i = j + 1
	}
	return strings.Join(s, ",")
}

// SortPorts is ports in the order a gate reads protected ports back in (TCP
// before UDP, each ascending), each once: two lists that protect the same
// ports sort to the same list.
func SortPorts(ports []Port) []Port {
	out := slices.Clone(ports)
	slices.SortFunc(out, func(a, b Port) int {
		if a.Proto != b.Proto {
			return cmp.Compare(protoRank(a.Proto), protoRank(b.Proto))
		}
		return cmp.Compare(a.Num, b.Num)
	})
	return slices.Compact(out)
}

// protoRank puts TCP first, then UDP, then anything else by number.
func protoRank(p Proto) int {
	switch p {
	case TCP:
		return 0
	case UDP:
		return 1
	}
	return 2 + int(p)
}

// ParseSequence parses a knock sequence: a port list, or "none" (no
// knocking: the service opens only by SPA), which is nil.
func ParseSequence(s string) ([]Port, error) {
	if strings.EqualFold(strings.TrimSpace(s), "none") {
		return nil, nil
	}
	return ParsePorts(s)
}

// FormatSequence is the inverse of ParseSequence.
func FormatSequence(seq []Port) string {
	if len(seq) == 0 {
		return "none"
	}
	return FormatPorts(seq)
}

// ParseProtect parses what a service protects: a port list, or "all" (every
// TCP and UDP port).
func ParseProtect(s string) (ports []Port, all bool, err error) {
	if strings.EqualFold(strings.TrimSpace(s), "all") {
		return nil, true, nil
	}
	ports, err = ParsePorts(s)
	return ports, false, err
}

// FormatProtect is the inverse of ParseProtect, the ports as given.
func FormatProtect(ports []Port, all bool) string {
	if all {
		return "all"
	}
	return FormatPorts(ports)
}
