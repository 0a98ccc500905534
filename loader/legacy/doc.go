// Package legacy is the previous release's datapath as bpf2go generated it
// at commit 2f4d40fd30b4beb28a8b5fd796a3bb1fe3e6348d (the last release
// before services): its Go types and its object files, byte for byte, the
// package clause alone changed (it was bpf).
//
// It is frozen: never regenerate it, never edit it. It describes gates that
// release pinned — grants keyed by source address alone, a flat
// configuration with protected-port bitmaps, an allow trie keyed by address
// alone, SPA keys without a services mask, 20 counters — and the loader
// needs exactly that description to recognise such a gate (its maps must
// match these specs, not merely differ from this build's) and to read it
// while it moves the gate's state into this build's layout
// (loader/migrate.go). Nothing here is ever loaded into the kernel by the
// loader; the tests load it to make a gate as that release did.
package legacy
