package pool

import (
	"slices"
	"sync/atomic"
)

// index is what the loop keeps beside the table so that a handoff, and the
// sync after every input, cost the same with a thousand VMs as with ten:
// the clean VMs in the order they became clean, how many VMs each state of
// each version has, and, for AtAddress, the VM at each guest network slot.
// The table's three ways in and out — add, moved, drop — keep it current.
type index struct {
	clean  []*vm // oldest first
	counts map[stateOf]int
	guests []atomic.Pointer[VM] // by slot; nil: no VM there
	// held counts the VMs of the table at each slot: usually one, two
	// when a leftover found in libvirt holds the address of a VM made
	// since. A slot is free only when none holds it.
	held []int
}

type stateOf struct {
	state   State
	version int
}

func newIndex(slots int) index {
	return index{counts: map[stateOf]int{}, guests: make([]atomic.Pointer[VM], slots), held: make([]int, slots)}
}

// add takes in a VM that joined the table in v.state.
func (p *Pool) add(v *vm) {
	p.vms[v.name] = v
	p.idx.enter(v)
	if p.hasSlot(v) {
		p.idx.held[v.slot]++
	}
	p.showGuest(v)
	if v.state == Clean {
		p.shelve(v)
	}
}

// moved follows a VM of the table from state from to v.state.
func (p *Pool) moved(v *vm, from State) {
	p.idx.leave(v, from)
	p.idx.enter(v)
	p.showGuest(v)
	if v.state == Clean {
		p.shelve(v)
	}
}

// drop takes a VM off the table.
func (p *Pool) drop(v *vm) {
	delete(p.vms, v.name)
	p.idx.leave(v, v.state)
	if !p.hasSlot(v) {
		return
	}
	p.idx.held[v.slot]--
	g := &p.idx.guests[v.slot]
	if cur := g.Load(); cur != nil && cur.Name == v.name {
		g.Store(nil)
		if p.idx.held[v.slot] > 0 { // another VM has the address: show it (rare, so a walk)
			for _, o := range p.vms {
				if o.slot == v.slot {
					p.showGuest(o)
				}
			}
		}
	}
}

func (p *Pool) hasSlot(v *vm) bool { return v.slot >= 0 && v.slot < len(p.idx.guests) }

func (x *index) enter(v *vm) {
	x.counts[stateOf{v.state, v.version}]++
	if v.state != Clean {
		return
	}
	// VMs usually become clean in time order; one whose since is earlier
	// than the last's goes where its time puts it.
	i := len(x.clean)
	for i > 0 && x.clean[i-1].since.After(v.since) {
		i--
	}
	x.clean = slices.Insert(x.clean, i, v)
}

func (x *index) leave(v *vm, s State) {
	k := stateOf{s, v.version}
	if x.counts[k]--; x.counts[k] <= 0 {
		delete(x.counts, k)
	}
	if s == Clean {
		if i := slices.Index(x.clean, v); i >= 0 {
			x.clean = slices.Delete(x.clean, i, i+1)
		}
	}
}

// showGuest publishes v at its guest network slot, for AtAddress. Where two
// VMs hold the address, the one not being wiped is shown.
func (p *Pool) showGuest(v *vm) {
	if !p.hasSlot(v) {
		return
	}
	g := &p.idx.guests[v.slot]
	if cur := g.Load(); cur != nil && cur.Name != v.name && v.state.ending() && !cur.State.ending() && cur.State != Gone {
		return
	}
	g.Store(&VM{Name: v.name, State: v.state, Since: v.since, Version: v.version, IP: p.ip(v)})
}
