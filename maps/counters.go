package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/knockgate/knockgate/bpf"
)

// Verdicts is the number of verdict counters (enum verdict): each packet
// bumps exactly one, in the slot of the interface it arrived on.
const Verdicts = int(bpf.KnockgateVerdictVERDICT_MAX)

// IfaceSlots is the number of per-interface verdict slots (KG_IFACE_SLOTS).
const IfaceSlots = 256

// CounterNames names every counter status and metrics show: the verdicts
// (enum verdict) first, then the state-change and event counters (enum
// counter) at Verdicts + their enum value.
var CounterNames = [...]string{
	bpf.KnockgateVerdictVERDICT_PASSED:            "passed",
	bpf.KnockgateVerdictVERDICT_PASSED_GRANTED:    "passed_granted",
	bpf.KnockgateVerdictVERDICT_PASSED_ALLOWED:    "passed_allowed",
	bpf.KnockgateVerdictVERDICT_PASSED_FLOW:       "passed_flow",
	bpf.KnockgateVerdictVERDICT_DROPPED_PROTECTED: "dropped_protected",
	bpf.KnockgateVerdictVERDICT_DROPPED_KNOCK:     "dropped_knock",
	bpf.KnockgateVerdictVERDICT_DROPPED_MALFORMED: "dropped_malformed",
	bpf.KnockgateVerdictVERDICT_DROPPED_SPA:       "dropped_spa",

	Verdicts + int(bpf.KnockgateCounterCOUNTER_KNOCK_ADVANCED):      "knock_advanced",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_KNOCK_REPEATED):      "knock_repeated",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_KNOCK_RESET):         "knock_reset",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_KNOCK_WHILE_GRANTED): "knock_while_granted",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_GRANTED):             "granted",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_GRANT_EXPIRED):       "grant_expired",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_GRANT_FAILED):        "grant_failed",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_EVENTS_LOST):         "events_lost",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_EVENTS_SUPPRESSED):   "events_suppressed",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FLOWS_LEARNED):       "flows_learned",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FLOWS_FULL):          "flows_full",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FLOWS_ENDED):         "flows_ended",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_ACCEPTED):        "spa_accepted",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_BAD_LENGTH):      "spa_bad_length",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_BAD_VERSION):     "spa_bad_version",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_UNKNOWN_KEY):     "spa_unknown_key",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_BAD_TAG):         "spa_bad_tag",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_CLOCK):           "spa_clock",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_BAD_ADDRESS):     "spa_bad_address",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_BAD_SERVICE):     "spa_bad_service",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_SPA_REPLAY):          "spa_replay",

	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_PASSED):          "fwknop_passed",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_BAD_HMAC):        "fwknop_bad_hmac",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_GPG):             "fwknop_gpg",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_REPLAY):          "fwknop_replay",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_REPLAY_FULL):     "fwknop_replay_full",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_LOST):            "fwknop_lost",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_ACCEPTED):        "fwknop_accepted",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_NO_STANZA):       "fwknop_no_stanza",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_UNDECRYPTABLE):   "fwknop_undecryptable",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_CLOCK):           "fwknop_clock",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_SOURCE_REQUIRED): "fwknop_source_required",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_USERNAME):        "fwknop_username",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_UNSUPPORTED):     "fwknop_unsupported",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_PORTS):           "fwknop_ports",
	Verdicts + int(bpf.KnockgateCounterCOUNTER_FWKNOP_NO_SERVICE):      "fwknop_no_service",
}

// A new enum value without a name fails to compile here.
var _ [0]struct{} = [len(CounterNames) - Verdicts - int(bpf.KnockgateCounterCOUNTER_MAX)]struct{}{}

// Counters are the program's counters summed over CPUs (and, for verdicts,
// over interfaces), indexed like CounterNames.
type Counters [len(CounterNames)]uint64

// Verdict is the count of verdict v. Counters are looked up by the C
// enum's generated names, never by a string a typo would turn into a
// silent zero.
func (c *Counters) Verdict(v bpf.KnockgateVerdict) uint64 { return c[v] }

