//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * knockgate: a port-knocking gate in XDP.
 *
 * parse -> knock state machine -> verdict. Per packet: one parse, a handful
 * of O(1) map lookups, and the clock is read only when a decision needs it
 * (a map hit or a knock), never on the plain pass or unauthorised-drop path.
 */
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Two configuration slots and the index of the live one. The loader writes
 * the idle slot, then flips config_slot (a single aligned 32-bit store), then
 * waits for an RCU grace period before it may write again; so a packet reads
 * one complete configuration, old or new. Arrays, not a hash: the JIT inlines
 * array lookups, which keeps the per-packet cost near zero.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct config);
} configs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config_slot SEC(".maps");

/* Knock progress: LRU, so a spoofed flood only recycles other progress.
 * max_entries is set by the loader (--max-sources). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct source);
	__type(value, struct progress);
} knocks SEC(".maps");

/* Grants live apart from progress: entries are only made by a completed
 * sequence (or the operator), so knock floods never evict them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct source);
	__type(value, struct grant);
} grants SEC(".maps");

/*
 * A one-sided filter in front of knocks and grants: a source whose slot
 * (hint_slot, a hash of its address) counts zero has an entry in neither, so
 * a stranger's packet costs one inlined array load instead of two hash
 * lookups (about 45 ns here). The count goes up before an entry is made and
 * down after one is deleted, by the program and by the Go side alike
 * (maps.HintSlot hashes the same way), so it never reads zero while an entry
 * exists; it may read high (an entry the LRU evicted, a slot two sources
 * share), which only costs the lookups. Mmapable, so Go can add to a count
 * atomically instead of rewriting the whole value.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct hint_counts);
} hints SEC(".maps");

/* Operator CIDRs that always pass protected ports. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, __u8);
} allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

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

static __always_inline void count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &reason);
	/* Per-CPU slot, and XDP runs with preemption off: no other writer can
	 * interleave, so a plain increment is exact without atomics. */
	if (n)
		*n += 1;
}

/* Count the packet's verdict in the slot of the interface it came in on and
 * turn it into the XDP action. */
static __always_inline int verdict(struct xdp_md *ctx, __u32 v)
{
	__u32 idx = (ctx->ingress_ifindex & (KG_IFACE_SLOTS - 1)) * VERDICT_MAX + v;
	__u64 *n = bpf_map_lookup_elem(&verdicts, &idx);
	if (n)
		*n += 1; /* per CPU, preemption off: exact without atomics */
	return v <= VERDICT_PASSED_ALLOWED ? XDP_PASS : XDP_DROP;
}

/* Per-packet values worked out at most once, and only when a decision
 * needs them. */
struct lazy {
	__u64 now; /* CLOCK_BOOTTIME; 0: not read yet */
	__s32 hinted; /* see hinted(); -1: not looked at yet */
};

static __always_inline __u64 now_ns(struct lazy *lz)
{
	if (!lz->now)
		lz->now = bpf_ktime_get_boot_ns();
	return lz->now;
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

static __always_inline void emit(__u8 type, const struct packet *pkt, __u8 stage,
				 __u64 now, __u64 expires)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		/* Observability must never change a verdict. */
		count(COUNTER_EVENTS_LOST);
		return;
	}
	ev->time_ns = now;
	ev->expires_ns = expires;
	__builtin_memcpy(ev->addr, pkt->src.addr, 16);
	ev->port = pkt->dport;
	ev->proto = pkt->proto;
	ev->type = type;
	ev->stage = stage;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	bpf_ringbuf_submit(ev, 0);
}

/* The hint slot of a source: a multiplicative hash of its two halves.
 * Mirrored by maps.HintSlot; change both or neither. */
static __always_inline __u32 hint_slot(const struct source *src)
{
	__u64 a, b;
	__builtin_memcpy(&a, src->addr, 8);
	__builtin_memcpy(&b, src->addr + 8, 8);
	return ((a ^ b) * 0x9e3779b97f4a7c15ULL) >> (64 - 16);
}

static __always_inline __u64 *hint_count(const struct source *src)
{
	__u32 zero = 0;
	struct hint_counts *h = bpf_map_lookup_elem(&hints, &zero);
	if (!h)
		return NULL;
	return &h->slot[hint_slot(src) & (KG_HINT_SLOTS - 1)];
}

/* May the packet's source have an entry in knocks or grants? Looked at
 * once per packet: an entry made later in the same run is never looked up
 * again, and one deleted only leaves the answer high, which is safe. */
static __always_inline int hinted(const struct packet *pkt, struct lazy *lz)
{
	if (lz->hinted < 0) {
		__u64 *n = hint_count(&pkt->src);
		lz->hinted = !n || *(volatile __u64 *)n;
	}
	return lz->hinted;
}

