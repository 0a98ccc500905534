// Package bench compares knockgate with the knock gates users would pick
// instead (nftables sets with timeouts, iptables' recent match) and with two
// floors (no filter; a bare XDP program that parses and drops), under a SYN
// flood made in the kernel by an XDP program run in live-frame mode or, where
// the kernel refuses that, sent from an AF_PACKET socket.
package bench

//go:generate go tool bpf2go -tags linux -target bpfel flood flood.c -- -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel -type parse_result floor floor.c -- -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel -type parse_result probe probe.c -- -Wall -Werror
