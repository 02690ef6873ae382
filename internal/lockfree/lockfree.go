// Package lockfree has the one lock-free structure the broker's hot paths
// share: a list that many goroutines push on and one owner takes whole.
package lockfree

import "sync/atomic"

// Push puts n at the head of the list that starts at head, linking it to
// the old head through next (a field of n): whoever takes the list with
// head.Swap(nil) walks it newest first. Any number of goroutines may push
// at once; none waits for another.
func Push[T any](head *atomic.Pointer[T], n *T, next **T) {
	for {
		old := head.Load()
		*next = old
		if head.CompareAndSwap(old, n) {
			return
		}
	}
}
