// Package bpf holds the XDP program and the Go bindings bpf2go generates for
// it; the C structs in knockgate.h are the single definition of the ABI.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel,bpfeb -type source -type step -type config -type grant -type allow_key -type event -type counter -type event_type -type verdict -type config_flag -type flow_flag -type flow_key -type spa_key -type spa_key_flag Knockgate knockgate.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
