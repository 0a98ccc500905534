//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A probe of the memory floor: knockgate's parser, one 8-byte read from a
 * table at a line hashed from the source, then a fixed verdict. It keeps no
 * state and decides nothing: whatever a gate that reads per-source state in
 * a table of that size costs, it costs at least this. bench-scale measures
 * it beside knockgate to say which of the scale bounds any design
 * reading one line per packet could meet on the machine at hand.
 */
#include "parsed.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader: the table is 1 << line_bits lines of 64 bytes (eight
 * of its 8-byte entries each); pass: XDP_PASS rather than XDP_DROP. */
const volatile __u32 line_bits = 1;
const volatile __u32 pass = 0;

/* The table; its max_entries is set at load, 8 entries a line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} lines SEC(".maps");

SEC("xdp")
int probe(struct xdp_md *ctx)
{
	/* Zeroed: the verifier cannot tell which fields a parse that
	 * returned PARSE_L4 wrote. */
	struct packet pkt = {};
	__u32 res = parse_packet(ctx, &pkt);
	count_parsed(res);
	if (res == PARSE_L4) {
		/* Multiplicative hashing of the address's last word (an IPv4
		 * source's whole address), its top bits the line. */
		__u32 a;
		__builtin_memcpy(&a, pkt.src.addr + 12, sizeof(a));
		__u32 line = (a * 0x9e3779b1u) >> ((32 - line_bits) & 31);
		__u32 idx = line << 3;
		__u64 *v = bpf_map_lookup_elem(&lines, &idx);
		if (v) {
			/* The read itself, which nothing may optimise away. */
			__u64 x = *(volatile __u64 *)v;
			asm volatile("" : : "r"(x));
		}
	}
	return pass ? XDP_PASS : XDP_DROP;
}
