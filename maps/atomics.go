package maps

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The hint counts are 64-bit counters in memory this process shares with
// the program (mmap), which both change atomically: the program with BPF's
// atomic add, this package with sync/atomic. On 64-bit CPUs and 386 (whose
// LOCK CMPXCHG8B the kernel's atomic64 uses too) the two are one kind of
// atomic operation. On 32-bit ARM they are one kind only when both use the
// LDREXD/STREXD pair:
//
//   - the kernel: the arm32 BPF JIT compiles no atomic instruction, so the
//     interpreter runs the program and its atomic add is the kernel's
//     atomic64_add, which is LDREXD/STREXD in a kernel built for ARMv6K or
//     later alone, and a plain load and store under a spinlock of the
//     kernel's own (lib/atomic64.c, CONFIG_GENERIC_ATOMIC64) in one that
//     also supports ARMv6 or older cores, or ARMv7-M;
//   - Go: LDREXD/STREXD when built with GOARM=7, or on a core with LPAE
//     (Cortex-A7, A15, A17 and every ARMv8 core in 32-bit mode); otherwise
//     a lock of the Go runtime's own.
//
// A lock on one side does not exclude the other side's instructions, so an
// update can be lost and the count goes wrong for good: a count stuck above
// zero costs a lookup a packet; one stuck at zero hides a grant from the
// program, which then drops the granted source. So on 32-bit ARM the
// counts are changed only where both sides are known to use LDREXD/STREXD:
// ARMv7-A and ARMv8 (32-bit) cores running an ARMv7 kernel (Debian's
// armmp, Raspberry Pi OS's kernel7 and kernel7l, Alpine's armv7) with
// knockgate built for GOARM=7, as the release is. Elsewhere (ARMv6 and
// older cores: the first Raspberry Pi and the Zero; an ARMv6 kernel on an
// ARMv7 core, as Alpine's armhf and Raspberry Pi OS's kernel.img are) every
// change of a grant from user space is refused with armAtomics's reason.

// armAtomics is the reason the hint counts cannot be shared safely on this
// 32-bit ARM system, or nil when they can: goARM is the GOARM knockgate was
// built for ("" unknown), lpae whether the core has LPAE, cpuArch the
// "CPU architecture" of /proc/cpuinfo; kallsyms and kconfig are
// /proc/kallsyms and the kernel's configuration (nil when unreadable).
func armAtomics(goARM string, lpae bool, cpuArch int, kallsyms, kconfig []byte) error {
	const rule = "on 32-bit ARM, knockgate changes the grants' hint counts (64-bit, shared with the program) only where " +
		"the kernel and knockgate both use LDREXD/STREXD for them: an ARMv7-A or ARMv8 core, a kernel built for ARMv6K " +
		"or later alone (not CONFIG_GENERIC_ATOMIC64), and knockgate built for GOARM=7. Knocks and SPA packets still " +
		"open the gate; changing grants from user space is refused: "
	goV7 := strings.HasPrefix(goARM, "7") || (lpae && cpuArch >= 7)
	switch {
	case cpuArch != 0 && cpuArch < 7:
		return fmt.Errorf("%sthis core is ARMv%d", rule, cpuArch)
	case !goV7:
		return fmt.Errorf("%sthis knockgate was built for GOARM=%s and this core has no LPAE, so Go takes a lock of its own "+
			"for 64-bit atomics; use a build for GOARM=7", rule, orUnknown(goARM))
	}
	if kallsyms != nil {
		if hasSymbol(kallsyms, "generic_atomic64_add") || hasSymbol(kallsyms, "atomic64_add") {
			return fmt.Errorf("%sthis kernel's 64-bit atomics take a spinlock (it has lib/atomic64.c's atomic64_add: "+
				"a kernel for ARMv6 or older cores too); boot an ARMv7 kernel", rule)
		}
		if hasSymbol(kallsyms, "bpf_prog_put") { // a kernel's full list, not one hidden from this process
			return nil
		}
	}
	if kconfig != nil {
		if bytes.Contains(kconfig, []byte("\nCONFIG_GENERIC_ATOMIC64=y")) {
			return fmt.Errorf("%sthis kernel is built with CONFIG_GENERIC_ATOMIC64 (a kernel for ARMv6 or older cores too); boot an ARMv7 kernel", rule)
		}
		if bytes.Contains(kconfig, []byte("\nCONFIG_ARM=y")) {
			return nil
		}
	}
	return fmt.Errorf("%sneither /proc/kallsyms nor the kernel's configuration (/proc/config.gz, /boot/config-RELEASE) "+
		"could be read to tell how this kernel does 64-bit atomics", rule)
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// hasSymbol reports whether /proc/kallsyms lists name (in the kernel
// proper: a module's symbols carry [module]).
func hasSymbol(kallsyms []byte, name string) bool {
	sc := bufio.NewScanner(bytes.NewReader(kallsyms))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[2] == name {
			return true
		}
	}
	return false
}

// cpuArchitecture is the lowest "CPU architecture" of /proc/cpuinfo's
// cores (0: none given). ARMv8 cores in 32-bit mode say "8".
func cpuArchitecture(cpuinfo []byte) int {
	low := 0
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "CPU architecture" {
			continue
		}
		v = strings.TrimSpace(v)
		n, err := strconv.Atoi(strings.TrimRight(v, "TEJ")) // "5TEJ"
		if err != nil && strings.HasPrefix(v, "AArch64") {
			n = 8
		} else if err != nil {
			continue
		}
		if low == 0 || n < low {
			low = n
		}
	}
	return low
}
