/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Single-packet authorization: one UDP datagram to the gate's SPA port,
 * whose payload (big-endian fields) is, in version 1 (KG_SPA_LEN bytes):
 *
 *   0  version (1)      1  flags (0)      2  reserved (0, 2 bytes)
 *   4  key id (4)       8  timestamp, Unix milliseconds (8)
 *  16  nonce (16)      32  address to open (16; all zero: the source)
 *  48  tag: SipHash-2-4 of bytes 0-47 under the key, little-endian (8)
 *
 * and in version 2 (KG_SPA_LEN_REQUEST bytes), which asks for some of the
 * key's services rather than all of them, the same to byte 47, then
 *
 *  48  request: up to four services, each the FNV-1a hash of its name
 *      (4 bytes each; 0: none; at least one)
 *  64  tag: SipHash-2-4 of bytes 0-63 under the key, little-endian (8)
 *
 * checked here before any state is touched, in this order: length, version,
 * key, tag (always the whole hash: constant work), clock window, address,
 * services (a request outside the key's scope, or naming no service of the
 * gate's, is refused) and last the replay rule, a compare-and-swap that
 * moves the key's newest accepted timestamp forward (WireGuard's rule: no
 * replay cache, and two CPUs cannot both accept one packet). So a refused
 * packet changes nothing but a counter, and a forged one costs a parse, a
 * lookup and a hash. Mirrored by the spa Go package (the client, and the
 * tests).
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
	__u64 open_ns; /* for how long; 0: each service's window */
	__u32 key_id;
	__u32 services; /* bit s: open service s (live ones only) */
};

/* The live services of cfg whose name hashes to h (bit s for service s):
 * one at most, since the loader keeps the hashes unique. A BPF global
 * function, verified once; only packets with a valid tag call it. */
__attribute__((noinline)) __u32 spa_service_of(const struct config *cfg, __u32 h)
{
	if (!cfg)
		return 0;
	__u32 found = 0;
	for (int s = 0; s < KG_MAX_SERVICES; s++) {
		const struct service *sv = &cfg->services[s];
		if (sv->live && sv->name_hash == h)
			found |= 1u << s;
	}
	return found;
}

/* The services a version-2 packet's request names (bit s for service s), or
 * 0 when one of its hashes names no live service of cfg's. */
static __always_inline __u32 spa_requested(const struct config *cfg, const __u64 *req)
{
	__u32 want = 0;
#pragma unroll
	for (int i = 0; i < KG_SPA_REQUESTS; i++) {
		__u32 h = bpf_ntohl(((const __u32 *)req)[i]);
		if (!h)
			continue;
		__u32 found = spa_service_of(cfg, h);
		if (!found)
			return 0;
		want |= found;
	}
	return want;
}

/*
 * Check the SPA datagram pkt of ctx against cfg: COUNTER_SPA_ACCEPTED (and
 * out filled in) or the counter of the first check it failed.
 */
static __always_inline __u32 spa_verify(struct xdp_md *ctx, const struct config *cfg, const struct packet *pkt,
					struct spa_grant *out)
{
	__u32 len = pkt->payload_len;
	if (len != KG_SPA_LEN && len != KG_SPA_LEN_REQUEST)
		return COUNTER_SPA_BAD_LENGTH;
	int request = len == KG_SPA_LEN_REQUEST;
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
	__u64 m[KG_SPA_LEN_REQUEST / 8];
#pragma unroll
	for (int i = 0; i < KG_SPA_LEN / 8; i++)
		m[i] = w[i];
	m[7] = m[8] = 0;
	if (request) {
		if ((void *)(w + KG_SPA_LEN_REQUEST / 8) > end)
			return COUNTER_SPA_BAD_LENGTH;
		m[7] = w[7];
		m[8] = w[8];
	}
	const __u8 *b = (const __u8 *)m;
	if (b[0] != (request ? KG_SPA_VERSION_REQUEST : KG_SPA_VERSION) || b[1] != 0 || b[2] != 0 || b[3] != 0)
		return COUNTER_SPA_BAD_VERSION;
	__u32 id = bpf_ntohl(*(const __u32 *)(b + 4));
	const struct spa_key *key = bpf_map_lookup_elem(&spa_keys, &id);
	if (!key)
		return COUNTER_SPA_UNKNOWN_KEY;
	/* The whole hash and one compare of all 64 bits, whatever the bytes:
	 * the time taken tells nothing about how close a forgery came. */
	if (request) {
		if (siphash64(key->k[0], key->k[1], m) != sip_le64(m[8]))
			return COUNTER_SPA_BAD_TAG;
	} else if (siphash48(key->k[0], key->k[1], m) != sip_le64(m[6])) {
		return COUNTER_SPA_BAD_TAG;
	}

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
	/* The key's services, or the ones the packet asks for: each must be
	 * the key's and the gate's. */
	__u32 scope = key->services & cfg->live_services;
	if (request) {
		__u32 want = spa_requested(cfg, &m[6]);
		if (!want || want & ~scope)
			return COUNTER_SPA_BAD_SERVICE;
		scope = want;
	}
	if (!scope)
		return COUNTER_SPA_BAD_SERVICE;
	out->services = scope;

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
