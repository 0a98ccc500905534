//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * knockgate: a port-knocking gate in XDP.
 *
 * parse -> flows -> SPA -> knock state machine -> protected ports (the port's
 * service, then flows, the (source, service) grant, allow lists) -> verdict.
 * Per packet: one parse, one byte of the port table, a handful of O(1) map
 * lookups, and the clock is read only when a decision needs it (a map hit, a
 * knock, an SPA packet with a valid tag), never on the plain pass or
 * unauthorised-drop path. The tcx egress program that learns flows is
 * egress.c.
 */
#include "parsing.h"
#include "common.h"
#include "flows.h"
#include "spa.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Knock progress, set-associative (see struct knock_slot): knock_sets sets
 * of KG_KNOCK_WAYS slots, sized by the loader from --max-sources; the set s
 * is slots s*KG_KNOCK_WAYS to s*KG_KNOCK_WAYS+3. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct knock_slot);
} knocks SEC(".maps");

/* The knock table's number of sets and slots, fixed at load time from its
 * max_entries: the hash picks a set below knock_sets, and the verifier
 * checks every index against knock_slots. */
volatile const __u32 knock_sets = 1 << 15;
volatile const __u32 knock_slots = 1 << 17;

/*
 * One byte per knock slot: 0 while the slot is free, else a tag of its
 * holder (8 bits of its hash below the set's). A packet whose tag no slot of
 * its set carries has no progress, found by reading the set's 4 bytes of a
 * small array instead of its 160 bytes of a table 40 times its size: under a
 * flood of spoofed sources, that is a cache hit instead of misses. Written with the
 * slot, under its lock; read without it (a tag that matches is checked
 * against the slot under the lock). One value of one byte per slot, sized by
 * the loader; mmapable, so Go can write a byte of it in place.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(key_size, 4);
	__uint(value_size, 131072);
} knock_tags SEC(".maps");

/* Grants live apart from progress, one per (source, service): entries are
 * only made by a completed sequence, an SPA packet or the operator, so knock
 * floods never evict them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct grant_key);
	__type(value, struct grant);
} grants SEC(".maps");

/*
 * A one-sided filter in front of grants (a Bloom filter, blocked to one
 * 64-bit word): a (source, service) whose HINT_BITS bits of its word
 * (hint_of, a hash of both) are not all set has no grant, so a stranger's
 * packet to a protected port costs one load from a bitmap of 2 bytes a
 * --max-sources instead of a hash lookup: 2 MiB at 2^20 sources, where a
 * stranger's line is likely still in cache (at 10^6 grants, 0.5 % of
 * strangers find their bits set and look). Two halves: the program reads
 * the active one (the value's first 32-bit word says which); every writer of a
 * grant sets its bits in both, before the grant exists and again after
 * (put_grant, maps.Set.putGrant). Bits are never cleared in the active half,
 * so they never miss a grant; they go stale as grants go (a revoke, the
 * LRU), which only costs the lookup, until the Go side rebuilds the
 * inactive half from the grants map and makes it the active one
 * (maps.Set.RebuildHints: why the second setting makes that safe). One
 * value, HINT_HEADER bytes and the two halves of hint_words words, sized
 * by the loader; mmapable, so Go sets bits atomically in place.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(key_size, 4);
	__uint(value_size, HINT_HEADER + 2 * 8 * 1024);
} hint_bits SEC(".maps");

/* Words in each half of hint_bits (a power of two), and 64 less its log2:
 * set by the loader. */
volatile const __u32 hint_words = 1024;
volatile const __u32 hint_shift = 64 - 10;

/*
 * The grant cache: what a granted source's packet reads instead of the
 * grants map. A lookup in that LRU hash reads a bucket head in one table
 * and an element in another (at 2^20 sources, 16 and some 90 MiB), each a
 * cache miss under traffic from many sources; an entry here is 16 bytes in
 * a set of KG_CACHE_WAYS that is one cache line, so a granted packet
 * touches one line beyond the hint filter. It only mirrors the grants map:
 * an entry is made by a packet that found a live grant there, holds that
 * grant's expiry, and is valid in the epoch it was made in (the hint
 * header's HINT_EPOCH word, which the Go side bumps after it removes or
 * shortens any grant: revoke, a service's removal, an operator's grant), so
 * it can say no more than the grants map said in this epoch. A renewal
 * needs no bump: the entry lapses at the older expiry and the next packet
 * reads the map again. Fingerprints are keyed (SipHash-1-3 under
 * cache_key, random at each load: a program loaded anew starts from an
 * empty cache in effect), so no address can be chosen whose fingerprint is
 * another's. grant_cache_sets lines, sized by the loader (64 bytes a
 * --max-sources); mmapable, so that lines are page-, hence line-aligned.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct grant_cache_line);
} grant_cache SEC(".maps");

/* Sets of grant_cache (a power of two), and the fingerprints' key: set by
 * the loader. */
volatile const __u32 grant_cache_sets = 1024;
volatile const __u64 cache_key0 = 0;
volatile const __u64 cache_key1 = 0;

