//go:build integration

package pool_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"undervdi/internal/testbed"
	"undervdi/server/domxml"
	"undervdi/server/pool"
)

var benchClaim = pool.Claim{Kiosk: "bench", Lease: "l-bench", Addr: "127.0.0.1"}

// BenchmarkRecycle measures a used VM's end: from End (the session is over)
// to the domain destroyed and undefined and its overlay verified gone. The
// refill that follows is not timed.
func BenchmarkRecycle(b *testing.B) {
	bed := testbed.New(b)
	rp := startRealPoolB(b, bed, 1)
	ctx := context.Background()
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		waitCleanB(b, rp, 1)
		v, err := rp.Take(benchClaim)
		if err != nil {
			b.Fatal(err)
		}
		rp.MarkUsed(ctx, v.Name)
		b.StartTimer()
		start := time.Now()
		rp.End(v.Name, "benchmark")
		for e := range rp.ended {
			if e.VM == v.Name {
				break
			}
		}
		total += time.Since(start)
		b.StopTimer()
		if _, err := os.Stat(v.Overlays[0]); !errors.Is(err, os.ErrNotExist) {
			b.Fatalf("overlay %s not gone: %v", v.Overlays[0], err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-wiped/op")
}

// BenchmarkRefill measures pool refill throughput: all clean VMs of a pool of
// 2 end at once, and the pool makes and boots (TCG here) 2 new ones until
// their guest agents answer.
func BenchmarkRefill(b *testing.B) {
	bed := testbed.New(b)
	const size = 2
	rp := startRealPoolB(b, bed, size)
	waitCleanB(b, rp, size)
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		for range size {
			v, err := rp.Take(benchClaim)
			if err != nil {
				b.Fatal(err)
			}
			rp.End(v.Name, "benchmark")
		}
		waitCleanB(b, rp, size)
		total += time.Since(start)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/refill-of-2")
	b.ReportMetric(float64(size*b.N)/total.Minutes(), "clean-VMs/min")
}

func waitCleanB(b *testing.B, rp *realPool, n int) {
	deadline := time.Now().Add(5 * time.Minute)
	for rp.Status().Counts[pool.Clean] < n {
		if time.Now().After(deadline) {
			b.Fatalf("pool not refilled to %d", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkOfferRecord measures one state write to libvirt, as every
// transition makes: the VM's metadata in its live definition. Only the
// write before a first link ("in-use") is waited for.
func BenchmarkOfferRecord(b *testing.B) {
	bed := testbed.New(b)
	rp := startRealPoolB(b, bed, 1)
	waitCleanB(b, rp, 1)
	name := rp.Status().VMs[0].Name
	ctx := context.Background()
	m := domxml.Metadata{Pool: bed.Prefix, State: "clean", Golden: bed.Golden.Name}
	for b.Loop() {
		if err := rp.host.SetMetadata(ctx, name, m); err != nil {
			b.Fatal(err)
		}
	}
}
