package pool

import (
	"slices"
	"sync/atomic"
	"time"

	"undervdi/internal/lockfree"
)

// The shelf is how Take hands out a clean VM without waiting for the loop,
// and without a lock: a thousand kiosks asking at once must not queue
// behind the loop, nor behind each other on a mutex. Under such a burst Go
// parks a goroutine that finds a mutex held at once (it spins only while
// its processor has nothing else to run), and a parked one waits behind
// every runnable reader before it runs again: milliseconds
// (docs/benchmarks.md).
//
// The loop publishes the clean VMs of the current version, oldest first,
// as a stock of entries. A Take claims the first free entry with one
// compare-and-swap, pushes it on a lock-free list of claims and nudges the
// loop, which applies the claim (the VM's state becomes offered) as soon as
// it runs.
//
// The one rule that keeps a VM from being handed out twice, or changed
// under its taker: before any input changes a clean VM, the loop withdraws
// its entry with the same compare-and-swap (apply does). Either the loop or
// one Take wins it; if a Take did, the loop applies that claim first.
type shelf struct {
	stock  atomic.Pointer[stock]      // nil: closed, Take goes to the loop
	claims atomic.Pointer[shelfEntry] // taken, not yet applied: newest first
	nudge  chan struct{}              // wakes the loop (the pool's)

	// The loop's own: the entry of each VM on the shelf, by name, and
	// whether some are not in the stock yet (put).
	entries map[string]*shelfEntry
	dirty   bool
}

// stock is one published state of the shelf: entries[:n], oldest first.
// The loop appends in place while the order allows and there is room; it
// publishes a new stock otherwise. Entries are never removed from a stock:
// a withdrawn or taken one stays, skipped, until the next stock.
type stock struct {
	entries []*shelfEntry // its length is the room
	n       atomic.Int32  // entries published
	head    atomic.Int32  // every entry before it is taken or withdrawn: where to look first
}

// shelfEntry is one VM on the shelf.
type shelfEntry struct {
	vm    VM
	claim atomic.Pointer[Claim] // nil: free; withdrawn: the loop's; else its taker's
	next  *shelfEntry           // on the list of claims
}

// withdrawn marks an entry the loop took back.
var withdrawn = new(Claim)

// take claims the oldest free VM for c, if the shelf has one, and tells
// the loop.
func (s *shelf) take(c Claim) (VM, bool) {
	st := s.stock.Load()
	if st == nil {
		return VM{}, false
	}
	c.At = time.Now()
	n := int(st.n.Load())
	for i := int(st.head.Load()); i < n; i++ {
		e := st.entries[i]
		if e.claim.Load() != nil || !e.claim.CompareAndSwap(nil, &c) {
			continue
		}
		if h := st.head.Load(); int(h) <= i {
			st.head.CompareAndSwap(h, int32(i+1)) // a hint: losing this race costs a later Take one look
		}
		lockfree.Push(&s.claims, e, &e.next)
		select {
		case s.nudge <- struct{}{}:
		default:
		}
		v := e.vm
		v.State, v.Since = Offered, c.At
		return v, true
	}
	return VM{}, false
}

// put shelves v, in the order of the time it became clean, if the shelf
// is open. An entry that cannot go at the end of the stock (out of order, or
// no room left) is published with the next stock, once per turn of the
// loop for all such puts (Pool.restock): a thousand VMs released at once
// must not each copy the shelf.
func (s *shelf) put(v VM) {
	st := s.stock.Load()
	if st == nil {
		return
	}
	e := &shelfEntry{vm: v}
	s.entries[v.Name] = e
	n := int(st.n.Load())
	if s.dirty || n == len(st.entries) || n > 0 && st.entries[n-1].vm.Since.After(v.Since) {
		s.dirty = true
		return
	}
	st.entries[n] = e
	st.n.Store(int32(n + 1)) // publishes the entry written above
}

// restock publishes entries, oldest first, as a new stock with room to
// grow. An entry a Take claims meanwhile from the stock before is found
// claimed in this one too.
func (s *shelf) restock(entries []*shelfEntry) {
	st := &stock{entries: make([]*shelfEntry, max(2*len(entries), 16))}
	copy(st.entries, entries)
	st.n.Store(int32(len(entries)))
	s.stock.Store(st)
	s.dirty = false
}

