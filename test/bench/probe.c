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
 * of its 8-byte entries each); pass: XDP_PASS rather than XDP_DROP;
 * filter_bits, if not 0: first one 8-byte word of a filter of
 * 1 << filter_bits words (a line of a table of the hint bitmap's kind,
 * which a gate reads before a grant to keep a stranger's check small). */
const volatile __u32 line_bits = 1;
const volatile __u32 pass = 0;
const volatile __u32 filter_bits = 0;

/* The table; its max_entries is set at load, 8 entries a line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} lines SEC(".maps");

/* The filter: max_entries set at load (1 when filter_bits is 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filter SEC(".maps");

/* One 8-byte read at idx of m, which nothing may optimise away; its value,
 * or 0. */
static __always_inline __u64 read_at(void *m, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(m, &idx);
	if (!v)
		return 0;
	__u64 x = *(volatile __u64 *)v;
	asm volatile("" : : "r"(x));
	return x;
}

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
		/* The filter's word from another product, independent of
		 * the line's; the line read after it, as a gate whose filter
		 * lets the source through would (a CPU may overlap the two,
		 * as it may in the gate, predicting that branch). */
		if (filter_bits)
			read_at(&filter, (a * 0x85ebca6bu) >> ((32 - filter_bits) & 31));
		__u32 line = (a * 0x9e3779b1u) >> ((32 - line_bits) & 31);
		read_at(&lines, line << 3);
	}
	return pass ? XDP_PASS : XDP_DROP;
}
