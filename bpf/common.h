/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What both programs read: the configuration in force and the gate's
 * counters. The XDP program (knockgate.c) and the tcx egress program
 * (egress.c) are separate objects; the loader makes these maps once, with
 * the XDP program, and hands them to the egress program by name.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "knockgate.h"
#include "clock.h"

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &reason);
	/* Per-CPU slot, and XDP runs with preemption off: no other writer can
	 * interleave, so a plain increment is exact without atomics. */
	if (n)
		*n += 1;
}

/* Per-packet values worked out at most once, and only when a decision
 * needs them. */
struct lazy {
	__u64 now; /* CLOCK_BOOTTIME; 0: not read yet */
};

static __always_inline __u64 now_ns(struct lazy *lz)
{
	if (!lz->now)
		lz->now = clock_boot();
	return lz->now;
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

/* The port table's entry for proto/port (see KG_PORT_STEP). */
static __always_inline __u8 port_entry(const struct config *cfg, __u8 proto, __u16 port)
{
	return cfg->ports[proto == IPPROTO_UDP][port];
}

/* The service that protects a port whose port-table entry is e, plus one;
 * 0: none. A step port is protected (against what is no knock) only by the
 * service that protects all. */
static __always_inline __u32 protector(const struct config *cfg, __u8 e)
{
	return e & KG_PORT_STEP ? cfg->all_service : e;
}

/* The service that protects proto/port, plus one (see protector). */
static __always_inline __u32 protecting(const struct config *cfg, __u8 proto, __u16 port)
{
	return protector(cfg, port_entry(cfg, proto, port));
}
