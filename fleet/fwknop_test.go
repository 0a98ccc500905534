package fleet

import (
	"sync"
	"testing"
	"time"
)

// fwknopSeen is what each test host remembers of fwknop datagrams (by
// its memLocal), as the gate's replay map would.
var fwknopSeen sync.Map // *memLocal -> *sync.Map of [32]byte -> time.Time

func (m *memLocal) ApplyFwknop(d [32]byte, until time.Time) error {
	v, _ := fwknopSeen.LoadOrStore(m, &sync.Map{})
	v.(*sync.Map).Store(d, until)
	return nil
}

func (m *memLocal) fwknopUntil(d [32]byte) (time.Time, bool) {
	v, ok := fwknopSeen.Load(m)
	if !ok {
		return time.Time{}, false
	}
	u, ok := v.(*sync.Map).Load(d)
	if !ok {
		return time.Time{}, false
	}
	return u.(time.Time), true
}

// A datagram one host handed over is remembered by every other, as long
// as by it; the host itself is not told its own.
func TestFwknopDatagramReachesTheFleet(t *testing.T) {
	nodes := newFleet(t, 3)
	d := [32]byte{1, 2, 3}
	keep := time.Now().Add(3 * time.Minute).Truncate(time.Millisecond)
	nodes[0].fl.PublishFwknop(d, keep)
	for _, nd := range nodes[1:] {
		dur := until(t, 10*time.Second, nd.cfg.Name+" remembers the datagram", func() bool {
			got, ok := nd.local.fwknopUntil(d)
			return ok && got.Equal(keep)
		}, nodes...)
		t.Logf("%s: %s", nd.cfg.Name, dur)
	}
	if _, ok := nodes[0].local.fwknopUntil(d); ok {
		t.Error("the host that handed it over was told its own")
	}
	// One already past is not written.
	old := [32]byte{4}
	nodes[1].fl.PublishFwknop(old, time.Now().Add(-time.Second))
	nodes[1].fl.PublishFwknop([32]byte{5}, time.Now().Add(time.Minute))
	until(t, 10*time.Second, "the next one arrives", func() bool { _, ok := nodes[2].local.fwknopUntil([32]byte{5}); return ok }, nodes...)
	if _, ok := nodes[2].local.fwknopUntil(old); ok {
		t.Error("a datagram past its window was shared")
	}
}
