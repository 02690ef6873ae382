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
}

type stateOf struct {
	state   State
	version int
}

func newIndex(slots int) index {
	return index{counts: map[stateOf]int{}, guests: make([]atomic.Pointer[VM], slots)}
}

// add takes in a VM that joined the table in v.state.
func (p *Pool) add(v *vm) {
	p.vms[v.name] = v
	p.idx.enter(v)
	p.showGuest(v)
}

// moved follows a VM of the table from state from to v.state.
func (p *Pool) moved(v *vm, from State) {
	p.idx.leave(v, from)
	p.idx.enter(v)
	p.showGuest(v)
}

// drop takes a VM off the table.
func (p *Pool) drop(v *vm) {
	delete(p.vms, v.name)
	p.idx.leave(v, v.state)
	if v.slot >= 0 && v.slot < len(p.idx.guests) {
		g := &p.idx.guests[v.slot]
		if cur := g.Load(); cur != nil && cur.Name == v.name {
			g.Store(nil)
		}
	}
}

func (x *index) enter(v *vm) {
	x.counts[stateOf{v.state, v.version}]++
	if v.state != Clean {
		return
	}
	// VMs become clean in time order; a VM whose since is earlier than the
	// last's (a clock step) goes where its time puts it.
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

// showGuest publishes v at its guest network slot, for AtAddress.
func (p *Pool) showGuest(v *vm) {
	if v.slot >= 0 && v.slot < len(p.idx.guests) {
		p.idx.guests[v.slot].Store(&VM{Name: v.name, State: v.state, Since: v.since, Version: v.version, IP: p.ip(v)})
	}
}
