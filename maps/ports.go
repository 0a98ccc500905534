// Package maps is the typed Go API over every map of the knockgate XDP
// program: configuration, allow list, knock progress, grants, counters and
// events. It owns the encoding between Go values and the C ABI generated
// from bpf/knockgate.h.
package maps

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Proto is an IP protocol number; only TCP and UDP are used.
type Proto uint8

const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
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
		return Port{}, fmt.Errorf("port %d out of range (1-65535)", n)
	}
	p.Num = uint16(n)
	return p, nil
}

// ParsePorts parses a comma-separated list of ParsePort forms.
func ParsePorts(s string) ([]Port, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty port list")
	}
	var ports []Port
	for _, f := range strings.Split(s, ",") {
		p, err := ParsePort(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// FormatPorts is the inverse of ParsePorts.
func FormatPorts(ports []Port) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
