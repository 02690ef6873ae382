package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"undervdi/internal/poll"
)

// BenchmarkTakeRelease measures what a handoff costs in the pool, with 1000
// clean VMs on the table: Take, through the loop that owns the table (the
// clean VM that waited longest picked out of all of them), and the Release
// that puts it back. The offer's libvirt write runs in the background and is
// not waited for, as in a real handoff.
func BenchmarkTakeRelease(b *testing.B) {
	for _, n := range []int{20, 200, 1000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			f := newFakeHV()
			f.mem = 1 << 50
			cfg := testConfig()
			cfg.Size, cfg.MaxVMs, cfg.RefillConcurrency = n, n, n
			p := startPool(b, f, cfg)
			poll.Until(b, time.Minute, fmt.Sprintf("%d clean VMs", n), func() bool { return clean(p) == n })
			ctx := context.Background()
			for b.Loop() {
				v, err := p.Take(anyone)
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Release(ctx, v.Name); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