/* Operator CIDRs that always pass protected ports: of every service
 * (service KG_ALLOW_ANY), or of one; each configuration's under its allow
 * epoch. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, __u8);
} allow SEC(".maps");

/* Counters of each service (enum service_counter). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_MAX_SERVICES * SERVICE_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} service_counters SEC(".maps");

/* Verdicts per interface slot: index slot * VERDICT_MAX + verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_IFACE_SLOTS * VERDICT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KG_EVENT_RING_BYTES);
} events SEC(".maps");

/* Per CPU: when the knock/reset event budget next has room (a GCRA
 * "theoretical arrival time", CLOCK_BOOTTIME ns). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} event_budget SEC(".maps");

/* Force the types no map names into BTF so bpf2go generates them. */
const struct event *unused_event __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const enum verdict *unused_verdict __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum config_flag *unused_config_flag __attribute__((unused));
const enum flow_flag *unused_flow_flag __attribute__((unused));
const enum spa_key_flag *unused_spa_key_flag __attribute__((unused));
const enum service_counter *unused_service_counter __attribute__((unused));

static __always_inline void service_count(__u32 service, __u32 c)
{
	__u32 idx = service * SERVICE_COUNTER_MAX + c;
	__u64 *n = bpf_map_lookup_elem(&service_counters, &idx);
	if (n)
		*n += 1; /* per CPU, preemption off: exact without atomics */
}

/* Count the packet's verdict in the slot of the interface it came in on and
 * turn it into the XDP action. */
static __always_inline int verdict(struct xdp_md *ctx, __u32 v)
{
	__u32 idx = (ctx->ingress_ifindex & (KG_IFACE_SLOTS - 1)) * VERDICT_MAX + v;
	__u64 *n = bpf_map_lookup_elem(&verdicts, &idx);
	if (n)
		*n += 1; /* per CPU, preemption off: exact without atomics */
	return v <= VERDICT_PASSED_FLOW ? XDP_PASS : XDP_DROP;
}

/* The event budget's burst, fixed at load time (KG_EVENT_BURST); only
 * benchmarks load another, to time the knock path with its event. */
volatile const __u32 event_burst = KG_EVENT_BURST;

/*
 * May a knock or reset event go out at now? Within the per-CPU budget, and
 * only while the ring buffer keeps its reserve for open and expire events,
 * which are never budgeted. A refusal is counted as suppressed.
 */
static __always_inline int budgeted(__u64 now)
{
	const __u64 interval = 1000000000ULL / KG_EVENT_RATE;
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&event_budget, &zero);
	if (!next)
		return 0;
	__u64 t = *next > now ? *next : now;
	if (t + interval > now + interval * event_burst ||
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > KG_EVENT_RING_RESERVE) {
		count(COUNTER_EVENTS_SUPPRESSED);
		return 0;
	}
	*next = t + interval; /* per CPU, preemption off: a plain store */
	return 1;
}

/* What an event says besides its type and times. */
struct event_about {
	__u8 addr[16];
	__u32 key_id;
	__u16 port;
	__u8 proto;
	__u8 stage;
	__u8 service;
	__u8 fwknop; /* see struct event */
	__u8 pad[6];
};

static __always_inline void emit_about(__u8 type, const struct event_about *a, __u64 now, __u64 expires)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		/* Observability must never change a verdict. */
		count(COUNTER_EVENTS_LOST);
		return;
	}
	ev->time_ns = now;
	ev->expires_ns = expires;
	__builtin_memcpy(ev->addr, a->addr, 16);
	ev->key_id = a->key_id;
	ev->port = a->port;
	ev->proto = a->proto;
	ev->type = type;
	ev->stage = a->stage;
	ev->service = a->service;
	ev->fwknop = a->fwknop;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	bpf_ringbuf_submit(ev, 0);
}

/* An event about pkt's source and destination port, and service. */
static __always_inline void emit(__u8 type, const struct packet *pkt, __u32 service, __u8 stage,
				 __u64 now, __u64 expires)
{
	struct event_about a = { .port = pkt->dport, .proto = pkt->proto, .stage = stage, .service = service };
	__builtin_memcpy(a.addr, pkt->src.addr, 16);
	emit_about(type, &a, now, expires);
}

/* The grants map's key for addr and service. */
static __always_inline struct grant_key grant_key_of(const __u8 *addr, __u32 service)
{
	struct grant_key k = { .service = service };
	__builtin_memcpy(k.addr, addr, 16);
	return k;
}

/* The hint of a (source, service): the word of a half of hint_bits its
 * bits are in (a multiplicative hash's top bits, as many as hint_words
 * needs), and its HINT_BITS bits, 6 bits of another product each (the same
 * bit twice is one bit less). Mirrored by maps.HintOf; change both or
 * neither. */
struct hint {
	__u64 mask;
	__u32 word;
};

static __always_inline struct hint hint_of(const struct grant_key *k)
{
	__u64 a, b;
	__builtin_memcpy(&a, k->addr, 8);
	__builtin_memcpy(&b, k->addr + 8, 8);
	__u64 h = (a ^ ((__u64)k->service << 56)) * 0x9e3779b97f4a7c15ULL + b * 0xbf58476d1ce4e5b9ULL;
	__u64 m = h * 0x94d049bb133111ebULL;
	struct hint ht = { .word = h >> hint_shift };
	ht.mask = 1ULL << (m >> 58) | 1ULL << ((m >> 52) & 63) | 1ULL << ((m >> 46) & 63) | 1ULL << ((m >> 40) & 63);
	return ht;
}