/*
 * Insert or replace src's entry in knocks or grants, keeping its hint count
 * exact: counted before a new entry exists; a replaced entry is not counted
 * again. Returns 0 or the map's error.
 */
static __always_inline long put_entry(void *map, const struct source *src, const void *value)
{
	__u64 *n = hint_count(src);
	if (!n)
		return -1;
	/* Two tries: an entry deleted between the two updates is made anew. */
	for (int i = 0; i < 2; i++) {
		__sync_fetch_and_add(n, 1);
		long err = bpf_map_update_elem(map, src, value, BPF_NOEXIST);
		if (!err)
			return 0;
		__sync_fetch_and_add(n, -1);
		if (err != -17 /* EEXIST */)
			return err;
		err = bpf_map_update_elem(map, src, value, BPF_EXIST);
		if (err != -2 /* ENOENT */)
			return err;
	}
	return -2;
}

/* Delete src's entry from knocks or grants; uncount it if it was there. */
static __always_inline void delete_entry(void *map, const struct source *src)
{
	if (bpf_map_delete_elem(map, src))
		return;
	__u64 *n = hint_count(src);
	if (n)
		__sync_fetch_and_add(n, -1);
}

static __always_inline int port_protected(const struct config *cfg, __u8 proto, __u16 port)
{
	const __u64 *bits = proto == IPPROTO_TCP ? cfg->protected_tcp : cfg->protected_udp;
	return (bits[port >> 6] >> (port & 63)) & 1;
}

/*
 * Live grant? An expired grant is reported once and left in place: deleting
 * it here could race with another CPU renewing it (a sequence completed at
 * that moment) and delete the renewal. It stays until a new grant replaces
 * it, `revoke` removes it, or the LRU recycles it.
 */
static __always_inline int granted(const struct packet *pkt, struct lazy *lz)
{
	if (!hinted(pkt, lz))
		return 0;
	struct grant *g = bpf_map_lookup_elem(&grants, &pkt->src);
	if (!g)
		return 0;
	__u64 expires = g->expires_ns;
	if (now_ns(lz) < expires)
		return 1;
	if (!g->expiry_reported) {
		/* A racing store here can at worst repeat or skip an event. */
		g->expiry_reported = 1;
		count(COUNTER_GRANT_EXPIRED);
		emit(EVENT_EXPIRE, pkt, 0, lz->now, expires);
	}
	return 0;
}

static __always_inline void grant(const struct config *cfg, const struct packet *pkt, __u64 now)
{
	struct grant g = { .expires_ns = now + cfg->open_ns };
	struct grant *old = bpf_map_lookup_elem(&grants, &pkt->src);
	/* Completing the sequence never shortens a grant already held. */
	if (old && old->expires_ns > g.expires_ns)
		g.expires_ns = old->expires_ns;
	if (put_entry(&grants, &pkt->src, &g)) {
		count(COUNTER_GRANT_FAILED);
		return;
	}
	count(COUNTER_GRANTED);
	emit(EVENT_OPEN, pkt, cfg->nsteps, now, g.expires_ns);
}

/* Progress after a step accepted at now: the next is due within the step
 * timeout. */
static __always_inline struct progress progress_after(const struct config *cfg, __u8 stage, __u64 now)
{
	struct progress p = {
		.deadline_ns = now + cfg->step_timeout_ns,
		.generation = cfg->generation,
		.stage = stage,
	};
	return p;
}

/*
 * The knock state machine, for a TCP SYN (without ACK, RST, FIN) or a UDP
 * datagram. Returns XDP_DROP when the packet was a knock, -1 when the packet
 * is not a knock and must be judged by the protected-port rules.
 */
