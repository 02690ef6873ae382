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
	if err := p.checkShelf(); err != nil {
		return err
	}
	for i := range p.idx.guests {
		g := p.idx.guests[i].Load()
		var holders []*vm
		for _, v := range p.vms {
			if v.slot == i {
				holders = append(holders, v)
			}
		}
		if p.idx.held[i] != len(holders) {
			return fmt.Errorf("guest slot %d: index counts %d holders, the table %d", i, p.idx.held[i], len(holders))
		}
		switch {
		case len(holders) == 0 && g != nil:
			return fmt.Errorf("guest slot %d shows %s, which is off the table", i, g.Name)
		case len(holders) > 0 && g == nil:
			return fmt.Errorf("guest slot %d, held by %s, shows nothing", i, holders[0].name)
		case len(holders) > 0 && !slices.ContainsFunc(holders, func(v *vm) bool { return v.name == g.Name && v.state == g.State }):
			return fmt.Errorf("guest slot %d shows %s in state %s, which does not hold it so", i, g.Name, g.State)
		}
	}
	return nil
}

// checkShelf reports where the shelf and the table disagree: once the
// loop has applied the claims, the shelf holds exactly the clean VMs of the
// current version, oldest first, while the pool may serve, and nothing
// otherwise. The loop runs it (p.call).
func (p *Pool) checkShelf() error {
	p.applyClaims()
	var want []string
	if p.shelved.open {
		for _, v := range p.idx.clean {
			if v.version == p.shelved.version {
				want = append(want, v.name)
			}
		}
	}
	var got []string
	if st := p.shelf.stock.Load(); st != nil {
		for _, e := range st.entries[st.head.Load():st.n.Load()] {
			if e.claim.Load() != nil {
				continue
			}
			if e.vm.State != Clean {
				return fmt.Errorf("the shelf holds %s in state %s", e.vm.Name, e.vm.State)
			}
			if p.shelf.entries[e.vm.Name] != e {
				return fmt.Errorf("the shelf holds %s, which the loop does not know there", e.vm.Name)
			}
			got = append(got, e.vm.Name)
		}
	}
	if len(p.shelf.entries) != len(got) {
		return fmt.Errorf("the loop knows %d VMs on the shelf, the shelf holds %d free", len(p.shelf.entries), len(got))
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("the shelf holds %v, the table's clean VMs of the current version are %v", got, want)
	}
	return nil
}

// CleanCount is how many VMs of the table are clean: for the broker-scale
// benchmark's wait between rounds, where a status, a copy of the table,
// every few milliseconds would be most of what the broker allocates.
func (p *Pool) CleanCount() int {
	n := 0
	p.call(func() {
		p.quiet = true
		for k, c := range p.idx.counts {
			if k.state == Clean {
				n += c
			}
		}
	})
	return n
}
