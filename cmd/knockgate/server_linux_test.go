package main

import (
	"slices"
	"testing"
)

// serverNames, which every build knows, are the commands only Linux builds.
func TestServerNames(t *testing.T) {
	var names []string
	for _, c := range serverCommands() {
		names = append(names, c.name)
	}
	if !slices.Equal(names, serverNames) {
		t.Errorf("serverNames %q, serverCommands %q", serverNames, names)
	}
}
