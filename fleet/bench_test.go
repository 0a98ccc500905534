package fleet

import (
	"net/netip"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkFleet: three embedded servers on 127.0.0.1 (routes with TLS
// and authentication, as newFleet makes them), members as run's are (the
// default interval), each grant made as run makes it (benchGrant: the map,
// and what run's event reader tells the member). It reports the latency
// from a grant made on one host to its arrival on both others (p50, p99,
// over 200 grants from each host in turn), the grants a second one host's
// burst of 10 000 reaches the others at, and, at rest, the CPU and heap
// the three servers with their members take, per server.
//
// make bench-fleet runs it on this tree and on an earlier revision, in
// turn, in one session (bench.sh): before/after figures.
func BenchmarkFleet(b *testing.B) {
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	nodes := newFleetEvery(b, 3, 0)
	for b.Loop() {
		var lat []time.Duration
		for i := range 200 {
			a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
			from := nodes[i%3]
			start := time.Now()
			benchGrant(from, a, time.Now().Add(time.Hour))
			for _, nd := range nodes {
				if nd == from {
					continue
				}
				for {
					if _, ok := nd.local.get(a); ok {
						break
					}
					if time.Since(start) > 10*time.Second {
						b.Fatalf("grant %d did not arrive", i)
					}
					time.Sleep(time.Millisecond)
				}
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")

		// A burst: 10 000 grants at once on one host.
		const burst = 10000
		start := time.Now()
		for i := range burst {
			benchGrant(nodes[0], netip.AddrFrom4([4]byte{10, 200 + byte(i>>16), byte(i >> 8), byte(i)}), time.Now().Add(time.Hour))
		}
		for _, nd := range nodes[1:] {
			for {
				n := nd.local.count()
				if n >= 200+burst {
					break
				}
				if time.Since(start) > 60*time.Second {
					b.Fatalf("%s has %d of %d grants after 60s; origin %+v, here %+v", nd.cfg.Name, n, 200+burst, nodes[0].fl.Stats(), nd.fl.Stats())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		b.ReportMetric(burst/time.Since(start).Seconds(), "grants/s")

		// At rest: nothing changes for 5 s.
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		t0 := time.Now()
		time.Sleep(5 * time.Second)
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / 3
		b.ReportMetric(100*cpu.Seconds()/time.Since(t0).Seconds(), "rest-cpu-%/server")
		var ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		b.ReportMetric(float64(ms1.HeapInuse-ms0.HeapInuse)/3/(1<<20), "heap-MiB/server")
	}
}

// count is how many grants m has. The burst's wait asks it every 5 ms; a
// copy of 10 200 grants (Grants) took 4-7 ms of CPU here, so the wait
// took most of a CPU from the members measured. (bench.sh runs this file
// on an earlier revision too, whose memLocal has the same fields.)
func (m *memLocal) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.grants)
}