/* The hint bitmap and k's hint in it, or NULL without the map or the word
 * (cannot be: the loader sizes the value). */
static __always_inline __u8 *hint_place(const struct grant_key *k, struct hint *h)
{
	__u32 zero = 0;
	__u8 *bits = bpf_map_lookup_elem(&hint_bits, &zero);
	*h = hint_of(k);
	if (!bits || h->word >= hint_words)
		return NULL;
	return bits;
}

/* Might k have a grant? Its bits in the active half: all set, or no word
 * to read. *hdr is the bitmap (its header), or NULL without the map. */
static __always_inline int hinted(const struct grant_key *k, const __u8 **hdr)
{
	struct hint h;
	__u8 *bits = hint_place(k, &h);
	*hdr = bits;
	if (!bits)
		return 1;
	__u32 half = *(volatile __u32 *)bits & 1;
	__u64 w = *(volatile __u64 *)(bits + HINT_HEADER + 8 * (half * hint_words + h.word));
	return (w & h.mask) == h.mask;
}

/* Set k's bits in both halves, 32 bits at a time: the atomics Go and every
 * kernel share (README, 32-bit ARM). Returns 0, or -1 without the map. */
static __always_inline long hint_set(const struct grant_key *k)
{
	struct hint h;
	__u8 *bits = hint_place(k, &h);
	if (!bits)
		return -1;
	union {
		__u64 w;
		__u32 half[2];
	} m = { .w = h.mask };
	__u32 *w0 = (__u32 *)(bits + HINT_HEADER + 8 * h.word);
	__u32 *w1 = (__u32 *)(bits + HINT_HEADER + 8 * (hint_words + h.word));
	if (m.half[0]) {
		__sync_fetch_and_or(w0, m.half[0]);
		__sync_fetch_and_or(w1, m.half[0]);
	}
	if (m.half[1]) {
		__sync_fetch_and_or(w0 + 1, m.half[1]);
		__sync_fetch_and_or(w1 + 1, m.half[1]);
	}
	return 0;
}

/*
 * Insert or replace a grant, its hint bits set before it exists (so no
 * reader misses it) and again after (so a rebuild of the inactive half that
 * cleared them before the grant was there keeps them: maps.RebuildHints);
 * the hint is hashed anew for the second rather than kept across the
 * update, which would take stack a global function's frame cannot spare.
 * Returns 0 or the map's error.
 */
static __always_inline long put_grant(const struct grant_key *k, const struct grant *g)
{
	if (hint_set(k))
		return -1;
	long err = bpf_map_update_elem(&grants, k, g, BPF_ANY);
	hint_set(k);
	return err;
}

/* Where a source's progress lives: its set, and the tag the byte of its
 * slot in knock_tags carries while the source holds it. */
struct place {
	__u32 set;
	__u8 tag;
};

/*
 * The place of a source: a keyed multiplicative hash of its two halves,
 * whose top 32 bits (every bit of the address reaches them), scaled to the
 * number of sets, pick the set; the tag is the top byte of the hash times
 * another constant (never 0, which marks a free slot).
 * Mirrored by maps.KnockPlace; change both or neither.
 */
static __always_inline struct place place_of(const struct config *cfg, const struct source *src)
{
	__u64 a, b;
	__builtin_memcpy(&a, src->addr, 8);
	__builtin_memcpy(&b, src->addr + 8, 8);
	__u64 h = (a ^ cfg->slot_key[0]) * 0x9e3779b97f4a7c15ULL + (b ^ cfg->slot_key[1]) * 0xbf58476d1ce4e5b9ULL;
	/* The tag from another product's top byte: independent of the set. */
	struct place pl = { .set = ((h >> 32) * knock_sets) >> 32, .tag = (h * 0x94d049bb133111ebULL) >> 56 };
	if (!pl.tag)
		pl.tag = 1;
	return pl;
}

/* Free the slot: called under its lock. */
static __always_inline void free_slot(struct knock_slot *k, __u8 *tag)
{
	__builtin_memset(k->addr, 0, sizeof(k->addr));
	k->stage = 0;
	*tag = 0;
}

/* Does the slot hold src's progress? Read without the lock: see struct
 * knock_slot. */
static __always_inline int holds(const struct knock_slot *k, const struct source *src)
{
	const __u64 *x = (const __u64 *)k->addr, *y = (const __u64 *)src->addr;
	return x[0] == y[0] && x[1] == y[1];
}

/* What an entry's check xors its expiry times: any odd constant (a
 * bijection), so that a check read with another entry's expiry (a torn read
 * of an entry being rewritten) is not its fingerprint's. */
#define CACHE_MIX 0x9e3779b97f4a7c15ULL

/* The check of fp's entry that holds expires. */
static __always_inline __u64 cache_check(__u64 fp, __u64 expires)
{
	return fp ^ expires * CACHE_MIX;
}

