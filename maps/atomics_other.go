//go:build !arm

package maps

// hintAtomics: every other architecture's 64-bit atomics are the kernel's
// (atomics.go says why 32-bit ARM's may not be).
func hintAtomics() error { return nil }