static __always_inline int knock(const struct config *cfg, const struct packet *pkt, struct lazy *lz)
{
	/* Bit i set: this packet is step i of the sequence. */
	__u32 match = 0;
#pragma unroll
	for (int i = 0; i < KG_MAX_STEPS; i++) {
		if (i < cfg->nsteps && cfg->steps[i].port == pkt->dport &&
		    cfg->steps[i].proto == pkt->proto)
			match |= 1u << i;
	}

	struct progress *p = NULL;
	if (hinted(pkt, lz))
		p = bpf_map_lookup_elem(&knocks, &pkt->src);
	if (p) {
		__u32 stage = p->stage;
		if (p->generation == cfg->generation && now_ns(lz) < p->deadline_ns &&
		    stage > 0 && stage < cfg->nsteps && stage < KG_MAX_STEPS) {
			if (match & (1u << stage)) {
				stage++;
				if (stage == cfg->nsteps) {
					count(COUNTER_KNOCK_ADVANCED);
					delete_entry(&knocks, &pkt->src);
					grant(cfg, pkt, lz->now);
					return XDP_DROP;
				}
				/* An update, not a store through p: if another CPU
				 * reset this source meanwhile, the LRU may already have
				 * handed p's element to another source. */
				struct progress next = progress_after(cfg, stage, lz->now);
				if (bpf_map_update_elem(&knocks, &pkt->src, &next, BPF_EXIST))
					return XDP_DROP; /* reset meanwhile: the step is lost */
				count(COUNTER_KNOCK_ADVANCED);
				if (budgeted(lz->now))
					emit(EVENT_KNOCK, pkt, stage, lz->now, next.deadline_ns);
				return XDP_DROP;
			}
			if (match & ((1u << stage) - 1)) {
				/* A retransmitted SYN of a step already taken
				 * (browsers resend at 1 s and 3 s). */
				count(COUNTER_KNOCK_REPEATED);
				return XDP_DROP;
			}
			/* Any other SYN or datagram: start over, so that an
			 * ordered port sweep can never walk the sequence. */
			delete_entry(&knocks, &pkt->src);
			count(COUNTER_KNOCK_RESET);
			if (budgeted(lz->now))
				emit(EVENT_RESET, pkt, stage, lz->now, 0);
			return match ? XDP_DROP : -1;
		}
		/* Expired or made under an older configuration: no progress.
		 * A first step reuses the entry below; otherwise it goes now, so
		 * the source's hint count falls back to zero and its next
		 * packets skip both lookups again. (Should another CPU restart
		 * this source's sequence at this very moment, the fresh start is
		 * deleted with it, and the client knocks again.) */
		if (!(match & 1)) {
			delete_entry(&knocks, &pkt->src);
			p = NULL;
		}
	}

	if (!match)
		return -1;
	if (!(match & 1))
		return XDP_DROP; /* a later step out of order: still a knock port */

	if (granted(pkt, lz)) {
		count(COUNTER_KNOCK_WHILE_GRANTED);
		return XDP_DROP;
	}
	count(COUNTER_KNOCK_ADVANCED);
	if (cfg->nsteps == 1) {
		grant(cfg, pkt, now_ns(lz));
		return XDP_DROP;
	}
	struct progress fresh = progress_after(cfg, 1, now_ns(lz));
	/* A stale entry is already counted in its hint slot: replace it. */
	if (!p || bpf_map_update_elem(&knocks, &pkt->src, &fresh, BPF_EXIST))
		put_entry(&knocks, &pkt->src, &fresh);
	if (budgeted(lz->now))
		emit(EVENT_KNOCK, pkt, 1, lz->now, fresh.deadline_ns);
	return XDP_DROP;
}

static __always_inline int allowed(const struct packet *pkt)
{
	struct allow_key key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, pkt->src.addr, 16);
	return bpf_map_lookup_elem(&allow, &key) != NULL;
}

/*
 * The configuration in force: configs[config_slot], unless that one is a
 * safe-mode change whose confirmation deadline has passed, in which case the
 * configuration before it (the other slot) rules again. The clock is read
 * only while a change awaits confirmation.
 */
static __always_inline const struct config *active_config(struct lazy *lz)
{
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&config_slot, &zero);
	if (!slot)
		return NULL;
	__u32 idx = *slot & 1;
	const struct config *cfg = bpf_map_lookup_elem(&configs, &idx);
	if (cfg && cfg->confirm_by_ns && now_ns(lz) >= cfg->confirm_by_ns) {
		idx ^= 1;
		cfg = bpf_map_lookup_elem(&configs, &idx);
	}
	return cfg;
}

SEC("xdp")
int knockgate(struct xdp_md *ctx)
{
	struct packet pkt;
	struct lazy lz = { .now = 0, .hinted = -1 };

	switch (parse_packet(ctx, &pkt)) {
	case PARSE_PASS:
		return verdict(ctx, VERDICT_PASSED);
	case PARSE_MALFORMED:
		return verdict(ctx, VERDICT_DROPPED_MALFORMED);
	}

	const struct config *cfg = active_config(&lz);
	if (!cfg)
		return verdict(ctx, VERDICT_PASSED);

	int is_knock = pkt.proto == IPPROTO_UDP ||
		       (pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN)) ==
			       TCP_FLAG_SYN;
	if (is_knock && cfg->nsteps && knock(cfg, &pkt, &lz) >= 0)
		return verdict(ctx, VERDICT_DROPPED_KNOCK);

	if (!port_protected(cfg, pkt.proto, pkt.dport))
		return verdict(ctx, VERDICT_PASSED);
	if (granted(&pkt, &lz))
		return verdict(ctx, VERDICT_PASSED_GRANTED);
	if (cfg->allow_count && allowed(&pkt))
		return verdict(ctx, VERDICT_PASSED_ALLOWED);
	return verdict(ctx, VERDICT_DROPPED_PROTECTED);
}
