//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A test-only XDP program: ../sha256.h's compression (schedule, rounds) run by the
 * kernel on blocks the Go tests choose. The frame is a state (8 words), a
 * count of blocks (a word, at most MAX_BLOCKS) and that many blocks of 16
 * words, all in host order; the state after the blocks overwrites the
 * first 8 words.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "../sha256.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_BLOCKS 32

struct frame {
	struct sha256_state st;
	__u32 n;
	__u32 pad;
	struct sha256_block blocks[MAX_BLOCKS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sha256_sched);
} sched SEC(".maps");

SEC("xdp")
int sha256(struct xdp_md *ctx)
{
	struct frame *f = (void *)(long)ctx->data;
	if ((void *)(f + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__u32 zero = 0;
	struct sha256_sched *sc = bpf_map_lookup_elem(&sched, &zero);
	if (!sc)
		return XDP_ABORTED;
	struct sha256_state st = f->st;
	for (int i = 0; i < MAX_BLOCKS; i++) {
		if (i >= f->n)
			break;
		struct sha256_block b = f->blocks[i];
		sha256_schedule(&b, sc);
		sha256_rounds(&st, sc);
	}
	f->st = st;
	return XDP_PASS;
}
