package maps

import (
	"fmt"

	"github.com/knockgate/knockgate/bpf"
)

// CounterNames names the program's counters, indexed by enum counter.
var CounterNames = [...]string{
	bpf.KnockgateCounterCOUNTER_PASSED:              "passed",
	bpf.KnockgateCounterCOUNTER_PASSED_GRANTED:      "passed_granted",
	bpf.KnockgateCounterCOUNTER_PASSED_ALLOWED:      "passed_allowed",
	bpf.KnockgateCounterCOUNTER_DROPPED_PROTECTED:   "dropped_protected",
	bpf.KnockgateCounterCOUNTER_DROPPED_KNOCK:       "dropped_knock",
	bpf.KnockgateCounterCOUNTER_DROPPED_MALFORMED:   "dropped_malformed",
	bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED:      "knock_advanced",
	bpf.KnockgateCounterCOUNTER_KNOCK_REPEATED:      "knock_repeated",
	bpf.KnockgateCounterCOUNTER_KNOCK_RESET:         "knock_reset",
	bpf.KnockgateCounterCOUNTER_KNOCK_WHILE_GRANTED: "knock_while_granted",
	bpf.KnockgateCounterCOUNTER_GRANTED:             "granted",
	bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED:       "grant_expired",
	bpf.KnockgateCounterCOUNTER_GRANT_FAILED:        "grant_failed",
	bpf.KnockgateCounterCOUNTER_EVENTS_LOST:         "events_lost",
}

// A new enum value without a name fails to compile here.
var _ [0]struct{} = [len(CounterNames) - int(bpf.KnockgateCounterCOUNTER_MAX)]struct{}{}

// Counters are the program's counters summed over CPUs, in enum order.
type Counters [len(CounterNames)]uint64

// Get returns the counter called name (see CounterNames), or 0.
func (c *Counters) Get(name string) uint64 {
	for i, n := range CounterNames {
		if n == name {
			return c[i]
		}
	}
	return 0
}

// ReadCounters sums the per-CPU counters.
func (s *Set) ReadCounters() (Counters, error) {
	var out Counters
	for i := range out {
		var perCPU []uint64
		if err := s.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read counter %s: %w", CounterNames[i], err)
		}
		for _, n := range perCPU {
			out[i] += n
		}
	}
	return out, nil
}