/* The grant cache's epoch (HINT_EPOCH of the hint header hdr; 0 without
 * the map): read only once a source's hint lets it through, so a stranger
 * never pays for it. */
static __always_inline __u32 cache_epoch(const __u8 *hdr)
{
	return hdr ? *(volatile const __u32 *)(hdr + HINT_EPOCH) : 0;
}

/* The fingerprint of k in epoch: SipHash-1-3 under cache_key of the
 * address, the service's byte and the epoch (21 bytes, little-endian as
 * SipHash reads them). */
static __always_inline __u64 cache_fingerprint(const struct grant_key *k, __u32 epoch)
{
	__u64 a, b;
	__builtin_memcpy(&a, k->addr, 8);
	__builtin_memcpy(&b, k->addr + 8, 8);
	struct sip_state s;
	sip_init(&s, cache_key0, cache_key1);
	sip13_word(&s, sip_le64(a));
	sip13_word(&s, sip_le64(b));
	return sip13_final(&s, 21ULL << 56 | (__u64)epoch << 8 | k->service);
}

/* The set of fingerprint fp, or NULL. */
static __always_inline struct grant_cache_line *cache_set(__u64 fp)
{
	__u32 idx = (__u32)fp & (grant_cache_sets - 1);
	return bpf_map_lookup_elem(&grant_cache, &idx);
}

/* The expiry of fp's live entry in set, or 0: an entry whose check is
 * cache_check(fp, its expiry). Entries are read and written without a
 * lock: a torn read is one whose check does not match. */
static __always_inline __u64 cache_find(const struct grant_cache_line *set, __u64 fp, __u64 now)
{
#pragma unroll
	for (int i = 0; i < KG_CACHE_WAYS; i++) {
		__u64 expires = set->w[2 * i + 1];
		if (set->w[2 * i] == cache_check(fp, expires) && now < expires)
			return expires;
	}
	return 0;
}

/* Record fp's live grant until expires in set: in the way holding fp's
 * entry, else an expired one, else the way fp's top bits pick (the cache
 * may forget; the grants map answers then). */
static __always_inline void cache_put(struct grant_cache_line *set, __u64 fp, __u64 expires, __u64 now)
{
	__u32 way = fp >> 62, spare = KG_CACHE_WAYS;
#pragma unroll
	for (int i = 0; i < KG_CACHE_WAYS; i++) {
		__u64 e = set->w[2 * i + 1];
		if (set->w[2 * i] == cache_check(fp, e)) {
			spare = i;
			break;
		}
		if (e <= now && spare == KG_CACHE_WAYS)
			spare = i;
	}
	if (spare < KG_CACHE_WAYS)
		way = spare;
	way &= KG_CACHE_WAYS - 1;
	set->w[2 * way + 1] = expires;
	set->w[2 * way] = cache_check(fp, expires);
}

/*
 * Has pkt's source a live grant of service? The grant cache answers for a
 * source it holds; otherwise the grants map does, and a live grant found
 * there goes into the cache. An expired grant is reported once and left in
 * place: deleting it here could race with another CPU renewing it (a
 * sequence completed at that moment) and delete the renewal. It stays until
 * a new grant replaces it, `revoke` removes it, or the LRU recycles it.
 */
static __always_inline int granted(const struct packet *pkt, __u32 service, struct lazy *lz)
{
	struct grant_key key = grant_key_of(pkt->src.addr, service);
	const __u8 *hdr;
	if (!hinted(&key, &hdr))
		return 0;
	__u64 fp = cache_fingerprint(&key, cache_epoch(hdr));
	struct grant_cache_line *set = cache_set(fp);
	if (set) {
		/* Touch the line before reading the clock. The clock's read
		 * (rdtscp) waits for every load issued before it: read before
		 * the line, it held the line's miss back until the hint
		 * word's had ended; read after, the two misses overlap (the
		 * CPU issues the line's load past the predicted hint check).
		 * Under traffic from many sources both miss; from one,
		 * neither, and the touch is a load from L1. */
		asm volatile("" ::"r"(*(volatile const __u64 *)&set->w[0]));
		if (cache_find(set, fp, now_ns(lz)))
			return 1;
	}
	/* The map is read after the epoch: the key's padding is made of the
	 * fingerprint (and zero), so that even a CPU that reorders loads
	 * reads the map after the epoch it caches the answer under (an
	 * address dependency), never a grant that a bump has since voided. */
	__u64 z = fp;
	asm volatile("%[z] &= 0" : [z] "+r"(z));
	key.pad[0] = z;
	struct grant *g = bpf_map_lookup_elem(&grants, &key);
	if (!g)
		return 0;
	__u64 expires = g->expires_ns;
	if (now_ns(lz) < expires) {
		if (set)
			cache_put(set, fp, expires, lz->now);
		return 1;
	}
	if (!g->expiry_reported) {
		/* A racing store here can at worst repeat or skip an event. */
		g->expiry_reported = 1;
		count(COUNTER_GRANT_EXPIRED);
		service_count(service & (KG_MAX_SERVICES - 1), SERVICE_GRANT_EXPIRED);
		emit(EVENT_EXPIRE, pkt, service, 0, lz->now, expires);
	}
	return 0;
}

