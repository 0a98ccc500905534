package maps

import (
	"strings"
	"testing"
)

// Which 32-bit ARM systems may change the hint counts (atomics.go).
func TestARMAtomics(t *testing.T) {
	v7kernel := []byte("c0100000 T _stext\nc0a00000 T bpf_prog_put\n")
	v6kernel := []byte("c0100000 T _stext\nc0a00000 T bpf_prog_put\nc0480000 T generic_atomic64_add\n")
	hidden := []byte("c0100000 T _stext\n") // a process that may see little
	armv7Config := []byte("\nCONFIG_ARM=y\nCONFIG_CPU_V7=y\n")
	genericConfig := []byte("\nCONFIG_ARM=y\nCONFIG_CPU_V6=y\nCONFIG_GENERIC_ATOMIC64=y\n")
	for _, c := range []struct {
		name      string
		goARM     string
		lpae      bool
		cpuArch   int
		kallsyms  []byte
		kconfig   []byte
		wantError string // "" for safe
	}{
		{"Cortex-A7, Debian armmp, GOARM=7", "7", true, 7, v7kernel, nil, ""},
		{"Cortex-A9 (no LPAE), GOARM=7", "7", false, 7, v7kernel, nil, ""},
		{"Cortex-A53 in 32-bit mode, GOARM=6", "6", true, 8, v7kernel, nil, ""},
		{"Cortex-A9, GOARM=6", "6", false, 7, v7kernel, nil, "built for GOARM=6 and this core has no LPAE"},
		{"Raspberry Pi Zero (ARM1176)", "7", false, 6, v6kernel, nil, "this core is ARMv6"},
		{"an ARMv6 kernel on an ARMv7 core", "7", true, 7, v6kernel, nil, "this kernel's 64-bit atomics take a spinlock"},
		{"kallsyms hidden, config says ARMv7", "7", true, 7, hidden, armv7Config, ""},
		{"no kallsyms, config says generic", "7", true, 7, nil, genericConfig, "built with CONFIG_GENERIC_ATOMIC64"},
		{"nothing to tell by", "7", true, 7, nil, nil, "neither /proc/kallsyms nor the kernel's configuration"},
	} {
		err := armAtomics(c.goARM, c.lpae, c.cpuArch, c.kallsyms, c.kconfig)
		switch {
		case c.wantError == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.wantError != "" && (err == nil || !strings.Contains(err.Error(), c.wantError)):
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.wantError)
		}
	}
	cpuinfo := "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nCPU architecture: 7\n\nprocessor\t: 1\nCPU architecture: 7\n"
	if n := cpuArchitecture([]byte(cpuinfo)); n != 7 {
		t.Errorf("cpuArchitecture: %d, want 7", n)
	}
	if n := cpuArchitecture([]byte("CPU architecture: 5TEJ\n")); n != 5 {
		t.Errorf("cpuArchitecture 5TEJ: %d, want 5", n)
	}
	if n := cpuArchitecture([]byte("model name: x\n")); n != 0 {
		t.Errorf("cpuArchitecture without one: %d, want 0", n)
	}
}
