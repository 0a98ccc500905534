// Package bpf holds the XDP program, the tcx egress program and the Go
// bindings bpf2go generates for them; the C structs in knockgate.h are the
// single definition of the ABI. The egress object's maps are the XDP
// object's (the loader hands them over by name), so its bindings carry no
// types of their own.
//
// The XDP object is built for BPF ISA v3 (32-bit ALU operations and jumps;
// every kernel from 6.6, the gate's floor, runs it): SHA-256 for fwknop's
// HMAC is 32-bit arithmetic, and v3 saves it a tenth.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel,bpfeb -type source -type grant_key -type step -type service -type config -type grant -type allow_key -type event -type counter -type service_counter -type event_type -type verdict -type config_flag -type flow_flag -type flow_key -type spa_key -type spa_key_flag -type fwknop_key -type fwknop_digest -type fwknop_seen -type fwknop_record -type fwknop_grant_req Knockgate knockgate.c -- -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel,bpfeb -no-global-types Egress egress.c -- -Wall -Werror
