//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * knockgate's tcx egress program: it learns the flows the host sends on its
 * gate's interfaces (flows.h), so that the XDP program (knockgate.c) lets
 * their replies through protected ports. It never changes a packet's fate.
 * Its own object: the loader gives it the XDP program's maps by name.
 */
#include "parsing.h"
#include "common.h"
#include "flows.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Record the flow of a packet the host sends: refresh it when known (an RST
 * from the host ends it), make it when not, in a free or no-longer-live slot
 * of its set; a set full of live flows keeps them and the new flow goes
 * unrecorded (counted). A BPF global function: verified once.
 */
__attribute__((noinline)) int flow_learn(const struct config *cfg, const struct flow_key *key, __u32 tcp_flags)
{
	if (!cfg || !key)
		return 0;
	__u8 *tags = flow_tag_bytes();
	if (!tags)
		return 0;
	__u64 now = flow_now();
	struct flow_place pl = flow_place_of(cfg, key);
	int rst = key->proto == IPPROTO_TCP && (tcp_flags & TCP_FLAG_RST);
	__s64 at = -1;
	if (flow_tagged(tags, pl.base, pl.tag))
		at = flow_find(tags, pl.base, pl.tag, key);
	if (at >= 0) {
		__u32 idx = at;
		if (idx >= flow_slots)
			return 0;
		__u8 *tag = tags + idx;
		struct flow *f = bpf_map_lookup_elem(&flows, &idx);
		if (!f)
			return 0;
		if (rst) {
			bpf_spin_lock(&f->lock);
			if (same_flow(&f->key, key)) {
				__builtin_memset(&f->key, 0, sizeof(f->key));
				*tag = 0;
			}
			bpf_spin_unlock(&f->lock);
			count(COUNTER_FLOWS_ENDED);
			return 0;
		}
		f->last_ns = now;
		if (f->flags & FLOW_RST_IN)
			__sync_fetch_and_and(&f->flags, ~(__u64)FLOW_RST_IN);
		if ((tcp_flags & TCP_FLAG_FIN) && !(f->flags & FLOW_FIN_OUT))
			__sync_fetch_and_or(&f->flags, FLOW_FIN_OUT);
		return 0;
	}
	if (rst)
		return 0; /* an RST never makes a flow */

	__s32 way = -1;
#pragma unroll
	for (__u32 w = 0; w < KG_FLOW_WAYS; w++) {
		__u32 idx = pl.base + w;
		if (idx >= flow_slots)
			return 0;
		if (!tags[idx]) {
			way = w;
			break;
		}
		struct flow *g = bpf_map_lookup_elem(&flows, &idx);
		if (g && !flow_live(cfg, g, now) && way < 0)
			way = w;
	}
	if (way < 0) {
		count(COUNTER_FLOWS_FULL);
		return 0;
	}
	__u32 idx = pl.base + way;
	if (idx >= flow_slots)
		return 0;
	__u8 *tag = tags + idx;
	struct flow *f = bpf_map_lookup_elem(&flows, &idx);
	if (!f)
		return 0;
	bpf_spin_lock(&f->lock);
	__builtin_memcpy(&f->key, key, sizeof(f->key));
	f->last_ns = now;
	f->flags = (tcp_flags & TCP_FLAG_FIN) ? FLOW_FIN_OUT : 0;
	*tag = pl.tag;
	bpf_spin_unlock(&f->lock);
	count(COUNTER_FLOWS_LEARNED);
	return 0;
}

/* tcx: on to the next program (or the packet's way out). The system's
 * headers may predate tcx's enum. */
#define KG_TCX_NEXT (-1)

/* The tc (tcx) egress program: every packet the host sends on the gate's
 * interfaces, for the flow table. It never changes a packet's fate. */
SEC("tcx/egress")
int egress(struct __sk_buff *skb)
{
	struct lazy lz = { .now = 0 };
	const struct config *cfg = active_config(&lz);
	if (!cfg || !(cfg->flags & CONFIG_FLOWS))
		return KG_TCX_NEXT;
	struct packet pkt;
	int parsed = parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, &pkt);
	if (parsed == PARSE_MALFORMED && skb->len > skb->data_end - skb->data) {
		/* Headers beyond the linear part: pull them in, look again. */
		bpf_skb_pull_data(skb, skb->len < 256 ? skb->len : 256);
		parsed = parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, &pkt);
	}
	/* Only a flow from a protected port can need its replies let in: the
	 * replies to any other go to a port nothing guards. Learning only these
	 * keeps the table for what it is for, so a flood that makes the host
	 * answer on an open port (SYN+ACKs from a public web server) cannot
	 * fill it. */
	if (parsed != PARSE_L4 || !protecting(cfg, pkt.proto, pkt.sport))
		return KG_TCX_NEXT;
	struct flow_key key;
	flow_key_of(&key, &pkt, 0);
	flow_learn(cfg, &key, pkt.tcp_flags);
	return KG_TCX_NEXT;
}
