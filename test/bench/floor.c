//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The XDP_DROP floor: knockgate's own parser, then drop. Whatever a gate in
 * XDP costs above this is the price of its decision, not of the path.
 */
#include "../../bpf/parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Frames seen, by enum parse_result: the benchmark cross-checks the
 * receiver's interface counters with these. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} parsed SEC(".maps");

/* Force the enum into BTF so bpf2go names the indices of parsed. */
const enum parse_result *unused_parse_result __attribute__((unused));

SEC("xdp")
int floor_drop(struct xdp_md *ctx)
{
	struct packet pkt;
	__u32 res = parse_packet(ctx, &pkt);
	/* Make the parsed fields observable so the compiler cannot drop the
	 * stores that knockgate needs for its lookups. */
	asm volatile("" : : "r"(&pkt) : "memory");
	__u64 *n = bpf_map_lookup_elem(&parsed, &res);
	/* Per-CPU slot and XDP runs with preemption off: a plain increment is
	 * exact without atomics (as in knockgate's counters). */
	if (n)
		*n += 1;
	return XDP_DROP;
}