/*
 * Grant a->addr the service a->service for open_ns from now, the way a
 * completed sequence does: never shortening a grant already held; an open
 * event says so. A BPF global function: verified once, however many callers
 * (a sequence, each service an SPA packet opens).
 */
__attribute__((noinline)) int grant_addr(const struct event_about *a, __u64 open_ns, __u64 now)
{
	if (!a)
		return 0;
	struct grant_key key = grant_key_of(a->addr, a->service);
	struct grant g = { .expires_ns = now + open_ns };
	struct grant *old = bpf_map_lookup_elem(&grants, &key);
	if (old && old->expires_ns > g.expires_ns)
		g.expires_ns = old->expires_ns;
	if (put_grant(&key, &g)) {
		count(COUNTER_GRANT_FAILED);
		return 0;
	}
	count(COUNTER_GRANTED);
	service_count(a->service & (KG_MAX_SERVICES - 1), SERVICE_GRANTED);
	emit_about(EVENT_OPEN, a, now, g.expires_ns);
	return 1;
}

/* Service's sequence is complete: grant the packet's source. */
static __always_inline void grant(const struct service *svc, __u32 service, const struct packet *pkt, __u64 now)
{
	struct event_about a = { .port = pkt->dport, .proto = pkt->proto, .stage = svc->nsteps, .service = service };
	__builtin_memcpy(a.addr, pkt->src.addr, 16);
	grant_addr(&a, svc->open_ns, now);
}

/*
 * A look through the slots of a set (search_set): the slot that holds src's
 * progress, and the slot a first knock of src takes (a free one, else the
 * one with the oldest progress: void progress counts as oldest, so the set
 * is an LRU of KG_KNOCK_WAYS). Deadlines are read without the locks: a
 * choice made on a value a moment old is still a fair one. search_way looks
 * at way w and says (1) when the search is over.
 */
struct way_search {
	__u64 addr[2]; /* the source */
	__u64 oldest;
	__u32 base; /* the set's first slot */
	__u32 generation;
	__s32 found; /* way holding src's progress, or -1 */
	__u32 victim;
	__u8 tag;
	__u8 have_free;
	__u8 pad[2];
};

static __always_inline long search_way(__u64 w, void *data)
{
	struct way_search *s = data;
	__u32 zero = 0;
	__u8 *tags = bpf_map_lookup_elem(&knock_tags, &zero);
	if (!tags)
		return 1;
	__u32 idx = s->base + (__u32)w;
	if (idx >= knock_slots)
		return 1;
	__u8 t = tags[idx];
	if (!t) {
		if (!s->have_free) {
			s->have_free = 1;
			s->victim = w;
		}
		return 0;
	}
	struct knock_slot *k = bpf_map_lookup_elem(&knocks, &idx);
	if (!k)
		return 0;
	const __u64 *a = (const __u64 *)k->addr;
	if (t == s->tag && a[0] == s->addr[0] && a[1] == s->addr[1]) {
		s->found = w;
		return 1;
	}
	__u64 d = k->generation == (__u16)s->generation ? *(volatile __u64 *)&k->deadline_ns : 0;
	if (!s->have_free && d < s->oldest) {
		s->oldest = d;
		s->victim = w;
	}
	return 0;
}

/*
 * The knock state machine, for a TCP SYN (without ACK, RST, FIN) or a UDP
 * datagram. Returns XDP_DROP when the packet was a knock, -1 when the packet
 * is not a knock and must be judged by the protected-port rules.
 *
 * A source without progress in its slot (a stranger, or one whose slot
 * another first knock took) costs one array load and a compare, unless the
 * packet is a first step. The slot is changed only under its lock, and no
 * helper runs while it is held: the clock is read before, events go out
 * after.
 */
static __always_inline void search_set(struct way_search *ws)
{
#pragma unroll
	for (__u32 w = 0; w < KG_KNOCK_WAYS; w++)
		if (search_way(w, ws))
			break;
}

/*
 * The knock state machine's work on the table, for a packet whose source may
 * hold progress in its set (maybe: a tag of the set matches) or that is a
 * first step. A function of its own (a BPF global function), so the verifier
 * checks it once rather than on every path that reaches it; the stranger's
 * path (no tag, no first step) never calls it. step is the packet's match
 * (bit i: it is step i) in its low 16 bits and the service whose sequence
 * the port is a step of above them (BPF calls take 5 arguments).
 *
 * A source follows one sequence at a time: progress records its service, and
 * a step of another service's sequence is, to that progress, any other SYN:
 * it starts over.
 */
