/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The SHA-256 compression function (FIPS 180-4, 6.2.2) for BPF: one
 * 64-byte block, given as 16 words already in host order (the caller turns
 * a message's big-endian bytes into words once, however many keys it
 * hashes them under), into a chaining state: its message schedule
 * (sha256_schedule), then its 64 rounds (sha256_rounds). Both are BPF
 * global functions: the verifier checks each once, whoever calls it. The
 * Go twin is fwknop.Block; both are checked against FIPS 180-4's vectors
 * (sha256test).
 */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

struct sha256_state {
	__u32 h[8];
};

struct sha256_block {
	__u32 w[16];
};

static const __u32 sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* A block's message schedule (FIPS 180-4, 6.2.2 step 1), w, and the same
 * with the round constants added, kw[i] = K[i] + W[i]. It depends on the
 * block alone, so a message hashed under many keys (HMAC) has it made once
 * a block, and each key pays only for the rounds. */
struct sha256_sched {
	__u32 kw[64];
	__u32 w[64];
};

/* σ0, σ1 of the schedule, the word doubled into both halves of a 64-bit
 * register as for Σ0, Σ1 below: each rotation one shift. */
static __always_inline __u32 sha256_s0(__u32 x)
{
	__u64 y = (__u64)x << 32 | x;
	return (y >> 7) ^ (y >> 18) ^ (x >> 3);
}

static __always_inline __u32 sha256_s1(__u32 x)
{
	__u64 y = (__u64)x << 32 | x;
	return (y >> 17) ^ (y >> 19) ^ (x >> 10);
}

/* The schedule of blk into out. A BPF global function, unrolled whole:
 * every word at a constant offset of out (the map value it lives in, not
 * the stack), each constant an immediate, no index arithmetic. That is
 * half the instructions of the rolled loop over a window of 16 on the
 * stack it replaces, which cost as much as the 64 rounds. */
__attribute__((noinline)) int sha256_schedule(const struct sha256_block *blk, struct sha256_sched *out)
{
	if (!blk || !out)
		return 0;
	__u32 *w = out->w;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 x = blk->w[i];
		w[i] = x;
		out->kw[i] = sha256_k[i] + x;
	}
#pragma unroll
	for (int i = 16; i < 64; i++) {
		__u32 x = w[i - 16] + sha256_s0(w[i - 15]) + w[i - 7] + sha256_s1(w[i - 2]);
		w[i] = x;
		out->kw[i] = sha256_k[i] + x;
	}
	return 0;
}

/* Σ0, Σ1 of a 32-bit word kept in a 64-bit register: the word doubled
 * into both halves makes each rotation one shift. */
static __always_inline __u32 sha256_S0(__u32 a)
{
	__u64 y = (__u64)a << 32 | a;
	return (y >> 2) ^ (y >> 13) ^ (y >> 22);
}

static __always_inline __u32 sha256_S1(__u32 e)
{
	__u64 y = (__u64)e << 32 | e;
	return (y >> 6) ^ (y >> 11) ^ (y >> 25);
}

#define SHA256_ROUND(a, b, c, d, e, f, g, h, j)                                                                    \
	do {                                                                                                       \
		__u32 t1 = h + sha256_S1(e) + (g ^ (e & (f ^ g))) + kw[j];                                         \
		__u32 t2 = sha256_S0(a) + ((a & b) | (c & (a | b)));                                               \
		d += t1;                                                                                           \
		h = t1 + t2;                                                                                       \
	} while (0)

/* The 64 rounds of a block whose schedule is sc, into st. A BPF global
 * function: eight rounds unrolled (the working variables renamed, not
 * moved), eight times. Unrolled whole, it spills more and runs slower. */
__attribute__((noinline)) int sha256_rounds(struct sha256_state *st, const struct sha256_sched *sc)
{
	if (!st || !sc)
		return 0;
	__u32 a = st->h[0], b = st->h[1], c = st->h[2], d = st->h[3];
	__u32 e = st->h[4], f = st->h[5], g = st->h[6], h = st->h[7];
#pragma clang loop unroll(disable)
	for (int r = 0; r < 8; r++) {
		const __u32 *kw = &sc->kw[r * 8];
		SHA256_ROUND(a, b, c, d, e, f, g, h, 0);
		SHA256_ROUND(h, a, b, c, d, e, f, g, 1);
		SHA256_ROUND(g, h, a, b, c, d, e, f, 2);
		SHA256_ROUND(f, g, h, a, b, c, d, e, 3);
		SHA256_ROUND(e, f, g, h, a, b, c, d, 4);
		SHA256_ROUND(d, e, f, g, h, a, b, c, 5);
		SHA256_ROUND(c, d, e, f, g, h, a, b, 6);
		SHA256_ROUND(b, c, d, e, f, g, h, a, 7);
	}
	st->h[0] += a;
	st->h[1] += b;
	st->h[2] += c;
	st->h[3] += d;
	st->h[4] += e;
	st->h[5] += f;
	st->h[6] += g;
	st->h[7] += h;
	return 0;
}
