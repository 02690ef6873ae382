package lockfree

import (
	"sync"
	"sync/atomic"
	"testing"
)

type node struct {
	v    int
	next *node
}

// TestPush: every push from many goroutines at once is on the list once,
// and each goroutine's pushes are newest first.
func TestPush(t *testing.T) {
	const goroutines, each = 8, 1000
	var head atomic.Pointer[node]
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				n := &node{v: g*each + i}
				Push(&head, n, &n.next)
			}
		})
	}
	wg.Wait()
	seen := map[int]bool{}
	last := map[int]int{} // per goroutine, the last value walked
	for n := head.Swap(nil); n != nil; n = n.next {
		if seen[n.v] {
			t.Fatalf("%d twice on the list", n.v)
		}
		seen[n.v] = true
		g := n.v / each
		if prev, ok := last[g]; ok && n.v >= prev {
			t.Fatalf("goroutine %d's %d after its %d: not newest first", g, n.v, prev)
		}
		last[g] = n.v
	}
	if len(seen) != goroutines*each {
		t.Fatalf("%d on the list, want %d", len(seen), goroutines*each)
	}
	if head.Load() != nil {
		t.Fatal("the list is not empty after Swap(nil)")
	}
}
