/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What the parse-then-verdict programs (floor.c, probe.c) share: the count
 * of frames seen, by enum parse_result, which the benchmark cross-checks
 * with the receiver's interface counters.
 */
#ifndef KNOCKGATE_BENCH_PARSED_H
#define KNOCKGATE_BENCH_PARSED_H

#include "../../bpf/parsing.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} parsed SEC(".maps");

/* Force the enum into BTF so bpf2go names the indices of parsed. */
const enum parse_result *unused_parse_result __attribute__((unused));

/* Count a frame parsed as res. Per-CPU slot and XDP runs with preemption
 * off: a plain increment is exact without atomics (as in knockgate's
 * counters). */
static __always_inline void count_parsed(__u32 res)
{
	__u64 *n = bpf_map_lookup_elem(&parsed, &res);
	if (n)
		*n += 1;
}

#endif