__attribute__((noinline)) int knock_table(const struct config *cfg, const struct packet *pkt, struct lazy *lz,
					 __u32 step, __u32 maybe)
{
	if (!cfg || !pkt || !lz)
		return -1;
	__u32 match = step & 0xffff;
	__u32 service = step >> 16;
	if (service >= KG_MAX_SERVICES)
		return match ? XDP_DROP : -1;
	struct place pl = place_of(cfg, &pkt->src); /* again: BPF calls take 5 arguments */
	__u32 set = pl.set;
	__u8 tag8 = pl.tag;
	__u32 zero = 0;
	__u8 *tags = bpf_map_lookup_elem(&knock_tags, &zero);
	if (!tags || set >= knock_sets)
		return match ? XDP_DROP : -1;
	struct way_search ws = {
		.oldest = ~0ULL,
		.base = set * KG_KNOCK_WAYS,
		.generation = cfg->generation,
		.found = -1,
		.tag = tag8,
	};
	__builtin_memcpy(ws.addr, pkt->src.addr, sizeof(ws.addr));
	int searched = 0;
	if (maybe) {
		search_set(&ws);
		searched = 1;
	}
	struct knock_slot *k = NULL;
	__u8 *tag = tags;
	if (ws.found >= 0) {
		__u32 idx = ws.base + ws.found;
		if (idx >= knock_slots)
			return match ? XDP_DROP : -1;
		tag = tags + idx;
		k = bpf_map_lookup_elem(&knocks, &idx);
	}
	if (k) {
		__u64 now = now_ns(lz);
		__u8 stage = 0;
		__u32 held = 0; /* the service of the progress found */
		int outcome; /* what happened, decided under the lock */
		enum { NONE, ADVANCED, COMPLETED, REPEATED, RESET };
		__u64 deadline = 0;
		int freed = 0;

		bpf_spin_lock(&k->lock);
		outcome = NONE;
		if (holds(k, &pkt->src)) {
			stage = k->stage;
			held = k->service;
			const struct service *hs = &cfg->services[held & (KG_MAX_SERVICES - 1)];
			/* A step of another sequence matches none of this one's. */
			__u32 m = held == service ? match : 0;
			if (k->generation == (__u16)cfg->generation && now < k->deadline_ns && stage > 0 &&
			    stage < hs->nsteps && stage < KG_MAX_STEPS) {
				if (m & (1u << stage)) {
					stage++;
					if (stage == hs->nsteps) {
						free_slot(k, tag);
						outcome = COMPLETED;
					} else {
						k->stage = stage;
						k->deadline_ns = deadline = now + hs->step_timeout_ns;
						outcome = ADVANCED;
					}
				} else if (m & ((1u << stage) - 1)) {
					/* A retransmitted SYN of a step already taken
					 * (browsers resend at 1 s and 3 s). */
					outcome = REPEATED;
				} else {
					/* Any other SYN or datagram: start over, so that an
					 * ordered port sweep can never walk the sequence. */
					free_slot(k, tag);
					outcome = RESET;
				}
			} else {
				/* Expired or made under an older configuration: no
				 * progress. The slot is freed so the source's next
				 * packets take the stranger's path again. */
				free_slot(k, tag);
				freed = 1;
			}
		}
		bpf_spin_unlock(&k->lock);

		held &= KG_MAX_SERVICES - 1;
		switch (outcome) {
		case COMPLETED:
			count(COUNTER_KNOCK_ADVANCED);
			grant(&cfg->services[held], held, pkt, now);
			return XDP_DROP;
		case ADVANCED:
			count(COUNTER_KNOCK_ADVANCED);
			if (budgeted(now))
				emit(EVENT_KNOCK, pkt, held, stage, now, deadline);
			return XDP_DROP;
		case REPEATED:
			count(COUNTER_KNOCK_REPEATED);
			return XDP_DROP;
		case RESET:
			count(COUNTER_KNOCK_RESET);
			if (budgeted(now))
				emit(EVENT_RESET, pkt, held, stage, now, 0);
			/* The first step of another service's sequence starts that
			 * one, in the slot just freed (a step of the same sequence
			 * is never a reset: it repeats or advances). */
			if (!(match & 1))
				return match ? XDP_DROP : -1;
			freed = 1;
			break;
		}
		/* No progress after all: on as a source without any. The slot
		 * just freed is the first free one unless the search passed one
		 * before it (it stopped at this slot): a first knock takes it
		 * rather than someone else's progress. */
		if (freed && !ws.have_free)
			ws.victim = ws.found;
	}

	if (!match)
		return -1;
	if (!(match & 1))
		return XDP_DROP; /* a later step out of order: still a knock port */

	if (granted(pkt, service, lz)) {
		count(COUNTER_KNOCK_WHILE_GRANTED);
		return XDP_DROP;
	}
	const struct service *svc = &cfg->services[service];
	__u64 now = now_ns(lz);
	count(COUNTER_KNOCK_ADVANCED);
	if (svc->nsteps == 1) {
		grant(svc, service, pkt, now);
		return XDP_DROP;
	}
	/* The first step takes a free slot of the set, else the one holding
	 * the oldest progress (see search_way). */
	if (!searched)
		search_set(&ws);
	__u32 idx = ws.base + ws.victim;
	if (idx >= knock_slots)
		return XDP_DROP;
	tag = tags + idx;
	k = bpf_map_lookup_elem(&knocks, &idx);
	if (!k)
		return XDP_DROP;
	__u64 deadline = now + svc->step_timeout_ns;
	bpf_spin_lock(&k->lock);
	__builtin_memcpy(k->addr, pkt->src.addr, sizeof(k->addr));
	k->generation = cfg->generation;
	k->deadline_ns = deadline;
	k->stage = 1;
	k->service = service;
	*tag = tag8;
	bpf_spin_unlock(&k->lock);
	if (budgeted(now))
		emit(EVENT_KNOCK, pkt, service, 1, now, deadline);
	return XDP_DROP;
}

