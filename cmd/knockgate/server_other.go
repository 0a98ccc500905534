//go:build !linux

package main

// serverCommands: the gate is an XDP program; elsewhere knockgate is a
// client only, and main says so when a gate's command is asked for.
func serverCommands() []*command { return nil }
