package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/knockgate/knockgate/policy"
	"github.com/knockgate/knockgate/spa"
)

// udpPayload is what a UDP knock carries; the gate only looks at the port.
var udpPayload = []byte("knock")

func knockCommand() *command {
	var (
		delay                   string
		v4, v6                  bool
		spaKey, keyID, openAddr string
		spaPort                 uint16
		check, services         string
	)
	fs := newFlags("knock")
	fs.StringVar(&delay, "delay", "100ms", "wait `DURATION` between knocks")
	fs.BoolVarP(&v4, "ipv4", "4", false, "resolve HOST to an IPv4 address only")
	fs.BoolVarP(&v6, "ipv6", "6", false, "resolve HOST to an IPv6 address only")
	fs.StringVar(&spaKey, "spa-key", "", "first send one SPA packet made with the key in `FILE` (a key-file line; mode 600) or given as 32 hex digits")
	fs.StringVar(&keyID, "key-id", "", "the SPA key's `ID` (needed with hex, or with a file of several keys)")
	fs.Uint16Var(&spaPort, "spa-port", spa.DefaultPort, "the gate's SPA `PORT` (UDP)")
	fs.StringVar(&openAddr, "open-address", "", "ask the gate to open `ADDR` instead of the packet's source (a key with any-address; behind NAT, your public address)")
	fs.StringVar(&services, "service", "", fmt.Sprintf("ask the gate for the services `NAME[,NAME...]` of the key's only (default: all of them); more than %d take several packets", spa.MaxRequest))
	fs.StringVar(&check, "check", "", "afterwards, connect to TCP `PORT` of HOST to check that it opened (an error says why it may not have)")
	return &command{
		name:     "knock",
		synopsis: "HOST [PORT[/tcp|/udp]...] [--spa-key FILE|HEX [--key-id N] [--spa-port P] [--open-address ADDR] [--service NAME,...]] [--check PORT] [--delay 100ms] [-4|-6]",
		summary:  "knock on a gate (a client, no gate needed here)",
		help: "Knock on HOST: for each PORT in order, one TCP SYN (a connection attempt\n" +
			"abandoned before the SYN could be sent again) or one UDP datagram. PORT:PROTO\n" +
			"(knockd's form) is accepted too.\n" +
			"With --spa-key, one single-packet authorization datagram goes first: signed with\n" +
			"the key, stamped with this machine's clock (the gate takes it within its window,\n" +
			"30 s by default), asking to open the address it comes from as the gate sees it\n" +
			"(so it works from behind NAT), or --open-address. The packet opens every service\n" +
			"the key may open, or with --service only those named (a version-2 packet; the\n" +
			"gate refuses the packet if one is not the key's). The gate never answers; --check\n" +
			"tries the port afterwards.",
		minArgs: 1, maxArgs: -1,
		flags: fs,
		run: func(e *env, args []string) error {
			var ports []policy.Port
			for _, a := range args[1:] {
				p, err := policy.ParsePorts(a)
				if err != nil {
					return &usageError{err}
				}
				ports = append(ports, p...)
			}
			if len(ports) == 0 && spaKey == "" {
				return usagef("knock: give PORTs to knock on, or --spa-key")
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
			var key spa.Key
			var open netip.Addr
			if spaKey != "" {
				if key, err = clientKey(spaKey, keyID); err != nil {
					return err
				}
				if spaPort == 0 {
					return usagef("--spa-port: 0 is no port")
				}
				if openAddr != "" {
					if open, err = netip.ParseAddr(openAddr); err != nil || open.Zone() != "" || open.IsUnspecified() {
						return usagef("--open-address: bad address %q", openAddr)
					}
				}
			} else if fs.Changed("key-id") || fs.Changed("spa-port") || fs.Changed("open-address") || fs.Changed("service") {
				return usagef("--key-id, --spa-port, --open-address and --service go with --spa-key")
			}
			var request []string
			if fs.Changed("service") {
				if request, err = spa.ParseServices(services); err != nil {
					return &usageError{fmt.Errorf("--service: %w", err)}
				}
			}
			var checkPort uint16
			if check != "" {
				n, err := strconv.ParseUint(strings.TrimSuffix(check, "/tcp"), 10, 16)
				if err != nil || n == 0 {
					return usagef("--check: bad TCP port %q", check)
				}
				checkPort = uint16(n)
			}
			addr, err := resolve(e.ctx, args[0], v4, v6)
			if err != nil {
				return err
			}
			var sent time.Time
			if spaKey != "" {
				if sent, err = sendSPA(e, addr, spaPort, &key, open, request); err != nil {
					return err
				}
			}
			for i, p := range ports {
				if i > 0 || spaKey != "" {
					if err := sleep(e.ctx, d); err != nil {
						return err
					}
				}
				if err := knock(e.ctx, addr, p); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "knock %s %d/%s\n", addr, p.Num, p.Proto)
			}
			if checkPort != 0 {
				if err := checkOpen(e.ctx, addr, checkPort, spaKey != "", sent); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "open %s %d/tcp\n", addr, checkPort)
			}
			return nil
		},
	}
}