// shelfPlace is where unshelve found a VM.
type shelfPlace int

const (
	notShelved shelfPlace = iota // never on the shelf (another version; the shelf closed)
	wasShelved                   // on the shelf: now withdrawn
	claimedOff                   // taken from it: its claim is to be applied first
)

// unshelve withdraws name's entry, if it is on the shelf; claimedOff
// returns the entry, whose claim the loop is to apply.
func (s *shelf) unshelve(name string) (shelfPlace, *shelfEntry) {
	e := s.entries[name]
	if e == nil {
		return notShelved, nil
	}
	if e.claim.CompareAndSwap(nil, withdrawn) {
		delete(s.entries, name)
		return wasShelved, nil
	}
	return claimedOff, e
}

// claimsTaken returns the entries Takes claimed since the last call, in
// the order they were taken.
func (s *shelf) claimsTaken() []*shelfEntry {
	var out []*shelfEntry
	for e := s.claims.Swap(nil); e != nil; e = e.next {
		out = append(out, e)
	}
	slices.Reverse(out)
	return out
}

// applyClaims makes every VM taken from the shelf offered, in the order
// they were taken.
func (p *Pool) applyClaims() {
	for _, e := range p.shelf.claimsTaken() {
		p.applyClaim(e)
	}
}

// applyClaim makes the VM a Take took with e offered, once: an entry
// unshelve found claimed is applied then, and again found on the list of
// claims.
func (p *Pool) applyClaim(e *shelfEntry) {
	name := e.vm.Name
	if p.shelf.entries[name] != e {
		return
	}
	delete(p.shelf.entries, name)
	c := *e.claim.Load()
	if err := p.apply(input{kind: apiTake, vm: name, claim: c, at: c.At, shelved: true}); err != nil {
		// The shelf's rule makes this impossible; its taker's
		// session fails at its first link (the VM is not offered).
		p.log.Error("pool: a VM taken from the shelf could not be offered (a bug)", "vm", name, "err", err)
	}
}

// shelfKey is what the shelf's contents follow from besides the clean VMs
// themselves: whether Take may serve, and the current version.
type shelfKey struct {
	open    bool
	version int
}

// restock refills the shelf from the table when what it follows from has
// changed (a connection lost or back, a reconcile done, a new current
// version): closed first, so that no Take takes what is being replaced,
// and every claim applied. Otherwise it publishes the entries put since
// the last turn that could not be appended. The loop runs it at the end of
// every turn.
func (p *Pool) restock() {
	key := shelfKey{open: p.connected && p.reconciled && p.current != nil}
	if key.open {
		key.version = p.current.Seq()
	}
	if key == p.shelved {
		if p.shelf.dirty {
			p.shelf.restock(p.shelfFree())
		}
		return
	}
	p.shelved = key
	p.shelf.stock.Store(nil)
	for name, e := range p.shelf.entries {
		if e.claim.CompareAndSwap(nil, withdrawn) {
			delete(p.shelf.entries, name)
		}
	}
	p.applyClaims() // what is left on the shelf's map is claimed
	for _, e := range p.shelf.entries {
		p.applyClaim(e)
	}
	if !key.open {
		p.shelf.dirty = false
		return
	}
	for _, v := range p.idx.clean {
		if v.version == key.version {
			p.shelf.entries[v.name] = &shelfEntry{vm: p.export(v)}
		}
	}
	p.shelf.restock(p.shelfFree())
}

// shelfFree returns the shelf's entries no Take has claimed, in the
// table's order of clean VMs: oldest first.
func (p *Pool) shelfFree() []*shelfEntry {
	var out []*shelfEntry
	for _, v := range p.idx.clean {
		if e := p.shelf.entries[v.name]; e != nil && e.claim.Load() == nil {
			out = append(out, e)
		}
	}
	return out
}

// shelve puts v, just clean, on the shelf if it is of the current version.
func (p *Pool) shelve(v *vm) {
	if p.shelved.open && v.version == p.shelved.version {
		p.shelf.put(p.export(v))
	}
}
