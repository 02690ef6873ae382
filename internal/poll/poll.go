// Package poll waits, in tests, for a condition that the code under test
// makes true by itself: it polls, starting fast and backing off, and its
// deadline only guards against a hang.
package poll

import (
	"testing"
	"time"
)

// Until polls cond until it holds, failing t if d passes first.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	wait := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}
