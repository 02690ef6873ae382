package pool

import (
	"fmt"
	"maps"
	"slices"

	"undervdi/server/virt"
)

// NewFakeHypervisor returns the in-memory hypervisor of the pool's tests,
// connected, with memory for any number of clones: for the broker-scale
// benchmark in package pool_test, which drives the pool with the session
// manager (that imports this package) on top.
func NewFakeHypervisor() Hypervisor {
	f := newFakeHV()
	f.mem = 1 << 50
	f.events <- virt.Event{Kind: virt.Connected}
	return f
}

// checkIndex reports where the index and the table disagree.
func (p *Pool) checkIndex() error {
	want := newIndex(len(p.idx.guests))
	for _, v := range p.vms {
		want.enter(v)
	}
	if !maps.Equal(want.counts, p.idx.counts) {
		return fmt.Errorf("index counts %v, the table %v", p.idx.counts, want.counts)
	}
	if !slices.Equal(want.clean, p.idx.clean) {
		return fmt.Errorf("index has %d clean VMs in order, the table %d", len(p.idx.clean), len(want.clean))
	}
	for i := range p.idx.guests {
		g := p.idx.guests[i].Load()
		var held *vm
		for _, v := range p.vms {
			if v.slot == i {
				held = v
			}
		}
		switch {
		case held == nil && g != nil:
			return fmt.Errorf("guest slot %d shows %s, which is off the table", i, g.Name)
		case held != nil && (g == nil || g.Name != held.name || g.State != held.state):
			return fmt.Errorf("guest slot %d does not show %s in state %s", i, held.name, held.state)
		}
	}
	return nil
}
