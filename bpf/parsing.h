/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header-cursor parsing: every read is preceded by a bounds check against
 * data_end, so the verifier accepts it and a short frame can never be
 * read past its end.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "knockgate.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

#define MAX_VLAN_TAGS 2
/* Extension headers walked before giving up (and dropping): a longer chain
 * could otherwise hide the ports of a protected service. */
#define MAX_IPV6_EXT 6

#define IPV4_FRAG_OFFSET 0x1fff
#define IPV6_FRAG_OFFSET 0xfff8

enum parse_result {
	PARSE_L4, /* TCP or UDP with ports: judge it */
	PARSE_PASS, /* not ours to judge: non-IP, other L4, non-first fragment */
	PARSE_MALFORMED, /* claims to be IP but cannot be parsed safely */
	/* An ICMP error quoting a TCP or UDP packet: the packet's fields are
	 * the quoted one's, as its sender (this host, if it is real) sent it. */
	PARSE_ICMP_ERROR,
};

struct packet {
	struct source src;
	struct source dst;
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u8 proto;
	__u8 tcp_flags; /* byte 13 of the TCP header */
	/* UDP only: where its payload starts (bytes from the frame's start) and
	 * how long the UDP header says it is; 0xffff when that length does not
	 * fit the packet. For SPA, which reads the payload. */
	__u16 payload_off;
	__u16 payload_len;
};

/*
 * end is the end of the frame: every read is checked against it, which is
 * what the verifier needs. limit is the end of the IP packet (its length
 * field): bytes after it (Ethernet padding, or bytes an attacker on the link
 * appends) are not part of the packet the kernel will see, so a header that
 * only fits by reaching into them is malformed, not parsed.
 */
struct cursor {
	void *start; /* the frame's first byte */
	void *pos;
	void *end;
	void *limit;
};

/* Does a header ending at hdr_end lie inside both the frame and the packet? */
static __always_inline int fits(const struct cursor *c, const void *hdr_end)
{
	return hdr_end <= c->end && hdr_end <= c->limit;
}

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ipv6_opt_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr_min {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline int parse_l4(struct cursor *c, __u8 proto, struct packet *pkt)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c->pos;
		/* The whole fixed header: a first fragment too short to hold the
		 * flags cannot be judged (the tiny-fragment trick). */
		if (!fits(c, tcp + 1))
			return PARSE_MALFORMED;
		pkt->proto = IPPROTO_TCP;
		pkt->sport = bpf_ntohs(tcp->source);
		pkt->dport = bpf_ntohs(tcp->dest);
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		return PARSE_L4;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = c->pos;
		if (!fits(c, udp + 1))
			return PARSE_MALFORMED;
		pkt->proto = IPPROTO_UDP;
		pkt->sport = bpf_ntohs(udp->source);
		pkt->dport = bpf_ntohs(udp->dest);
		pkt->tcp_flags = 0;
		pkt->payload_off = (void *)(udp + 1) - c->start;
		__u32 len = bpf_ntohs(udp->len);
		pkt->payload_len = len >= sizeof(*udp) && fits(c, (void *)udp + len) ? len - sizeof(*udp) : 0xffff;
		return PARSE_L4;
	}
	return PARSE_PASS;
}

/* addr as v4-mapped IPv6 (::ffff:a.b.c.d), the form every key uses. */
static __always_inline void map_v4(__u8 *addr, const __be32 *v4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], v4, 4);
}

/*
 * The packet an ICMP error quotes (an IP header and the first 8 bytes
 * after it, RFC 792 and 4443): its addresses, ports and protocol go into
 * pkt, as they were when it was sent. Only TCP and UDP are ours; a quote cut
 * short of its ports is malformed.
 */
