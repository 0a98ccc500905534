// Package siphashtest holds a test-only XDP program that runs bpf/siphash.h
// on chosen input, so the tests can check the C SipHash against the
// reference vectors and the Go one. Nothing but tests loads it.
package siphashtest

//go:generate go tool bpf2go -tags linux -target bpfel,bpfeb Siphash siphash.c -- -Wall -Werror
