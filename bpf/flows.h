/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow table: the flows the host sends on, learned by the tc egress
 * program and looked up by the XDP program, so that replies to the host's
 * own connections (and the rest of a session a grant let in) pass protected
 * ports without any netfilter state. Like the knock table it is 4-way
 * set-associative, with a byte of tag per slot in a small array
 * (flow_tags), so an inbound packet that belongs to no flow costs one load
 * of its set's 4 tags. A full set does not evict a live flow: the new flow
 * goes unrecorded (counted), and closed or idle flows free their slots as
 * new ones need them. Only the host's packets make or keep a flow.
 */
#pragma once

#include "parsing.h"
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct flow);
} flows SEC(".maps");

/* One byte per flow slot: 0 free, else its flow's tag. Sized by the loader
 * (one value of flow_slots bytes); mmapable, so Go can seed flows. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(key_size, 4);
	__uint(value_size, 65536);
} flow_tags SEC(".maps");

/* flow_tags' one value: the tag bytes of every slot. */
static __always_inline __u8 *flow_tag_bytes(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&flow_tags, &zero);
}

/* The flow table's number of sets and slots, fixed at load time from its
 * max_entries (--max-flows). */
volatile const __u32 flow_sets = 65536 / KG_FLOW_WAYS;
volatile const __u32 flow_slots = 65536;

/*
 * The flows' clock: CLOCK_MONOTONIC_COARSE, the time of the last tick.
 * Every packet of every flow reads it (the host's to refresh, the peer's to
 * check), and on the benchmark machine the fine clock the grants use costs
 * some 45 ns a read where this one costs a few; a tick (1-10 ms) is nothing
 * against idle timeouts of seconds to hours. It stops while the machine is
 * suspended, which only makes a flow idle for less: the host's connections
 * did not idle either. maps.FlowNow reads the same clock.
 */
static __always_inline __u64 flow_now(void)
{
	return clock_coarse();
}

struct flow_place {
	__u32 base; /* the set's first slot */
	__u8 tag;
};

/*
 * Where a flow lives: a keyed multiplicative hash of its remote address and
 * its ports and protocol (the local address is compared, not hashed: a host
 * has few), scaled to the sets, and a tag from another product's top byte.
 * Taken from the fields, so a packet's place costs no key on the stack.
 * Mirrored by maps.FlowPlace; change both or neither.
 */
static __always_inline struct flow_place flow_place(const struct config *cfg, const __u8 *remote, __u16 local_port,
						    __u16 remote_port, __u8 proto)
{
	__u64 a, b, c = (__u64)local_port | (__u64)remote_port << 16 | (__u64)proto << 32;
	__builtin_memcpy(&a, remote, 8);
	__builtin_memcpy(&b, remote + 8, 8);
	__u64 h = (a ^ cfg->slot_key[0]) * 0x9e3779b97f4a7c15ULL + (b ^ cfg->slot_key[1]) * 0xbf58476d1ce4e5b9ULL +
		  (c ^ cfg->slot_key[0]) * 0xd6e8feb86659fd93ULL;
	__u32 tag = (h * 0x94d049bb133111ebULL) >> 56;
	struct flow_place pl = { .base = (((h >> 32) * flow_sets) >> 32) * KG_FLOW_WAYS, .tag = tag ? tag : 1 };
	return pl;
}

static __always_inline struct flow_place flow_place_of(const struct config *cfg, const struct flow_key *k)
{
	return flow_place(cfg, k->remote, k->local_port, k->remote_port, k->proto);
}

static __always_inline int same_flow(const struct flow_key *x, const struct flow_key *y)
{
	const __u64 *a = (const __u64 *)x, *b = (const __u64 *)y;
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4];
}

/* Is the flow still live at now? How long it may idle depends on what was
 * seen of it: a connection nobody answered, or one closing, goes soon. */
static __always_inline int flow_live(const struct config *cfg, const struct flow *f, __u64 now)
{
	__u64 flags = f->flags;
	__u64 ttl = cfg->flow_idle_udp_ns;
	if (f->key.proto == IPPROTO_TCP) {
		if ((flags & (FLOW_FIN_OUT | FLOW_FIN_IN)) == (FLOW_FIN_OUT | FLOW_FIN_IN) || (flags & FLOW_RST_IN))
			ttl = KG_FLOW_CLOSING_NS;
		else if (!(flags & FLOW_ANSWERED))
			ttl = KG_FLOW_UNANSWERED_NS;
		else
			ttl = cfg->flow_idle_tcp_ns;
	}
	return now < *(volatile __u64 *)&f->last_ns + ttl;
}

/* Does any tag of the set starting at base carry tag? */
static __always_inline int flow_tagged(const __u8 *tags, __u32 base, __u8 tag)
{
	__u32 x = *(volatile const __u32 *)(tags + base) ^ (tag * 0x01010101u);
	return ((x - 0x01010101u) & ~x & 0x80808080u) != 0;
}

/* The index of the slot of the set at base that holds key, or -1. */
static __always_inline __s64 flow_find(const __u8 *tags, __u32 base, __u8 tag, const struct flow_key *key)
{
#pragma unroll
	for (__u32 w = 0; w < KG_FLOW_WAYS; w++) {
		__u32 idx = base + w;
		if (idx >= flow_slots)
			return -1;
		if (tags[idx] != tag)
			continue;
		struct flow *f = bpf_map_lookup_elem(&flows, &idx);
		if (f && same_flow(&f->key, key))
			return idx;
	}
	return -1;
}

/* The flow key of a packet as the host sees it: local is the packet's
 * destination for an inbound packet (reverse), its source for one the host
 * sent (and for the packet an ICMP error quotes). */
static __always_inline void flow_key_of(struct flow_key *k, const struct packet *pkt, int reverse)
{
	__builtin_memcpy(k->local, reverse ? pkt->dst.addr : pkt->src.addr, 16);
	__builtin_memcpy(k->remote, reverse ? pkt->src.addr : pkt->dst.addr, 16);
	k->local_port = reverse ? pkt->dport : pkt->sport;
	k->remote_port = reverse ? pkt->sport : pkt->dport;
	k->proto = pkt->proto;
	__builtin_memset(k->pad, 0, sizeof(k->pad));
}
