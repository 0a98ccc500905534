/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fwknop's clients: a datagram to the SPA port of fwknop's form (see
 * KG_FWKNOP_MIN_LEN in knockgate.h) is taken only if its HMAC-SHA256
 * verifies under one of the HMAC keys of the access.conf that run reads,
 * tried in turn. Each key is two SHA-256 states (fwknop_keys), so a
 * datagram costs, per key, the compressions of its own blocks (at most
 * KG_FWKNOP_BLOCKS) and one for the outer hash: the HMAC key is never read.
 * A datagram no key verifies is dropped and counted here, and nothing of
 * it reaches user space; so is one whose HMAC was seen before (fwknop_replay:
 * a replay, from whatever source). A verified one is handed to run on the
 * fwknop_ring ring buffer, which decrypts it and decides (package fwknop),
 * and grants through the fwknop_grant program below.
 *
 * Included by knockgate.c after grant_addr, struct event_about and the
 * counters, which the grant program uses as the SPA path does.
 */
#pragma once

#include "parsing.h"
#include "sha256.h"

/* The HMAC keys, as states (the first fwknop_count of them). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KG_FWKNOP_KEYS);
	__type(key, __u32);
	__type(value, struct fwknop_key);
} fwknop_keys SEC(".maps");

/* How many of fwknop_keys are in use; 0: fwknop datagrams are not taken
 * (counted as spa_bad_length, as before there were any). Raised after a
 * key is written, lowered before one is removed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fwknop_count SEC(".maps");

/* The HMACs of the datagrams handed to run: a datagram is handed over once,
 * ever. Inserted here (BPF_NOEXIST: of two CPUs with one datagram, one
 * wins); run marks each with when it may forget it, once its timestamp is
 * out of the window for good; a fleet's members add each other's.
 * A plain hash, preallocated: when it is full a datagram is refused, never
 * an entry forgotten early. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_FWKNOP_SEEN);
	__type(key, struct fwknop_digest);
	__type(value, struct fwknop_seen);
} fwknop_replay SEC(".maps");

/* Verified datagrams on their way to run. Apart from the event ring, so
 * neither crowds out the other. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KG_FWKNOP_RING_BYTES);
} fwknop_ring SEC(".maps");

/* A datagram being verified: its HMAC'd text padded as SHA-256 blocks, and
 * its tag. Per CPU: too big for the stack, and XDP does not migrate. */
struct fwknop_scratch {
	struct sha256_block blocks[KG_FWKNOP_BLOCKS];
	/* Their schedules: made once a datagram, whatever the keys. */
	struct sha256_sched sched[KG_FWKNOP_BLOCKS];
	__u32 want[8]; /* the tag as words */
	struct fwknop_digest digest; /* the tag as bytes */
	__u8 tag[KG_FWKNOP_TAG_LEN + 5];
	/* A key's hash in the making: here rather than on the stack, which
	 * the compression function needs. */
	struct sha256_state st;
	struct sha256_block outer; /* the outer hash's block, and its schedule */
	struct sha256_sched osched;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fwknop_scratch);
} fwknop_scratch SEC(".maps");

const struct fwknop_record *unused_fwknop_record __attribute__((unused));
const struct fwknop_grant_req *unused_fwknop_grant_req __attribute__((unused));

