//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The XDP_DROP floor: knockgate's own parser, then drop. Whatever a gate in
 * XDP costs above this is the price of its decision, not of the path.
 */
#include "parsed.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int floor_drop(struct xdp_md *ctx)
{
	struct packet pkt;
	__u32 res = parse_packet(ctx, &pkt);
	/* Make the parsed fields observable so the compiler cannot drop the
	 * stores that knockgate needs for its lookups. */
	asm volatile("" : : "r"(&pkt) : "memory");
	count_parsed(res);
	return XDP_DROP;
}