// clientKey is the key --spa-key names: 32 hex digits (with --key-id), or a
// key file, from which --key-id picks (needless when it holds one key).
func clientKey(arg, idText string) (spa.Key, error) {
	var id uint32
	if idText != "" {
		n, err := spa.ParseID(idText)
		if err != nil {
			return spa.Key{}, usagef("--key-id: %w", err)
		}
		id = n
	}
	if spa.LooksLikeSecret(arg) {
		// A key, not a file: never repeated in an error.
		secret, err := spa.ParseSecret(arg)
		if err != nil {
			return spa.Key{}, usagef("--spa-key: %d hex digits, want 32 (16 bytes)", len(arg))
		}
		if id == 0 {
			return spa.Key{}, usagef("--spa-key: a key given in hex needs --key-id")
		}
		return spa.Key{ID: id, Secret: secret, Name: "key"}, nil
	}
	keys, err := spa.ReadKeyFile(arg, spa.OwnerOnly)
	if err != nil {
		return spa.Key{}, &inputError{err}
	}
	for _, k := range keys {
		if k.ID == id || (id == 0 && len(keys) == 1) {
			return k, nil
		}
	}
	switch {
	case len(keys) == 0:
		return spa.Key{}, &inputError{fmt.Errorf("key file %s holds no key", arg)}
	case id == 0:
		return spa.Key{}, usagef("key file %s holds %d keys: pick one with --key-id", arg, len(keys))
	}
	return spa.Key{}, &inputError{fmt.Errorf("key file %s holds no key with id %d", arg, id)}
}

// sendSPA sends SPA datagrams for key to port of addr, and says when the
// first was stamped: one asking for every service of the key (version 1),
// or asking for the services of request, spa.MaxRequest a packet (version
// 2), each stamped 1 ms after the one before (the gate accepts a key's
// packets in increasing time only) and sent once that time has come.
func sendSPA(e *env, addr netip.Addr, port uint16, key *spa.Key, open netip.Addr, request []string) (time.Time, error) {
	if err := checkClock(time.Now()); err != nil {
		return time.Time{}, err
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
	if err != nil {
		return time.Time{}, fmt.Errorf("send SPA to %s port %d: %w", addr, port, explainSend(addr, err))
	}
	defer conn.Close()
	var first, last time.Time
	for i := 0; i == 0 || i < len(request); i += spa.MaxRequest {
		p, err := spa.New(key.ID, open)
		if err != nil {
			return time.Time{}, err
		}
		if !last.IsZero() {
			if next := last.Truncate(time.Millisecond).Add(time.Millisecond); p.Time.Before(next) {
				p.Time = next
				if err := sleep(e.ctx, time.Until(next)); err != nil {
					return time.Time{}, err
				}
			}
		}
		asked := ""
		if len(request) > 0 {
			names := request[i:min(i+spa.MaxRequest, len(request))]
			p.Request = spa.RequestOf(names)
			asked = " services " + strings.Join(names, ",")
		}
		if _, err := conn.Write(p.Marshal(key.Secret)); err != nil {
			return time.Time{}, fmt.Errorf("send SPA to %s port %d: %w", addr, port, explainSend(addr, err))
		}
		fmt.Fprintf(e.stdout, "spa %s %d/udp key %d (%s)%s\n", addr, port, key.ID, key.Name, asked)
		if first.IsZero() {
			first = p.Time
		}
		last = p.Time
	}
	return first, nil
}

// checkOpen connects to port of addr for a few seconds. When it stays shut
// after an SPA packet, the error lists what the gate refuses packets for,
// the clock first: this machine's time is what the packet carried.
func checkOpen(ctx context.Context, addr netip.Addr, port uint16, viaSPA bool, sent time.Time) error {
	const within = 3 * time.Second
	deadline := time.Now().Add(within)
	target := netip.AddrPortFrom(addr, port).String()
	var last error
	for time.Now().Before(deadline) {
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		conn, err := d.DialContext(ctx, "tcp", target)
		if err == nil {
			conn.Close()
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	last = explainSend(addr, last)
	if !viaSPA {
		return fmt.Errorf("port %d of %s did not open within %s: %w", port, addr, within, last)
	}
	return fmt.Errorf("port %d of %s did not open within %s of the SPA packet (%w). %s "+
		"Otherwise check the key, its id, --spa-port, and that the port is a service's the key may open (and --service asks for it). "+
		"The gate's operator can tell which: \"knockgate status\" there shows the gate's clock and counts refused packets by reason "+
		"(spa_clock, spa_bad_tag, spa_unknown_key, spa_replay, spa_bad_address, spa_bad_service)",
		port, addr, within, last, clockHelp(sent))
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
		return netip.Addr{}, explainLookup(host, err)
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

// knock sends one knock to port p of addr: a datagram, or exactly one SYN
// (knock_tcp_*.go: how differs by system).
func knock(ctx context.Context, addr netip.Addr, p policy.Port) error {
	var err error
	if p.Proto == policy.UDP {
		err = knockUDP(addr, p.Num)
	} else {
		err = knockTCP(ctx, addr, p.Num)
	}
	if err != nil {
		return fmt.Errorf("knock %s %d/%s: %w", addr, p.Num, p.Proto, explainSend(addr, err))
	}
	return nil
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
