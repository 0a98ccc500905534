package maps

import (
	"errors"
	"fmt"
	"time"

	"github.com/knockgate/knockgate/bpf"
)

// MaxSteps is the longest knock sequence the program accepts.
const MaxSteps = len(bpf.KnockgateConfig{}.Steps)

// Mode records how the program is attached; status reports it.
type Mode uint8

const (
	ModeUnknown Mode = Mode(bpf.KnockgateAttachModeMODE_UNKNOWN)
	ModeNative  Mode = Mode(bpf.KnockgateAttachModeMODE_NATIVE)
	ModeGeneric Mode = Mode(bpf.KnockgateAttachModeMODE_GENERIC)
)

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return "unknown"
}

// Config is the runtime configuration of a gate.
type Config struct {
	Sequence    []Port
	StepTimeout time.Duration
	Open        time.Duration
	Protected   []Port
	// AllowCount is the number of allow-list entries; the program skips the
	// allow lookup when it is zero. Maintained by Set.SetAllow.
	AllowCount uint32
	Mode       Mode
	// Generation changes on every write; knock progress made under another
	// generation is void. Maintained by Set.WriteConfig.
	Generation uint32
}

// Validate reports the first thing wrong with c, naming the bad value.
func (c *Config) Validate() error {
	if len(c.Sequence) == 0 {
		return errors.New("sequence is empty")
	}
	if len(c.Sequence) > MaxSteps {
		return fmt.Errorf("sequence has %d steps, at most %d allowed", len(c.Sequence), MaxSteps)
	}
	for i := range c.Sequence {
		for j := range i {
			// A retransmitted SYN of step j would then complete step i.
			if c.Sequence[i] == c.Sequence[j] {
				return fmt.Errorf("sequence step %d (%s) repeats step %d", i+1, c.Sequence[i], j+1)
			}
		}
	}
	for _, k := range c.Sequence {
		for _, p := range c.Protected {
			if k == p {
				return fmt.Errorf("port %s is both a knock step and protected", k)
			}
		}
	}
	if c.StepTimeout <= 0 {
		return fmt.Errorf("step timeout %s must be positive", c.StepTimeout)
	}
	if c.Open <= 0 {
		return fmt.Errorf("open window %s must be positive", c.Open)
	}
	return nil
}

// Encode converts c to the C layout.
func (c *Config) Encode() (*bpf.KnockgateConfig, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	raw := &bpf.KnockgateConfig{
		StepTimeoutNs: uint64(c.StepTimeout),
		OpenNs:        uint64(c.Open),
		Generation:    c.Generation,
		AllowCount:    c.AllowCount,
		Nsteps:        uint8(len(c.Sequence)),
		Mode:          uint8(c.Mode),
	}
	for i, s := range c.Sequence {
		raw.Steps[i].Port = s.Num
		raw.Steps[i].Proto = uint8(s.Proto)
	}
	for _, p := range c.Protected {
		bits := &raw.ProtectedTcp
		if p.Proto == UDP {
			bits = &raw.ProtectedUdp
		}
		bits[p.Num>>6] |= 1 << (p.Num & 63)
	}
	return raw, nil
}

// DecodeConfig converts the C layout back to a Config.
func DecodeConfig(raw *bpf.KnockgateConfig) Config {
	c := Config{
		StepTimeout: time.Duration(raw.StepTimeoutNs),
		Open:        time.Duration(raw.OpenNs),
		Generation:  raw.Generation,
		AllowCount:  raw.AllowCount,
		Mode:        Mode(raw.Mode),
	}
	for i := 0; i < int(raw.Nsteps) && i < MaxSteps; i++ {
		c.Sequence = append(c.Sequence, Port{Num: raw.Steps[i].Port, Proto: Proto(raw.Steps[i].Proto)})
	}
	for _, set := range []struct {
		bits  *[1024]uint64
		proto Proto
	}{{&raw.ProtectedTcp, TCP}, {&raw.ProtectedUdp, UDP}} {
		for w, word := range set.bits {
			for b := 0; word != 0 && b < 64; b++ {
				if word&(1<<b) != 0 {
					c.Protected = append(c.Protected, Port{Num: uint16(w*64 + b), Proto: set.proto})
				}
			}
		}
	}
	return c
}
