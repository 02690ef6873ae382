package pool

import (
	"context"
	"fmt"
	"time"

	"undervdi/server/domxml"
)

// Take hands out one clean VM: the one that has waited longest. The VM is
// recorded as offered in libvirt before Take returns, so that no crash can
// make it look clean again, and no other caller can ever get it.
func (p *Pool) Take(ctx context.Context) (VM, error) {
	for {
		v, err := p.Claim()
		if err != nil {
			return VM{}, err
		}
		if err := p.Confirm(ctx, v.Name); err == nil {
			return v, nil
		}
		// The VM is being destroyed: try the next one.
	}
}

// Claim is the first half of Take: it picks the clean VM that has waited
// longest and marks it offered in memory only, so that no other caller can
// get it. It is instant, which lets a dispatcher serve a queue strictly in
// order while the Confirms run concurrently. The caller must Confirm the VM
// before handing it to anyone.
func (p *Pool) Claim() (VM, error) {
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
	return pick.export(), nil
}

// Confirm records a claimed VM as offered in libvirt. If that fails, the VM
// is destroyed and the error returned.
func (p *Pool) Confirm(ctx context.Context, name string) error {
	err := p.hv.SetMetadata(ctx, name, p.meta(domxml.Offered))
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[name]
	switch {
	case v == nil:
		return fmt.Errorf("%w: %s", ErrUnknownVM, name)
	case err != nil:
		p.log.Warn("could not record a VM as offered; destroying it", "vm", name, "err", err)
		p.endLocked(v, "could not record the offer: "+err.Error())
		return err
	case v.state != domxml.Offered:
		return fmt.Errorf("%w: %s is %s", ErrNotOffered, name, v.state)
	}
	return nil
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
	if err := p.hv.SetMetadata(ctx, name, p.meta(domxml.InUse)); err != nil {
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
	v := p.vms[name]
	if v == nil || v.state != domxml.Offered {
		p.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotOffered, name)
	}
	p.mu.Unlock()
	if err := p.hv.SetMetadata(ctx, name, p.meta(domxml.Clean)); err != nil {
		p.mu.Lock()
		p.endLocked(v, "could not record the release: "+err.Error())
		p.mu.Unlock()
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v.state == domxml.Offered {
		v.state, v.since = domxml.Clean, time.Now()
		p.wakeLocked()
	}
	return nil
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
