// Package pooltest is an in-memory stand-in for the VM pool, for tests of
// the logic built on it (sessions, the gateway). Real VMs are exercised by
// the integration tests.
package pooltest

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"undervdi/server/pool"
)

// Pool is an in-memory pool of VMs whose SPICE is at Socket.
type Pool struct {
	mu      sync.Mutex
	vms     map[string]*pool.VM
	order   []string // clean VMs, oldest first
	wait    chan struct{}
	used    map[string]bool
	events  []string // "released x", "ended x: reason", "used x"
	claimed map[string]int
	// Socket and Password are given to every VM's SPICE target.
	Socket   string
	Password string
	// Sink hears of every VM ended, as the broker's wiring passes the real
	// pool's announcements to the sessions.
	Sink func(pool.Ended)
	// Down, if set, is what Take returns: a pool that lost libvirt.
	Down error
	// BeforeTake, if set, runs at the start of every Take: what happens
	// elsewhere while a request is served.
	BeforeTake func()
}

// SetDown makes Take fail with err (nil: serve again), and wakes waiters.
func (f *Pool) SetDown(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Down = err
	close(f.wait)
	f.wait = make(chan struct{})
}

// New returns a pool with n clean VMs, whose SPICE is at socket.
func New(n int, socket, password string) *Pool {
	f := &Pool{vms: map[string]*pool.VM{}, wait: make(chan struct{}), used: map[string]bool{}, claimed: map[string]int{},
		Socket: socket, Password: password}
	for range n {
		f.Add()
	}
	return f
}

// Add makes one more clean VM and returns its name.
func (f *Pool) Add() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := fmt.Sprintf("vm-%03d", len(f.vms)+len(f.events)+1)
	for f.vms[name] != nil {
		name += "x"
	}
	f.vms[name] = &pool.VM{Name: name, State: pool.Clean, Spice: pool.SpiceTarget{Socket: f.Socket, Password: f.Password}}
	f.order = append(f.order, name)
	close(f.wait)
	f.wait = make(chan struct{})
	return name
}

// VMs returns the VMs the pool has, in no order.
func (f *Pool) VMs() []pool.VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []pool.VM
	for _, v := range f.vms {
		out = append(out, *v)
	}
	return out
}

// Take implements session.Pool.
func (f *Pool) Take(c pool.Claim) (pool.VM, error) {
	if f.BeforeTake != nil {
		f.BeforeTake()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Down != nil {
		return pool.VM{}, f.Down
	}
	if len(f.order) == 0 {
		return pool.VM{}, pool.ErrNoCleanVM
	}
	name := f.order[0]
	f.order = f.order[1:]
	f.vms[name].State = pool.Offered
	f.claimed[name]++
	return *f.vms[name], nil
}

func (f *Pool) WaitClean() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wait
}

func (f *Pool) MarkUsed(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.used[name] = true
	f.events = append(f.events, "used "+name)
	return nil
}

func (f *Pool) Release(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vms[name]
	if v == nil || v.State != pool.Offered {
		return pool.ErrNotOffered
	}
	v.State = pool.Clean
	f.order = append(f.order, name)
	f.events = append(f.events, "released "+name)
	close(f.wait)
	f.wait = make(chan struct{})
	return nil
}

// Finish implements session.Pool: Release for a VM no client linked, End
// for a used one.
func (f *Pool) Finish(name string, used bool, reason string) {
	if used {
		f.End(name, reason)
	} else {
		f.Release(context.Background(), name)
	}
}

// End destroys the VM and, like the real pool, reports it a moment later.
func (f *Pool) End(name, reason string) error {
	f.mu.Lock()
	if f.vms[name] == nil {
		f.mu.Unlock()
		return pool.ErrUnknownVM
	}
	delete(f.vms, name)
	f.events = append(f.events, "ended "+name+": "+reason)
	sink := f.Sink
	used := f.used[name]
	f.mu.Unlock()
	if sink != nil {
		go func() {
			time.Sleep(time.Millisecond)
			sink(pool.Ended{VM: name, Reason: reason, Used: used, Wiped: true, At: time.Now()})
		}()
	}
	return nil
}

// GuestStops plays a guest that powers off: the pool reports the VM ended.
func (f *Pool) GuestStops(name string) { f.End(name, "guest powered off or rebooted") }

// Log returns what happened to the VMs: "used x", "released x", "ended x: why".
func (f *Pool) Log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

// HasEvent reports whether an entry of Log starts with prefix.
func (f *Pool) HasEvent(prefix string) bool {
	for _, e := range f.Log() {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

// Claimed returns how many times each VM was taken.
func (f *Pool) Claimed() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.claimed)
}
