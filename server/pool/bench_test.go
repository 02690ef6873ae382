//go:build integration

package pool_test

import (
	"context"
	"errors"
	"fmt"
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

// BenchmarkPublish publishes the golden, with 1 GiB and 10 GiB written on
// a 20 GiB virtual disk: the whole publish, from the request (golden and
// space checked) to the template defined, copies verified. The roll that
// follows is not timed. The copy holds what the disk holds, not its
// virtual size.
func BenchmarkPublish(b *testing.B) {
	for _, gib := range []uint64{1, 10} {
		b.Run(fmt.Sprintf("written=%dGiB", gib), func(b *testing.B) {
			bed := testbed.New(b)
			if err := bed.GrowGolden(20<<30, gib<<30); err != nil {
				b.Fatal(err)
			}
			cfg := bed.Config(1)
			cfg.KeepVersions = 0 // old versions go once unused: 10 GiB copies add up
			rp := startRealPoolC(b, cfg)
			waitCleanB(b, rp, 1)
			ctx := context.Background()
			var took time.Duration
			var size uint64
			for b.Loop() {
				start := time.Now()
				seq, err := rp.Publish(ctx)
				if err != nil {
					b.Fatal(err)
				}
				s := waitPublished(b, rp, seq)
				took += time.Since(start)
				b.StopTimer()
				for _, v := range s.Versions {
					if v.Version == seq {
						size = v.Size
					}
				}
				waitRolledB(b, rp, 1, seq)
				b.StartTimer()
			}
			b.ReportMetric(took.Seconds()/float64(b.N), "s/publish")
			b.ReportMetric(float64(size)/(1<<30), "GiB-copied")
			b.ReportMetric(float64(gib)/(took.Seconds()/float64(b.N)), "GiB/s")
		})
	}
}

// BenchmarkRoll publishes a new version under a full pool of 4 and follows
// the roll until every clean VM is of it: the lowest number of clean VMs
// seen meanwhile, with max_vms leaving room for the new clones and with no
// room at all (refill_concurrency 2, so the floor is 2).
func BenchmarkRoll(b *testing.B) {
	for _, room := range []int{4, 0} {
		b.Run(fmt.Sprintf("room=%d", room), func(b *testing.B) {
			bed := testbed.New(b)
			cfg := bed.Config(4)
			cfg.MaxVMs = 4 + room
			cfg.RefillConcurrency = 2
			rp := startRealPoolC(b, cfg)
			waitCleanB(b, rp, 4)
			ctx := context.Background()
			lowest := 4
			var took time.Duration
			for b.Loop() {
				start := time.Now()
				seq, err := rp.Publish(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for !rolledTo(rp.Status(), 4, seq) {
					lowest = min(lowest, rp.Status().Counts[pool.Clean])
					time.Sleep(10 * time.Millisecond)
				}
				took += time.Since(start)
			}
			b.ReportMetric(float64(lowest), "min-clean")
			b.ReportMetric(took.Seconds()/float64(b.N), "s/roll")
		})
	}
}

func waitPublished(b *testing.B, rp *realPool, seq int) pool.Status {
	deadline := time.Now().Add(30 * time.Minute)
	for {
		s := rp.Status()
		if j := s.Publish; j != nil && j.Version == seq && j.Finished != nil {
			if j.Error != "" {
				b.Fatalf("publish %d: %s", seq, j.Error)
			}
			return s
		}
		if time.Now().After(deadline) {
			b.Fatalf("publish %d not done", seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitRolledB(b *testing.B, rp *realPool, size, seq int) {
	deadline := time.Now().Add(10 * time.Minute)
	for !rolledTo(rp.Status(), size, seq) {
		if time.Now().After(deadline) {
			b.Fatalf("pool not rolled to version %d", seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rolledTo reports whether size clean VMs, and nothing else, are all of
// version seq, with no old version left.
func rolledTo(s pool.Status, size, seq int) bool {
	n := 0
	for _, v := range s.VMs {
		if v.State != pool.Clean || v.Version != seq {
			return false
		}
		n++
	}
	return n == size && len(s.Versions) <= 2
}