/* The knock state machine for a SYN or datagram whose destination's
 * port-table entry is e. */
static __always_inline int knock(const struct config *cfg, const struct packet *pkt, struct lazy *lz, __u8 e)
{
	/* Bit i set: this packet is step i of the sequence of the service its
	 * port is a step of (the port table says which). */
	__u32 match = 0;
	__u32 service = 0;
	if (e & KG_PORT_STEP) {
		service = e & KG_PORT_SERVICE;
		if (service >= KG_MAX_SERVICES)
			return -1;
		const struct service *svc = &cfg->services[service];
#pragma unroll
		for (int i = 0; i < KG_MAX_STEPS; i++) {
			if (i < svc->nsteps && svc->steps[i].port == pkt->dport && svc->steps[i].proto == pkt->proto)
				match |= 1u << i;
		}
	}

	struct place pl = place_of(cfg, &pkt->src);
	__u32 zero = 0;
	__u8 *tags = bpf_map_lookup_elem(&knock_tags, &zero);
	if (!tags || pl.set >= knock_sets) /* cannot be: the set is scaled below it */
		return match ? XDP_DROP : -1;
	/* Does any byte of the set's tags carry the source's tag? One load and
	 * a few ALU ops, whatever the byte order: a stranger stops here. */
	__u32 x = *(volatile __u32 *)(tags + pl.set * KG_KNOCK_WAYS) ^ (pl.tag * 0x01010101u);
	__u32 maybe = ((x - 0x01010101u) & ~x & 0x80808080u) != 0;
	if (!maybe) {
		if (!match)
			return -1;
		if (!(match & 1))
			return XDP_DROP; /* a later step out of order: still a knock port */
	}
	return knock_table(cfg, pkt, lz, match | service << 16, maybe);
}

/* Is pkt's source on the allow list of every service, or of service's own?
 * Each trie lookup only when its list has entries. */
static __always_inline int allowed(const struct config *cfg, const struct packet *pkt, __u32 service)
{
	__u32 own = cfg->services[service].allow_count;
	if (!cfg->allow_count && !own)
		return 0;
	struct allow_key key = { .prefixlen = 16 + 128, .epoch = cfg->allow_epoch, .service = KG_ALLOW_ANY };
	__builtin_memcpy(key.addr, pkt->src.addr, 16);
	if (cfg->allow_count && bpf_map_lookup_elem(&allow, &key))
		return 1;
	key.service = service;
	return own && bpf_map_lookup_elem(&allow, &key);
}

/*
 * An inbound packet of a live flow of the host's? key is the flow as the
 * host sees it (the packet's reverse); tcp_flags, the packet's, mark the
 * flow answered and closing; base and tag are its place (flow_place_of). A
 * BPF global function, past the tag check: only a packet whose tag its set
 * carries pays for the look.
 */
__attribute__((noinline)) int flow_answer(const struct config *cfg, const struct flow_key *key, __u32 tcp_flags,
					  __u32 base, __u32 tag)
{
	if (!cfg || !key)
		return 0;
	__u8 *tags = flow_tag_bytes();
	if (!tags)
		return 0;
	__s64 at = flow_find(tags, base, tag, key);
	if (at < 0)
		return 0;
	__u32 idx = at;
	struct flow *f = bpf_map_lookup_elem(&flows, &idx);
	if (!f || !flow_live(cfg, f, flow_now()))
		return 0;
	/* Inbound packets only mark the flow: never make it, never keep it
	 * alive (last_ns is the host's). An RST shortens it until the host
	 * sends again, so a forged one cannot end a session that goes on. */
	__u64 mark = FLOW_ANSWERED;
	if (tcp_flags & TCP_FLAG_FIN)
		mark |= FLOW_FIN_IN;
	if (tcp_flags & TCP_FLAG_RST)
		mark |= FLOW_RST_IN;
	if ((f->flags & mark) != mark)
		__sync_fetch_and_or(&f->flags, mark);
	return 1;
}

/*
 * Is pkt in a live flow of the host's (reverse: pkt came in, so its source
 * is the flow's remote end)? The cheap part inline: the place, hashed from
 * the packet's fields, and its set's tags; only a packet whose tag the set
 * carries builds the key and pays for the look.
 */
static __always_inline int flow_in(const struct config *cfg, const struct packet *pkt, int reverse, __u32 tcp_flags)
{
	__u8 *tags = flow_tag_bytes();
	if (!tags)
		return 0;
	struct flow_place pl = reverse ? flow_place(cfg, pkt->src.addr, pkt->dport, pkt->sport, pkt->proto)
				       : flow_place(cfg, pkt->dst.addr, pkt->sport, pkt->dport, pkt->proto);
	if (pl.base >= flow_slots || !flow_tagged(tags, pl.base, pl.tag))
		return 0;
	struct flow_key key;
	flow_key_of(&key, pkt, reverse);
	return flow_answer(cfg, &key, tcp_flags, pl.base, pl.tag);
}