/* base64's alphabet, decoded, plus one; 0: not in it. */
static const __u8 fwknop_b64[256] = {
	['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8,
	['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16,
	['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
	['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32,
	['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40,
	['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
	['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
	['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
};

/* Is pkt, a datagram to the SPA port, of fwknop's form (by its length)? */
static __always_inline int fwknop_form(const struct packet *pkt)
{
	return pkt->payload_len >= KG_FWKNOP_MIN_LEN && pkt->payload_len <= KG_FWKNOP_MAX_LEN;
}

/* A base64 character's 6 bits, or 0xff (not base64). */
static __always_inline __u32 fwknop_b64_bits(__u8 c)
{
	return (__u8)(fwknop_b64[c] - 1);
}

/*
 * Decode the tag's KG_FWKNOP_TAG_LEN characters into s->digest and
 * s->want: 0 unless each is base64's and the two bits the last one has
 * beyond the HMAC's 256 are zero (fwknopd compares the text: no other
 * spelling of an HMAC verifies). Four characters to three bytes a turn,
 * with no branch; not unrolled, which would hoist every load and spill
 * past the stack the hash needs below it. A BPF global function.
 */
__attribute__((noinline)) int fwknop_decode_tag(struct fwknop_scratch *s)
{
	if (!s)
		return 0;
	__u32 bad = 0;
#pragma clang loop unroll(disable)
	for (int g = 0; g < KG_FWKNOP_TAG_LEN / 4; g++) {
		__u32 c0 = fwknop_b64_bits(s->tag[4 * g]), c1 = fwknop_b64_bits(s->tag[4 * g + 1]);
		__u32 c2 = fwknop_b64_bits(s->tag[4 * g + 2]), c3 = fwknop_b64_bits(s->tag[4 * g + 3]);
		bad |= c0 | c1 | c2 | c3;
		__u32 v = c0 << 18 | c1 << 12 | c2 << 6 | c3;
		s->digest.b[3 * g] = v >> 16;
		s->digest.b[3 * g + 1] = v >> 8;
		s->digest.b[3 * g + 2] = v;
	}
	/* The last three characters: 18 bits, two bytes and the spare two. */
	__u32 c0 = fwknop_b64_bits(s->tag[40]), c1 = fwknop_b64_bits(s->tag[41]), c2 = fwknop_b64_bits(s->tag[42]);
	bad |= c0 | c1 | c2;
	__u32 v = c0 << 12 | c1 << 6 | c2;
	s->digest.b[30] = v >> 10;
	s->digest.b[31] = v >> 2;
	if (v & 3)
		bad |= 0x80;
#pragma unroll
	for (int i = 0; i < 8; i++)
		s->want[i] = bpf_ntohl(((const __u32 *)s->digest.b)[i]);
	return !(bad & 0x80);
}

struct fwknop_loop {
	__u32 nblocks;
	__u32 found; /* the key's index plus one; 0: none yet */
};

/* Does key i's HMAC of the scratch's blocks match its tag? A bpf_loop
 * callback: 1 stops the loop (a key matched, or no scratch). */
static long fwknop_try_key(__u64 i, void *data)
{
	struct fwknop_loop *lc = data;
	__u32 zero = 0, idx = i;
	struct fwknop_scratch *s = bpf_map_lookup_elem(&fwknop_scratch, &zero);
	const struct fwknop_key *k = bpf_map_lookup_elem(&fwknop_keys, &idx);
	if (!s || !k)
		return 1;
	__builtin_memcpy(s->st.h, k->inner, sizeof(s->st.h));
	for (int b = 0; b < KG_FWKNOP_BLOCKS; b++) {
		if (b >= lc->nblocks)
			break;
		sha256_rounds(&s->st, &s->sched[b]);
	}
	/* The outer hash: the inner digest, padded, after key ^ opad. */
	__builtin_memcpy(s->outer.w, s->st.h, sizeof(s->st.h));
	s->outer.w[8] = 0x80000000;
#pragma unroll
	for (int j = 9; j < 15; j++)
		s->outer.w[j] = 0;
	s->outer.w[15] = (64 + 32) * 8;
	sha256_schedule(&s->outer, &s->osched);
	__builtin_memcpy(s->st.h, k->outer, sizeof(s->st.h));
	sha256_rounds(&s->st, &s->osched);
	__u32 diff = 0;
#pragma unroll
	for (int j = 0; j < 8; j++)
		diff |= s->st.h[j] ^ s->want[j];
	if (diff)
		return 0;
	lc->found = idx + 1;
	return 1;
}

/*
 * A datagram of fwknop's form to the SPA port: verified, and if it is
 * valid and new, handed to run. Every outcome is counted; the packet
 * itself is always dropped, so the SPA port looks filtered. A BPF global
 * function: only fwknop datagrams pay for its stack.
 */
__attribute__((noinline)) int fwknop(struct xdp_md *ctx, const struct packet *pkt)
{
	if (!ctx || !pkt)
		return 0;
	__u32 zero = 0;
	__u32 *nkeys = bpf_map_lookup_elem(&fwknop_count, &zero);
	if (!nkeys || !*nkeys) {
		count(COUNTER_SPA_BAD_LENGTH); /* no fwknop keys: as before */
		return 0;
	}
	__u32 len = pkt->payload_len;
	if (len >= KG_FWKNOP_GPG_LEN) {
		count(COUNTER_FWKNOP_GPG);
		return 0;
	}
	__u32 off = pkt->payload_off;
	__u32 body = len - KG_FWKNOP_TAG_LEN;
	struct fwknop_scratch *s = bpf_map_lookup_elem(&fwknop_scratch, &zero);
	if (!s || off > 4096 || body < KG_FWKNOP_MIN_LEN - KG_FWKNOP_TAG_LEN || body > KG_FWKNOP_MAX_BODY)
		return 0;
	if (bpf_xdp_load_bytes(ctx, off + body, s->tag, KG_FWKNOP_TAG_LEN) || !fwknop_decode_tag(s)) {
		count(COUNTER_FWKNOP_BAD_HMAC);
		return 0;
	}
	/* The text the HMAC covers, "U2FsdGVkX1" and the body, padded: zeros,
	 * then the prefix, the body, 0x80, and the length in bits (the key's
	 * block before it included) in the last word. */
	__u32 n = KG_FWKNOP_PREFIX_LEN + body;
	struct fwknop_loop lc = { .nblocks = (n + 9 + 63) / 64 };
	if (lc.nblocks < 2 || lc.nblocks > KG_FWKNOP_BLOCKS)
		return 0;
	/* Only the blocks the text takes: the last two zeroed (its padding
	 * lies in them), the text loaded over them, each word byte-swapped. */
	__u64 *z = (__u64 *)&s->blocks[lc.nblocks - 2];
#pragma unroll
	for (int i = 0; i < 16; i++)
		z[i] = 0;
	__u8 *m = (__u8 *)s->blocks;
	__builtin_memcpy(m, "U2FsdGVkX1", KG_FWKNOP_PREFIX_LEN);
	if (bpf_xdp_load_bytes(ctx, off, m + KG_FWKNOP_PREFIX_LEN, body)) {
		count(COUNTER_FWKNOP_BAD_HMAC);
		return 0;
	}
	m[n] = 0x80;
	for (int b = 0; b < KG_FWKNOP_BLOCKS; b++) {
		if (b >= lc.nblocks)
			break;
		__u32 *w = s->blocks[b].w;
#pragma unroll
		for (int i = 0; i < 16; i++)
			w[i] = bpf_ntohl(w[i]);
	}
	s->blocks[lc.nblocks - 1].w[15] = (64 + n) * 8;
	for (int b = 0; b < KG_FWKNOP_BLOCKS; b++) {
		if (b >= lc.nblocks)
			break;
		sha256_schedule(&s->blocks[b], &s->sched[b]);
	}
	__u32 keys = *nkeys < KG_FWKNOP_KEYS ? *nkeys : KG_FWKNOP_KEYS;
	bpf_loop(keys, fwknop_try_key, &lc, 0);
	if (!lc.found) {
		count(COUNTER_FWKNOP_BAD_HMAC);
		return 0;
	}

	/* Once, ever: the HMAC names the datagram (it covers every byte
	 * before it). */
	__u64 now = clock_boot();
	struct fwknop_seen seen = { .seen_ns = now };
	long err = bpf_map_update_elem(&fwknop_replay, &s->digest, &seen, BPF_NOEXIST);
	if (err) {
		count(err == -17 /* EEXIST */ ? COUNTER_FWKNOP_REPLAY : COUNTER_FWKNOP_REPLAY_FULL);
		return 0;
	}
	struct fwknop_record *rec = bpf_ringbuf_reserve(&fwknop_ring, sizeof(*rec), 0);
	if (!rec) {
		/* The datagram stays seen: a copy of it must not open later. */
		count(COUNTER_FWKNOP_LOST);
		return 0;
	}
	rec->time_ns = now;
	__builtin_memcpy(rec->src, pkt->src.addr, 16);
	__builtin_memcpy(rec->dst, pkt->dst.addr, 16);
	rec->ifindex = ctx->ingress_ifindex;
	rec->len = len;
	rec->key = lc.found - 1;
	if (bpf_xdp_load_bytes(ctx, off, rec->data, len)) {
		bpf_ringbuf_discard(rec, 0);
		count(COUNTER_FWKNOP_LOST);
		return 0;
	}
	bpf_ringbuf_submit(rec, 0);
	count(COUNTER_FWKNOP_PASSED);
	return 1;
}

/*
 * Not attached anywhere: run's way to grant what an fwknop datagram it
 * accepted opens, by BPF_PROG_TEST_RUN on a frame that is a struct
 * fwknop_grant_req. Each service is granted by grant_addr, as an SPA
 * packet's are (never shortening a grant, counted, an open event naming
 * the stanza), under the configuration in force, which must be the
 * generation run decided by: XDP_DROP (nothing granted) if it is not.
 */
SEC("xdp")
int fwknop_grant(struct xdp_md *ctx)
{
	struct fwknop_grant_req *req = (void *)(long)ctx->data;
	if ((void *)(req + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	struct lazy lz = { .now = 0 };
	const struct config *cfg = active_config(&lz);
	if (!cfg || cfg->generation != req->generation)
		return XDP_DROP;
	struct event_about a = { .key_id = req->stanza, .fwknop = 1 };
	__builtin_memcpy(a.addr, req->addr, 16);
	__u64 now = now_ns(&lz);
	__u32 granted = 0;
	for (__u32 s = 0; s < KG_MAX_SERVICES; s++) {
		if (!(req->services & (1u << s)) || !(cfg->live_services & (1u << s)))
			continue;
		a.service = s;
		a.port = req->port[s];
		a.proto = req->proto[s];
		granted += grant_addr(&a, req->open_ns, now);
	}
	req->granted = granted;
	return XDP_PASS;
}
