/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The clocks the programs read: CLOCK_BOOTTIME for knock deadlines and
 * grants, CLOCK_MONOTONIC_COARSE for flows, CLOCK_TAI for SPA timestamps.
 * Each is read through here so that tests can run the program on a clock
 * of their own, moved without sleeping: test_clock is a load-time constant,
 * 0 in every gate the loader makes, so the verifier sees the test branch as
 * dead and removes it; only a test's load sets it, and then the readings
 * come from the test_*_ns globals, which the test writes.
 */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

volatile const __u8 test_clock = 0;

/* A section of their own, so that both programs (two objects) share one map
 * of them: the loader hands the XDP object's to the egress object. */
volatile __u64 test_boot_ns SEC(".data.test_clock") = 0;
volatile __u64 test_coarse_ns SEC(".data.test_clock") = 0;
volatile __u64 test_tai_ns SEC(".data.test_clock") = 0;

static __always_inline __u64 clock_boot(void)
{
	return test_clock ? test_boot_ns : bpf_ktime_get_boot_ns();
}

static __always_inline __u64 clock_coarse(void)
{
	return test_clock ? test_coarse_ns : bpf_ktime_get_coarse_ns();
}

static __always_inline __u64 clock_tai(void)
{
	return test_clock ? test_tai_ns : bpf_ktime_get_tai_ns();
}