// Counter is the count of counter k (enum counter).
func (c *Counters) Counter(k bpf.KnockgateCounter) uint64 { return c[Verdicts+int(k)] }

// VerdictCounts are the verdict counters of one interface slot, indexed like
// the first Verdicts entries of CounterNames.
type VerdictCounts [Verdicts]uint64

// IfaceSlot is the slot of the per-interface verdict counters that packets
// arriving on ifindex are counted in.
func IfaceSlot(ifindex int) int { return ifindex & (IfaceSlots - 1) }

// ReadCounters sums the per-CPU counters, and the verdicts over every slot.
func (s *Set) ReadCounters() (Counters, error) {
	var out Counters
	slots, err := s.ReadVerdicts()
	if err != nil {
		return out, err
	}
	for _, slot := range slots {
		for v, n := range slot {
			out[v] += n
		}
	}
	for i := range int(bpf.KnockgateCounterCOUNTER_MAX) {
		var perCPU []uint64
		if err := s.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read counter %s: %w", CounterNames[Verdicts+i], err)
		}
		for _, n := range perCPU {
			out[Verdicts+i] += n
		}
	}
	return out, nil
}

// ReadVerdicts returns the verdict counters of every interface slot, summed
// over CPUs, in one batch.
func (s *Set) ReadVerdicts() ([IfaceSlots]VerdictCounts, error) {
	var out [IfaceSlots]VerdictCounts
	sums, err := sumPerCPU(s.Verdicts)
	if err != nil {
		return out, fmt.Errorf("read verdict counters: %w", err)
	}
	for idx, n := range sums {
		out[idx/Verdicts][idx%Verdicts] += n
	}
	return out, nil
}

// sumPerCPU reads every entry of the per-CPU array of counters m in one
// batch, each summed over CPUs, indexed by key.
func sumPerCPU(m *ebpf.Map) ([]uint64, error) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count CPUs: %w", err)
	}
	n := int(m.MaxEntries())
	keys := make([]uint32, n)
	values := make([]uint64, n*ncpu)
	var cursor ebpf.MapBatchCursor
	got, err := m.BatchLookup(&cursor, keys, values, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, err
	}
	sums := make([]uint64, n)
	for k := range got {
		for c := range ncpu {
			sums[keys[k]] += values[k*ncpu+c]
		}
	}
	return sums, nil
}

// ServiceCounters are one service's counters (enum service_counter),
// summed over CPUs.
type ServiceCounters struct {
	Granted uint64 // grants made: sequences completed, SPA packets
	Expired uint64 // grants found expired
}

// ReadServiceCounters returns the counters of every service of the
// configuration in force, by name.
func (s *Set) ReadServiceCounters() (map[string]ServiceCounters, error) {
	cfg, err := s.ReadConfig()
	if err != nil {
		return nil, err
	}
	per := int(bpf.KnockgateServiceCounterSERVICE_COUNTER_MAX)
	sums, err := sumPerCPU(s.ServiceCounters)
	if err != nil {
		return nil, fmt.Errorf("read service counters: %w", err)
	}
	out := make(map[string]ServiceCounters, len(cfg.Index))
	for name, i := range cfg.Index {
		out[name] = ServiceCounters{
			Granted: sums[i*per+int(bpf.KnockgateServiceCounterSERVICE_GRANTED)],
			Expired: sums[i*per+int(bpf.KnockgateServiceCounterSERVICE_GRANT_EXPIRED)],
		}
	}
	return out, nil
}

// AddCounter adds n to counter k (in the first CPU's slot: the sum is
// what is read). For counters the program never writes (run's own
// outcomes), so that nothing races the read and the write.
func (s *Set) AddCounter(k bpf.KnockgateCounter, n uint64) error {
	var perCPU []uint64
	if err := s.Counters.Lookup(uint32(k), &perCPU); err != nil {
		return fmt.Errorf("read counter %s: %w", CounterNames[Verdicts+int(k)], err)
	}
	perCPU[0] += n
	if err := s.Counters.Update(uint32(k), perCPU, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write counter %s: %w", CounterNames[Verdicts+int(k)], err)
	}
	return nil
}
