//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * A test-only XDP program: the C SipHash-2-4 of ../siphash.h run by the
 * kernel on input the Go tests choose. The frame is the 16-byte key, one
 * length byte (0-63) and 63 bytes of which the first length are hashed;
 * the hash overwrites the first 8 bytes, little-endian, as the reference
 * writes it. For a length of 48, bytes 8-15 get siphash48's result too:
 * the unrolled form the program itself runs.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "../siphash.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define IN_LEN (16 + 1 + 63)

SEC("xdp")
int siphash(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	if (data + IN_LEN > end)
		return XDP_ABORTED;
	__u64 k0 = 0, k1 = 0;
	for (int i = 7; i >= 0; i--) {
		k0 = (k0 << 8) | data[i];
		k1 = (k1 << 8) | data[8 + i];
	}
	__u64 words[8] = {};
	__builtin_memcpy(words, data + 17, 63);
	__u8 len = data[16];
	__u64 h = siphash_bytes(k0, k1, (const __u8 *)words, len);
	for (int i = 0; i < 8; i++)
		data[i] = h >> (8 * i);
	if (len == 48) {
		__u64 h48 = siphash48(k0, k1, words);
		for (int i = 0; i < 8; i++)
			data[8 + i] = h48 >> (8 * i);
	}
	return XDP_PASS;
}
