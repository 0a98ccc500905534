//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The flood generator. The benchmark runs it with BPF_PROG_RUN in live-frame
 * mode (BPF_F_TEST_XDP_LIVE_FRAMES) on a context naming the sending veth, so
 * each XDP_TX puts a real frame on the wire towards the gate under test.
 *
 * The kernel copies the template frame into its page pool once and then
 * recycles the pages without restoring their contents, so every run sees the
 * frame as the previous run on that page left it. The program therefore
 * rewrites the source address and patches both checksums incrementally from
 * whatever the frame holds now (RFC 1624), which is correct whatever history
 * the page has.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the benchmark before each flood (globals in .data, written through
 * the map that backs them). Source n is first_saddr + n % nsources; with
 * nports > 1, the frame of source index i (i = n % nsources) goes to port
 * first_dport + i % nports (so each source always sends to the same port). */
volatile __u32 first_saddr = 0xc6130001; /* 198.19.0.1, host byte order */
volatile __u32 nsources = 1;
volatile __u32 first_dport = 22; /* host byte order */
volatile __u32 nports = 1;

/* Frames built. BPF_PROG_RUN runs the program on one CPU, so a plain
 * increment is exact. */
volatile __u64 sent = 0;

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 32-bit field seen as two
 * 16-bit words. The one's-complement sum does not care which byte order the
 * words are loaded in, as long as check, from and to are loaded alike. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;
	sum += (~from & 0xffff) + (~from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	return (__u16)~csum_fold(sum);
}

/* The same for a 16-bit field. */
static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~check;
	sum += (__u16)~from;
	sum += to;
	return (__u16)~csum_fold(sum);
}

SEC("xdp")
int flood(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	/* The template is Ethernet + a 20-byte IPv4 header + TCP or UDP. */
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return XDP_ABORTED;
	__u16 *l4check, *dport;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return XDP_ABORTED;
		l4check = &tcp->check;
		dport = &tcp->dest;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_ABORTED;
		l4check = &udp->check;
		dport = &udp->dest;
	} else {
		return XDP_ABORTED;
	}

	__u64 n = sent;
	sent = n + 1;
	__u32 span = nsources;
	__u32 idx = span > 1 ? (__u32)n % span : 0;
	__u32 to = bpf_htonl(first_saddr + idx);
	__u32 from = ip->saddr;

	ip->saddr = to;
	ip->check = csum_replace4(ip->check, from, to);
	/* The TCP and UDP checksums cover the pseudo-header, source address
	 * included (the template's UDP checksum is never 0, "none"). */
	*l4check = csum_replace4(*l4check, from, to);
	__u32 ports = nports;
	if (ports > 1) {
		/* Then the port, the same way (TCP and UDP checksums cover it). */
		__u16 pto = bpf_htons(first_dport + idx % ports);
		__u16 pfrom = *dport;
		if (pfrom != pto) {
			*dport = pto;
			*l4check = csum_replace2(*l4check, pfrom, pto);
		}
	}
	return XDP_TX;
}
