/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Single-packet authorization: one UDP datagram to the gate's SPA port,
 * whose payload (KG_SPA_LEN bytes, big-endian fields) is
 *
 *   0  version (1)      1  flags (0)      2  reserved (0, 2 bytes)
 *   4  key id (4)       8  timestamp, Unix milliseconds (8)
 *  16  nonce (16)      32  address to open (16; all zero: the source)
 *  48  tag: SipHash-2-4 of bytes 0-47 under the key, little-endian (8)
 *
 * checked here before any state is touched, in this order: length, version,
 * key, tag (always the whole hash: constant work), clock window, address,
 * and last the replay rule, a compare-and-swap that moves the key's newest
 * accepted timestamp forward (WireGuard's rule: no replay cache, and two
 * CPUs cannot both accept one packet). So a refused packet changes nothing
 * but a counter, and a forged one costs a parse, a lookup and a hash.
 * Mirrored by the spa Go package (the client, and the tests).
 */
#pragma once

#include "parsing.h"
#include "clock.h"
#include "siphash.h"

/* The gate's keys, by id: written by the Go side from the key file. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_SPA_KEYS);
	__type(key, __u32);
	__type(value, struct spa_key);
} spa_keys SEC(".maps");

/* Per key id: the newest timestamp (Unix ms) accepted. Made (0) before its
 * key, deleted after it, never rewritten by the Go side otherwise. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_SPA_KEYS);
	__type(key, __u32);
	__type(value, __u64);
} spa_last SEC(".maps");

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define spa_be64(x) (x)
#else
#define spa_be64(x) __builtin_bswap64(x)
#endif

/* What a valid packet asks for. */
struct spa_grant {
	struct source addr; /* the address to open */
	__u64 open_ns; /* for how long; 0: the gate's window */
	__u32 key_id;
};

/*
 * Check the SPA datagram pkt of ctx against cfg: COUNTER_SPA_ACCEPTED (and
 * out filled in) or the counter of the first check it failed.
 */
static __always_inline __u32 spa_verify(struct xdp_md *ctx, const struct config *cfg, const struct packet *pkt,
					struct spa_grant *out)
{
	if (pkt->payload_len != KG_SPA_LEN)
		return COUNTER_SPA_BAD_LENGTH;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	/* A bound the verifier can carry (a packet offset past 0xffff is never
	 * checked): no header chain in a real SPA datagram comes near it. */
	__u32 off = pkt->payload_off;
	if (off > 4096)
		return COUNTER_SPA_BAD_LENGTH;
	const __u64 *w = data + off;
	if ((void *)(w + KG_SPA_LEN / 8) > end)
		return COUNTER_SPA_BAD_LENGTH;
	/* Word loads straight from the packet: the payload is seldom 8-byte
	 * aligned, which the architectures XDP runs on fast take in stride. */
	__u64 m[KG_SPA_LEN / 8];
#pragma unroll
	for (int i = 0; i < KG_SPA_LEN / 8; i++)
		m[i] = w[i];
	const __u8 *b = (const __u8 *)m;
	if (b[0] != KG_SPA_VERSION || b[1] != 0 || b[2] != 0 || b[3] != 0)
		return COUNTER_SPA_BAD_VERSION;
	__u32 id = bpf_ntohl(*(const __u32 *)(b + 4));
	const struct spa_key *key = bpf_map_lookup_elem(&spa_keys, &id);
	if (!key)
		return COUNTER_SPA_UNKNOWN_KEY;
	/* The whole hash and one compare of all 64 bits, whatever the bytes:
	 * the time taken tells nothing about how close a forgery came. */
	if (siphash48(key->k[0], key->k[1], m) != sip_le64(m[6]))
		return COUNTER_SPA_BAD_TAG;

	__u64 ts = spa_be64(m[1]);
	__u64 now_ms = (__u64)((__s64)clock_tai() - cfg->tai_offset_ns) / 1000000;
	__u64 window = cfg->spa_window_ms;
	if (ts > now_ms + window || ts + window < now_ms)
		return COUNTER_SPA_CLOCK;

	if (m[4] == 0 && m[5] == 0) {
		out->addr = pkt->src;
	} else {
		const __u64 *src = (const __u64 *)pkt->src.addr;
		if ((m[4] != src[0] || m[5] != src[1]) && !(key->flags & SPA_KEY_ANY_ADDRESS))
			return COUNTER_SPA_BAD_ADDRESS;
		__builtin_memcpy(out->addr.addr, &m[4], 16);
	}
	out->open_ns = key->open_ns;
	out->key_id = id;

	/* Last, the one check that changes state: the timestamp must be newer
	 * than the key's last accepted, and moving it forward is what accepts. */
	__u64 *last = bpf_map_lookup_elem(&spa_last, &id);
	if (!last)
		return COUNTER_SPA_UNKNOWN_KEY; /* a key being added or removed */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u64 old = *(volatile __u64 *)last;
		if (ts <= old)
			return COUNTER_SPA_REPLAY;
		if (__sync_val_compare_and_swap(last, old, ts) == old)
			return COUNTER_SPA_ACCEPTED;
	}
	/* Four other CPUs moved it meanwhile: nobody honest sends that fast. */
	return COUNTER_SPA_REPLAY;
}
