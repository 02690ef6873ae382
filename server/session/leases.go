package session

import (
	"sync/atomic"

	"undervdi/internal/lockfree"
)

// leaseTable is the live leases, by id and by VM. Everything reads and
// changes it under Manager.mu, through leasesLocked, but for one writer: a
// request served at once publishes its lease without m.mu, on a lock-free
// list that the next holder of m.mu takes in. A thousand kiosks asking at
// once then never wait for each other on m.mu: under such a burst Go parks
// a goroutine that finds a mutex held, and a parked one waits behind every
// runnable reader before it runs again (docs/benchmarks.md).
type leaseTable struct {
	fresh atomic.Pointer[Lease] // published, not yet taken in; newest first
	byID  map[string]*Lease
	byVM  map[string]*Lease
}

func newLeaseTable() leaseTable {
	return leaseTable{byID: map[string]*Lease{}, byVM: map[string]*Lease{}}
}

// publish makes l known without m.mu.
func (t *leaseTable) publish(l *Lease) { lockfree.Push(&t.fresh, l, &l.nextFresh) }

// leasesLocked returns the table with every published lease taken in;
// m.mu is held. A lease that ended before it was taken in (its timer fired
// first) stays out.
func (m *Manager) leasesLocked() *leaseTable {
	t := &m.leases
	for l := t.fresh.Swap(nil); l != nil; {
		next := l.nextFresh
		l.nextFresh = nil // an old session must not keep the ones before it alive
		if !l.ended {
			t.add(l)
		}
		l = next
	}
	return t
}

func (t *leaseTable) add(l *Lease) {
	t.byID[l.ID] = l
	t.byVM[l.VM.Name] = l
}

func (t *leaseTable) remove(l *Lease) {
	delete(t.byID, l.ID)
	delete(t.byVM, l.VM.Name)
}
