// Package sha256test holds a test-only XDP program that runs bpf/sha256.h's
// compression function on chosen blocks, so the tests can check the C
// SHA-256 core against FIPS 180-4's vectors. Nothing but tests loads it.
package sha256test

//go:generate go tool bpf2go -tags linux -target bpfel,bpfeb Sha256 sha256.c -- -Wall -Werror
