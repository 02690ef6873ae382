package pool

import (
	"slices"
	"sync"
	"time"
)

// The shelf is how Take hands out a clean VM without waiting for the loop.
// It holds the clean VMs of the current version, oldest first, as Take
// returns them. Take pops one under the shelf's own short lock and leaves
// a claim there for the loop, which applies it (the VM's state becomes
// offered) as soon as it runs. A thousand kiosks asking at once then never
// queue behind the loop, each reader parked and woken in turn; only
// requests the shelf cannot serve (none clean of the current version, the
// pool unavailable) take the loop's slow way.
//
// The one rule that keeps a VM from being handed out twice, or changed
// under its taker: the loop takes a VM off the shelf before any input
// changes it (apply does), and if it is not there but claimed, applies the
// claims first. Either the loop or one Take wins the VM, under the lock.
type shelf struct {
	mu     sync.Mutex
	open   bool
	vms    []VM      // clean, of the current version, oldest first
	claims []claimed // taken, not yet applied by the loop
	kick   chan struct{}
}

type claimed struct {
	name  string
	claim Claim
}

// take pops the oldest VM for c, if the shelf has one, and tells the loop.
func (s *shelf) take(c Claim) (VM, bool) {
	s.mu.Lock()
	if !s.open || len(s.vms) == 0 {
		s.mu.Unlock()
		return VM{}, false
	}
	v := s.vms[0]
	s.vms[0] = VM{}
	s.vms = s.vms[1:]
	now := time.Now()
	c.At = now
	s.claims = append(s.claims, claimed{name: v.Name, claim: c})
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	v.State, v.Since = Offered, now
	return v, true
}

// put shelves v in the order of the time it became clean.
func (s *shelf) put(v VM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return
	}
	i := len(s.vms)
	for i > 0 && s.vms[i-1].Since.After(v.Since) {
		i--
	}
	s.vms = slices.Insert(s.vms, i, v)
}

// shelfPlace is where unshelve found a VM.
type shelfPlace int

const (
	notShelved shelfPlace = iota // never on the shelf (another version; the shelf closed)
	wasShelved                   // on the shelf: now off it
	claimedOff                   // taken from it: its claim waits for the loop
)

// unshelve takes name off the shelf, if it is there.
func (s *shelf) unshelve(name string) shelfPlace {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.IndexFunc(s.vms, func(v VM) bool { return v.Name == name }); i >= 0 {
		s.vms = slices.Delete(s.vms, i, i+1)
		return wasShelved
	}
	if slices.ContainsFunc(s.claims, func(c claimed) bool { return c.name == name }) {
		return claimedOff
	}
	return notShelved
}

// claimsTaken returns the claims waiting, and forgets them.
func (s *shelf) claimsTaken() []claimed {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.claims
	s.claims = nil
	return c
}

// applyClaims makes every VM taken from the shelf offered, in the order
// they were taken.
func (p *Pool) applyClaims() {
	for _, c := range p.shelf.claimsTaken() {
		if err := p.apply(input{kind: apiTake, vm: c.name, claim: c.claim, at: c.claim.At, shelved: true}); err != nil {
			// The shelf's rule makes this impossible; its taker's
			// session fails at its first link (the VM is not offered).
			p.log.Error("pool: a VM taken from the shelf could not be offered (a bug)", "vm", c.name, "err", err)
		}
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
// and every claim applied.
func (p *Pool) restock() {
	key := shelfKey{open: p.connected && p.reconciled && p.current != nil}
	if key.open {
		key.version = p.current.Seq()
	}
	if key == p.shelved {
		return
	}
	p.shelved = key
	p.shelf.mu.Lock()
	p.shelf.open, p.shelf.vms = false, nil
	p.shelf.mu.Unlock()
	p.applyClaims()
	if !key.open {
		return
	}
	var vms []VM
	for _, v := range p.idx.clean {
		if v.version == key.version {
			vms = append(vms, p.export(v))
		}
	}
	p.shelf.mu.Lock()
	p.shelf.open, p.shelf.vms = true, vms
	p.shelf.mu.Unlock()
}

// shelve puts v, just clean, on the shelf if it is of the current version.
func (p *Pool) shelve(v *vm) {
	if p.shelved.open && v.version == p.shelved.version {
		p.shelf.put(p.export(v))
	}
}