static __always_inline int parse_quoted(struct cursor *c, struct packet *pkt, int v6)
{
	__u8 proto;
	if (v6) {
		struct ipv6hdr *ip6 = c->pos;
		if (!fits(c, ip6 + 1))
			return PARSE_MALFORMED;
		__builtin_memcpy(pkt->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(pkt->dst.addr, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		c->pos = ip6 + 1;
	} else {
		struct iphdr *ip = c->pos;
		if (!fits(c, ip + 1))
			return PARSE_MALFORMED;
		__u32 hdr_len = ip->ihl * 4;
		if (hdr_len < sizeof(*ip) || !fits(c, c->pos + hdr_len))
			return PARSE_MALFORMED;
		map_v4(pkt->src.addr, &ip->saddr);
		map_v4(pkt->dst.addr, &ip->daddr);
		proto = ip->protocol;
		c->pos += hdr_len;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PARSE_PASS;
	__be16 *ports = c->pos;
	if (!fits(c, ports + 2))
		return PARSE_MALFORMED;
	pkt->proto = proto;
	pkt->sport = bpf_ntohs(ports[0]);
	pkt->dport = bpf_ntohs(ports[1]);
	pkt->tcp_flags = 0;
	return PARSE_ICMP_ERROR;
}

/* ICMP and ICMPv6: an error quoting a packet is judged by the flow it
 * quotes; everything else (echo, neighbour discovery, ...) passes. */
static __always_inline int parse_icmp(struct cursor *c, struct packet *pkt, int v6)
{
	__u8 *icmp = c->pos;
	if (!fits(c, icmp + 8))
		return PARSE_MALFORMED;
	__u8 type = icmp[0];
	int error = v6 ? type >= 1 && type <= 4 : type == 3 || type == 4 || type == 11 || type == 12;
	if (!error)
		return PARSE_PASS;
	c->pos = icmp + 8;
	return parse_quoted(c, pkt, v6);
}

static __always_inline int parse_ipv4(struct cursor *c, struct packet *pkt)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return PARSE_MALFORMED;
	__u32 hdr_len = ip->ihl * 4;
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	if (hdr_len < sizeof(*ip) || (tot_len && tot_len < hdr_len))
		return PARSE_MALFORMED;
	if (c->pos + hdr_len > c->end)
		return PARSE_MALFORMED;
	/* 0: a GRO aggregate over 64 KiB (BIG TCP; generic mode sees those),
	 * bounded by the frame alone. The kernel drops any other such packet. */
	if (tot_len) {
		c->limit = c->pos + tot_len;
		if (c->limit > c->end)
			return PARSE_MALFORMED; /* truncated: the kernel drops it too */
	}

	map_v4(pkt->src.addr, &ip->saddr);
	map_v4(pkt->dst.addr, &ip->daddr);

	/* A non-first fragment carries no ports; without its first fragment
	 * (which we judge) it cannot be reassembled, so let it pass. */
	if (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET))
		return PARSE_PASS;

	c->pos += hdr_len;
	if (ip->protocol == IPPROTO_ICMP)
		return parse_icmp(c, pkt, 0);
	return parse_l4(c, ip->protocol, pkt);
}

static __always_inline int parse_ipv6(struct cursor *c, struct packet *pkt)
{
	struct ipv6hdr *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end)
		return PARSE_MALFORMED;
	/* A v4-mapped source would share the key (grant, allow entry) of an
	 * IPv4 address; no real IPv6 packet comes from one. */
	__u32 *w = (__u32 *)&ip6->saddr;
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff))
		return PARSE_MALFORMED;
	__builtin_memcpy(pkt->src.addr, &ip6->saddr, 16);
	__builtin_memcpy(pkt->dst.addr, &ip6->daddr, 16);
	__u8 nexthdr = ip6->nexthdr;
	c->pos = ip6 + 1;
	/* 0: a jumbogram or a BIG TCP GRO aggregate, bounded by the frame
	 * alone; the kernel cuts any other such packet to its bare header. */
	if (ip6->payload_len) {
		c->limit = c->pos + bpf_ntohs(ip6->payload_len);
		if (c->limit > c->end)
			return PARSE_MALFORMED; /* truncated: the kernel drops it too */
	}

#pragma unroll
	for (int i = 0; i <= MAX_IPV6_EXT; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_opt_hdr_min *opt = c->pos;
			if (!fits(c, opt + 1))
				return PARSE_MALFORMED;
			nexthdr = opt->nexthdr;
			c->pos += (opt->hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr_min *frag = c->pos;
			if (!fits(c, frag + 1))
				return PARSE_MALFORMED;
			if (frag->frag_off & bpf_htons(IPV6_FRAG_OFFSET))
				return PARSE_PASS;
			nexthdr = frag->nexthdr;
			c->pos = frag + 1;
			break;
		}
		case IPPROTO_ICMPV6:
			return parse_icmp(c, pkt, 1);
		default:
			return parse_l4(c, nexthdr, pkt);
		}
	}
	/* Still inside the extension chain: we cannot see the ports. */
	return PARSE_MALFORMED;
}

/* Parse the frame from data to end (an XDP or a tc program's packet). */
static __always_inline int parse_frame(void *data, void *end, struct packet *pkt)
{
	struct cursor c = {
		.start = data,
		.pos = data,
		.end = end,
		.limit = end,
	};
	struct ethhdr *eth = c.pos;
	if ((void *)(eth + 1) > c.end)
		return PARSE_PASS; /* not even Ethernet: not IP, not ours */
	__be16 proto = eth->h_proto;
	c.pos = eth + 1;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vlan = c.pos;
		if ((void *)(vlan + 1) > c.end)
			return PARSE_MALFORMED;
		proto = vlan->proto;
		c.pos = vlan + 1;
	}

	/* A third tag: the kernel could still deliver it through nested VLAN
	 * devices, and we cannot see its ports, so fail closed. */
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PARSE_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(&c, pkt);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(&c, pkt);
	return PARSE_PASS;
}

static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt)
{
	return parse_frame((void *)(long)ctx->data, (void *)(long)ctx->data_end, pkt);
}
