package pool

import (
	"context"
	"fmt"
	"time"

	"undervdi/server/domxml"
)

// Take hands out one clean VM: the one that has waited longest. No other
// caller can ever get it. Its new state is written to libvirt in the
// background: an offered VM that no client linked is still pristine, so a
// crash before that write loses nothing (the next start keeps the VM as
// clean), and handoffs do not wait for libvirt. The write that must come
// first, "in-use", is MarkUsed's.
func (p *Pool) Take() (VM, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.availableLocked(); err != nil {
		return VM{}, err
	}
	var pick *vm
	for _, v := range p.vms {
		if v.state == domxml.Clean && (pick == nil || v.since.Before(pick.since)) {
			pick = v
		}
	}
	if pick == nil {
		return VM{}, ErrNoCleanVM
	}
	pick.state, pick.since = domxml.Offered, time.Now()
	p.syncLocked() // one clean VM fewer: refill
	p.goBackground(func() {
		if err := p.record(p.ctx, pick); err != nil {
			p.log.Debug("could not record an offer", "vm", pick.name, "err", err)
		}
	})
	return pick.export(), nil
}

// WaitClean returns a channel that is closed the next time a VM may have
// become clean (or the pool's availability changed). Callers that got
// ErrNoCleanVM wait on it and call Take again.
func (p *Pool) WaitClean() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cleanWait
}

func (p *Pool) availableLocked() error {
	switch {
	case !p.connected:
		return fmt.Errorf("%w: libvirt connection lost; reconnecting", ErrUnavailable)
	case p.golden == nil:
		return fmt.Errorf("%w: golden VM not checked yet", ErrUnavailable)
	}
	return nil
}

// MarkUsed records that a client linked to an offered VM: from now on it
// will only ever be destroyed. It returns once libvirt has the new state;
// only then may the client's bytes reach the VM.
func (p *Pool) MarkUsed(ctx context.Context, name string) error {
	p.mu.Lock()
	v := p.vms[name]
	switch {
	case v == nil:
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownVM, name)
	case v.state == domxml.InUse:
		p.mu.Unlock()
		return nil
	case v.state != domxml.Offered:
		p.mu.Unlock()
		return fmt.Errorf("%w: %s is %s", ErrNotOffered, name, v.state)
	}
	v.state, v.since, v.used = domxml.InUse, time.Now(), true
	p.mu.Unlock()
	if err := p.record(ctx, v); err != nil {
		p.mu.Lock()
		p.endLocked(v, "could not record first use: "+err.Error())
		p.mu.Unlock()
		return err
	}
	return nil
}

// Release puts an offered VM that no client ever linked back into the pool:
// it is still pristine.
func (p *Pool) Release(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[name]
	if v == nil || v.state != domxml.Offered {
		return fmt.Errorf("%w: %s", ErrNotOffered, name)
	}
	v.state, v.since = domxml.Clean, time.Now()
	p.wakeLocked()
	p.goBackground(func() {
		if err := p.record(p.ctx, v); err != nil {
			p.log.Debug("could not record a release", "vm", v.name, "err", err)
		}
	})
	return nil
}

// record writes v's state, as it is when the write runs, to its metadata.
// A VM's writes are serialized, so a late one never brings back an older
// state.
func (p *Pool) record(ctx context.Context, v *vm) error {
	v.metaMu.Lock()
	defer v.metaMu.Unlock()
	p.mu.Lock()
	state := v.state
	p.mu.Unlock()
	return p.hv.SetMetadata(ctx, v.name, p.meta(state))
}

// End destroys a VM with its disk, for the given reason (session over, admin).
// It returns at once; OnEnded listeners hear when the VM is wiped.
func (p *Pool) End(name, reason string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[name]
	if v == nil {
		return fmt.Errorf("%w: %s", ErrUnknownVM, name)
	}
	p.endLocked(v, reason)
	return nil
}

func (v *vm) export() VM {
	return VM{Name: v.name, State: v.state, Since: v.since, Spice: v.spice, Overlays: append([]string(nil), v.overlays...)}
}

// Status is the pool's state for people: the admin API and `vdi-broker status`.
type Status struct {
	Pool      string               `json:"pool"`
	Golden    string               `json:"golden"`
	Connected bool                 `json:"connected"`
	Size      int                  `json:"size"`
	MaxVMs    int                  `json:"max_vms"`
	Counts    map[domxml.State]int `json:"counts"`
	Paused    string               `json:"paused,omitempty"`
	Degraded  string               `json:"degraded,omitempty"`
	Memory    string               `json:"memory,omitempty"` // why no clone can start now
	Failures  int                  `json:"consecutive_failures"`
	VMs       []VMStatus           `json:"vms"`
}

// VMStatus is one VM in Status. It never carries the SPICE password.
type VMStatus struct {
	Name     string       `json:"name"`
	State    domxml.State `json:"state"`
	Since    time.Time    `json:"since"`
	Overlays []string     `json:"overlays,omitempty"`
	Reason   string       `json:"reason,omitempty"`
	Error    string       `json:"error,omitempty"`
}

// Status returns a snapshot of the pool.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{
		Pool: p.cfg.Name, Golden: p.cfg.Golden, Connected: p.connected,
		Size: p.cfg.Size, MaxVMs: p.cfg.MaxVMs, Counts: map[domxml.State]int{},
		Paused: p.paused, Degraded: p.degraded, Memory: p.memShort, Failures: p.fails,
	}
	for _, v := range p.vms {
		s.Counts[v.state]++
		vs := VMStatus{Name: v.name, State: v.state, Since: v.since, Overlays: append([]string(nil), v.overlays...), Reason: v.reason}
		if v.endErr != nil {
			vs.Error = v.endErr.Error()
		}
		s.VMs = append(s.VMs, vs)
	}
	sortStatus(s.VMs)
	return s
}
