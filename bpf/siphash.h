/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * SipHash-2-4 (Aumasson and Bernstein), as in the reference implementation
 * (and SipHash-1-3, its variant of fewer rounds):
 * the key's 16 bytes are k0 (bytes 0-7) and k1 (bytes 8-15), the message is
 * read as little-endian 64-bit words, and the result is a 64-bit value (the
 * reference writes it little-endian). Fixed-length callers unroll fully; the
 * verifier sees only straight-line code. Mirrored by the spa Go package.
 */
#pragma once

#include <linux/types.h>

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define sip_le64(x) __builtin_bswap64(x)
#else
#define sip_le64(x) (x)
#endif

#define SIP_ROTL(x, b) (__u64)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIP_ROUND(v0, v1, v2, v3)      \
	do {                           \
		v0 += v1;              \
		v1 = SIP_ROTL(v1, 13); \
		v1 ^= v0;              \
		v0 = SIP_ROTL(v0, 32); \
		v2 += v3;              \
		v3 = SIP_ROTL(v3, 16); \
		v3 ^= v2;              \
		v0 += v3;              \
		v3 = SIP_ROTL(v3, 21); \
		v3 ^= v0;              \
		v2 += v1;              \
		v1 = SIP_ROTL(v1, 17); \
		v1 ^= v2;              \
		v2 = SIP_ROTL(v2, 32); \
	} while (0)

struct sip_state {
	__u64 v0, v1, v2, v3;
};

static __always_inline void sip_init(struct sip_state *s, __u64 k0, __u64 k1)
{
	s->v0 = k0 ^ 0x736f6d6570736575ULL;
	s->v1 = k1 ^ 0x646f72616e646f6dULL;
	s->v2 = k0 ^ 0x6c7967656e657261ULL;
	s->v3 = k1 ^ 0x7465646279746573ULL;
}

/* One message word (already in host order): two compression rounds. */
static __always_inline void sip_word(struct sip_state *s, __u64 m)
{
	s->v3 ^= m;
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= m;
}

/* The last word (the length's low byte on top, the tail below it), then
 * four finalization rounds. */
static __always_inline __u64 sip_final(struct sip_state *s, __u64 last)
{
	sip_word(s, last);
	s->v2 ^= 0xff;
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* SipHash-1-3 (one compression round a word, three finalization rounds),
 * the variant hash tables use against chosen keys (Rust's, CPython's):
 * the grant cache's fingerprints, which a packet computes on the granted
 * path, where 2-4's ten rounds would cost it some 10 ns. Same state, same
 * padding; fewer rounds. Only the program computes it (nothing mirrors it
 * in Go): a fingerprint only has to be the same each time it is made. */
static __always_inline void sip13_word(struct sip_state *s, __u64 m)
{
	s->v3 ^= m;
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= m;
}

static __always_inline __u64 sip13_final(struct sip_state *s, __u64 last)
{
	sip13_word(s, last);
	s->v2 ^= 0xff;
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	SIP_ROUND(s->v0, s->v1, s->v2, s->v3);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* SipHash-2-4 of six words (48 bytes, read little-endian): the SPA packet's
 * authenticated part. No tail: 48 is a whole number of words. */
static __always_inline __u64 siphash48(__u64 k0, __u64 k1, const __u64 *w)
{
	struct sip_state s;
	sip_init(&s, k0, k1);
#pragma unroll
	for (int i = 0; i < 6; i++)
		sip_word(&s, sip_le64(w[i]));
	return sip_final(&s, 48ULL << 56);
}

/* SipHash-2-4 of eight words (64 bytes): a version-2 SPA packet's
 * authenticated part. */
static __always_inline __u64 siphash64(__u64 k0, __u64 k1, const __u64 *w)
{
	struct sip_state s;
	sip_init(&s, k0, k1);
#pragma unroll
	for (int i = 0; i < 8; i++)
		sip_word(&s, sip_le64(w[i]));
	return sip_final(&s, 64ULL << 56);
}

/* SipHash-2-4 of the first len (at most 63) bytes of m, a 64-byte buffer:
 * the general form, for the test vectors (the program itself only hashes
 * 48 or 64 bytes, with siphash48 and siphash64). */
static __always_inline __u64 siphash_bytes(__u64 k0, __u64 k1, const __u8 *m, __u32 len)
{
	struct sip_state s;
	sip_init(&s, k0, k1);
	len &= 63;
	__u32 words = len / 8;
	for (__u32 i = 0; i < 7; i++) {
		if (i >= words)
			break;
		__u64 w = 0;
		for (int j = 7; j >= 0; j--)
			w = (w << 8) | m[(i * 8 + j) & 63];
		sip_word(&s, w);
	}
	__u64 last = (__u64)len << 56;
	for (__u32 j = 0; j < 7; j++) {
		if (j >= len % 8)
			break;
		last |= (__u64)m[(words * 8 + j) & 63] << (8 * j);
	}
	return sip_final(&s, last);
}
