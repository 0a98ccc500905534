package maps

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"runtime/debug"
	"sync"

	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

// hintAtomics is armAtomics for this system, found once.
var hintAtomics = sync.OnceValue(func() error {
	goARM := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "GOARM" {
				goARM = s.Value
			}
		}
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	kallsyms, _ := os.ReadFile("/proc/kallsyms")
	return armAtomics(goARM, cpu.ARM.HasLPAE, cpuArchitecture(cpuinfo), kallsyms, kernelConfig())
})

// kernelConfig is the running kernel's configuration, or nil.
func kernelConfig() []byte {
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if z, err := gzip.NewReader(f); err == nil {
			if b, err := io.ReadAll(z); err == nil {
				return append([]byte("\n"), b...)
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		if b, err := os.ReadFile("/boot/config-" + string(bytes.TrimRight(u.Release[:], "\x00"))); err == nil {
			return append([]byte("\n"), b...)
		}
	}
	return nil
}