/*
 * A datagram to the SPA port: verified (spa.h) and, when valid, its address
 * granted as a completed sequence would be, with an open event naming the
 * key. Every outcome is counted; the packet itself is always dropped, so
 * the SPA port looks filtered. A BPF global function: verified once, and
 * only SPA datagrams pay for its stack.
 */
__attribute__((noinline)) int spa(struct xdp_md *ctx, const struct config *cfg, const struct packet *pkt)
{
	if (!ctx || !cfg || !pkt)
		return 0;
	struct spa_grant sg;
	__u32 outcome = spa_verify(ctx, cfg, pkt, &sg);
	count(outcome);
	if (outcome != COUNTER_SPA_ACCEPTED)
		return 0;
	struct event_about a = { .key_id = sg.key_id, .port = pkt->dport, .proto = IPPROTO_UDP };
	__builtin_memcpy(a.addr, sg.addr.addr, 16);
	__u64 now = clock_boot();
	/* Each service the packet opens (spa_verify left only live ones). */
	for (__u32 s = 0; s < KG_MAX_SERVICES; s++) {
		a.service = s;
		if (sg.services & (1u << s))
			grant_addr(&a, sg.open_ns ? sg.open_ns : cfg->services[s].open_ns, now);
	}
	return 1;
}

#include "fwknop.h"

/* Under --protect all, the replies a DHCP or DHCPv6 client needs: they come
 * from a server that was asked by broadcast or multicast, which no flow
 * records. */
static __always_inline int dhcp_reply(const struct packet *pkt)
{
	return pkt->proto == IPPROTO_UDP &&
	       ((pkt->sport == 67 && pkt->dport == 68) || (pkt->sport == 547 && pkt->dport == 546));
}

SEC("xdp")
int knockgate(struct xdp_md *ctx)
{
	struct packet pkt;
	struct lazy lz = { .now = 0 };

	int parsed = parse_packet(ctx, &pkt);
	switch (parsed) {
	case PARSE_PASS:
		return verdict(ctx, VERDICT_PASSED);
	case PARSE_MALFORMED:
		return verdict(ctx, VERDICT_DROPPED_MALFORMED);
	}

	const struct config *cfg = active_config(&lz);
	if (!cfg)
		return verdict(ctx, VERDICT_PASSED);

	if (parsed == PARSE_ICMP_ERROR) {
		/* An error about a packet the host sent from a protected port
		 * passes when that packet's flow is live (path MTU discovery,
		 * unreachables of the host's own connections); otherwise it
		 * could only be forged. */
		if (!(cfg->flags & CONFIG_FLOWS) || !protecting(cfg, pkt.proto, pkt.sport))
			return verdict(ctx, VERDICT_PASSED);
		if (flow_in(cfg, &pkt, 0, 0))
			return verdict(ctx, VERDICT_PASSED_FLOW);
		return verdict(ctx, VERDICT_DROPPED_PROTECTED);
	}

	if (pkt.proto == IPPROTO_UDP && pkt.dport == cfg->spa_port && cfg->spa_port) {
		/* Two forms on one port: knockgate's binary datagrams, fwknop's
		 * base64 text (fwknop.h). */
		if (fwknop_form(&pkt))
			fwknop(ctx, &pkt);
		else
			spa(ctx, cfg, &pkt);
		return verdict(ctx, VERDICT_DROPPED_SPA);
	}

	__u8 syn = pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN);
	int is_knock = pkt.proto == IPPROTO_UDP || syn == TCP_FLAG_SYN;
	/* One byte of the port table says what the port is: a step of a
	 * sequence, a service's, or nobody's. */
	__u8 e = port_entry(cfg, pkt.proto, pkt.dport);
	if (is_knock && (cfg->flags & CONFIG_KNOCKS) && knock(cfg, &pkt, &lz, e) >= 0)
		return verdict(ctx, VERDICT_DROPPED_KNOCK);

	/* The service the port belongs to, plus one. */
	__u32 service = protector(cfg, e);
	if (!service--)
		return verdict(ctx, VERDICT_PASSED);
	if (service >= KG_MAX_SERVICES) /* cannot be: the loader writes 1..KG_MAX_SERVICES */
		return verdict(ctx, VERDICT_DROPPED_PROTECTED);
	/* A reply in a flow of the host's; never a bare SYN: a new connection
	 * is judged as new, whatever came before. */
	if ((cfg->flags & CONFIG_FLOWS) && !(pkt.proto == IPPROTO_TCP && syn == TCP_FLAG_SYN) &&
	    flow_in(cfg, &pkt, 1, pkt.tcp_flags))
		return verdict(ctx, VERDICT_PASSED_FLOW);
	if (granted(&pkt, service, &lz))
		return verdict(ctx, VERDICT_PASSED_GRANTED);
	if (allowed(cfg, &pkt, service))
		return verdict(ctx, VERDICT_PASSED_ALLOWED);
	if ((cfg->flags & CONFIG_PROTECT_ALL) && dhcp_reply(&pkt))
		return verdict(ctx, VERDICT_PASSED);
	return verdict(ctx, VERDICT_DROPPED_PROTECTED);
}
