package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// SpiceTarget is how the broker reaches a VM's display: a unix socket on the
// broker's own host or a TLS port on another host, and the VM's own SPICE
// password. The password never leaves the broker.
type SpiceTarget struct {
	Socket   string // its unix socket, on the broker's own host
	TLS      string // or host:port of its TLS port, on another host
	Password string
}

// Claim is who a VM is offered to. It is recorded in the VM's metadata, so
// that a session a crash interrupted still gets its audit line.
type Claim struct {
	Kiosk string
	Lease string
	Addr  string
	At    time.Time // when it was offered; Take sets it
}

// VM is a copy of what the pool knows about one VM.
type VM struct {
	Name     string
	State    State
	Since    time.Time
	Version  int
	Spice    SpiceTarget
	Overlays []string
	IP       string // its address on the guest network; "": none
}

func (p *Pool) export(v *vm) VM {
	return VM{Name: v.name, State: v.state, Since: v.since, Version: v.version, Spice: v.spice,
		Overlays: append([]string(nil), v.overlays...), IP: p.ip(v)}
}

// ip is v's address on the guest network, or "".
func (p *Pool) ip(v *vm) string {
	if p.cfg.Network == nil || v.slot < 0 {
		return ""
	}
	return p.cfg.Network.Addr(v.slot).String()
}

// AtAddress returns the VM that holds a guest network address: the egress
// guard's way to tell whose request it is. It reads what the loop publishes
// at every change, and never waits for the loop: a flood of a guest's
// requests cannot slow the pool.
func (p *Pool) AtAddress(ip netip.Addr) (VM, bool) {
	if p.cfg.Network == nil {
		return VM{}, false
	}
	slot := p.cfg.Network.Slot(ip.String())
	if slot < 0 || slot >= len(p.idx.guests) {
		return VM{}, false
	}
	if v := p.idx.guests[slot].Load(); v != nil {
		return *v, true
	}
	return VM{}, false
}

// Take hands out one clean VM to c: of the current version if there is one,
// and of those the one that has waited longest. No other caller can ever
// get it. Its new state is written to libvirt in the background: an offered
// VM that no client linked is still pristine, so a crash before that write
// loses nothing, and handoffs do not wait for libvirt. The write that must
// come first, in-use, is MarkUsed's.
func (p *Pool) Take(c Claim) (VM, error) {
	if v, ok := p.shelf.take(c); ok {
		return v, nil
	}
	var out VM
	var err error
	if cerr := p.call(func() { out, err = p.take(c) }); cerr != nil {
		return VM{}, cerr
	}
	return out, err
}

func (p *Pool) take(c Claim) (VM, error) {
	if err := p.available(); err != nil {
		return VM{}, err
	}
	for {
		pick := p.oldestClean()
		if pick == nil {
			return VM{}, ErrNoCleanVM
		}
		now := time.Now()
		c.At = now
		err := p.apply(input{kind: apiTake, vm: pick.name, claim: c, at: now})
		if err == errTaken {
			continue // a Take took it from the shelf meanwhile
		}
		if err != nil {
			return VM{}, err
		}
		return p.export(pick), nil
	}
}

// oldestClean returns the clean VM that waited longest: of the current
// version if there is one, else of any version. It reads the index, oldest
// first; during a roll the older version's VMs come first and are skipped.
func (p *Pool) oldestClean() *vm {
	if len(p.idx.clean) == 0 {
		return nil
	}
	if p.current != nil {
		for _, v := range p.idx.clean {
			if v.version == p.current.Seq() {
				return v
			}
		}
	}
	return p.idx.clean[0]
}

func (p *Pool) available() error {
	switch {
	case !p.connected:
		return fmt.Errorf("%w: libvirt connection lost; reconnecting", ErrUnavailable)
	case !p.reconciled:
		return fmt.Errorf("%w: reconciling with libvirt", ErrUnavailable)
	}
	return nil
}

// WaitClean returns a channel that is closed the next time a VM may have
// become clean (or the pool's availability changed). Callers that got
// ErrNoCleanVM wait on it and call Take again.
func (p *Pool) WaitClean() <-chan struct{} {
	var ch chan struct{}
	p.call(func() { ch = p.cleanWait })
	return ch // nil, which never fires, once the pool has stopped
}

// MarkUsed records that a client linked to an offered VM: from now on it
// will only ever be destroyed. It returns once libvirt has the new state;
// only then may the client's bytes reach the VM.
func (p *Pool) MarkUsed(ctx context.Context, name string) error {
	answer := make(chan error, 1)
	err := p.call(func() {
		if p.vms[name] == nil {
			answer <- fmt.Errorf("%w: %s", ErrUnknownVM, name)
			return
		}
		p.waiters[name] = append(p.waiters[name], answer)
		if err := p.apply(input{kind: apiMarkUsed, vm: name}); err != nil {
			p.waiters[name] = slices.DeleteFunc(p.waiters[name], func(w chan error) bool { return w == answer })
			answer <- err
		}
	})
	if err != nil {
		return err
	}
	select {
	case err := <-answer:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release puts an offered VM that no client ever linked back into the pool:
// it is still pristine.
func (p *Pool) Release(ctx context.Context, name string) error {
	var err error
	if cerr := p.call(func() {
		if err = p.apply(input{kind: apiRelease, vm: name}); err == ErrUnknownVM {
			err = fmt.Errorf("%w: %s", ErrNotOffered, name)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// Finish tells the pool that the session on VM name is over, and returns
// at once: a VM no client linked (used false) goes back clean, a used one
// is destroyed with its disk, for reason, and Ended announces it once it is
// wiped. A session's end does not wait for the loop: a thousand kiosks
// ending at once would otherwise each keep a goroutine, and its stack,
// until the loop got to them.
func (p *Pool) Finish(name string, used bool, reason string) {
	p.tell(func() {
		in := input{kind: apiRelease, vm: name}
		if used {
			in = input{kind: apiEnd, vm: name, detail: reason}
		}
		if err := p.apply(in); err != nil {
			p.log.Debug("pool: a finished session's VM is not what the session left", "vm", name, "used", used, "err", err)
		}
	})
}

// End destroys a VM with its disk, for the given reason (session over, an
// admin). It returns at once; Ended announces the VM once it is wiped.
func (p *Pool) End(name, reason string) error {
	var err error
	if cerr := p.call(func() {
		if err = p.apply(input{kind: apiEnd, vm: name, detail: reason}); err == ErrUnknownVM {
			err = fmt.Errorf("%w: %s", ErrUnknownVM, name)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// ErrBadSize is SetSize's error for a size out of range.
var ErrBadSize = errors.New("bad pool size")

// SetSize changes how many clean VMs the pool keeps ready, at run time (an
// operator, the opening hours): a larger pool refills at once, a smaller
// one destroys its surplus clean VMs. 0 keeps none ready. It lasts until
// the broker restarts, which reads pool_size again.
func (p *Pool) SetSize(n int) error {
	if n < 0 || n > p.cfg.MaxVMs {
		return fmt.Errorf("%w: %d; from 0 to max_vms (%d)", ErrBadSize, n, p.cfg.MaxVMs)
	}
	return p.call(func() {
		if p.cfg.Size != n {
			p.log.Info("pool size changed", "from", p.cfg.Size, "to", n)
			p.cfg.Size = n
			p.filled = false
			p.wake()
		}
	})
}

// Publish publishes a new version of the golden VM. It returns once the
// golden was checked (shut off, cloneable) and the versions pool has room,
// with the new version's number; the copy goes on in the background, and
// Status shows its progress. The pool rolls to the new version once it is
// published.
func (p *Pool) Publish(ctx context.Context) (int, error) {
	var preflight <-chan error
	if err := p.call(func() {
		if !p.connected || !p.prepared {
			ch := make(chan error, 1)
			ch <- fmt.Errorf("%w: not connected to libvirt", ErrUnavailable)
			preflight = ch
			return
		}
		preflight = p.startPublish("requested")
	}); err != nil {
		return 0, err
	}
	select {
	case err := <-preflight:
		if err != nil {
			return 0, err
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	var seq int
	err := p.call(func() { seq = p.publish.Seq })
	return seq, err
}

// Rollback makes the version before the current one current again; the
// pool rolls to it. It returns the version numbers from and to.
func (p *Pool) Rollback(ctx context.Context) (from, to int, err error) {
	done := make(chan rollbackResult, 1)
	if err := p.call(func() { p.rollback(done) }); err != nil {
		return 0, 0, err
	}
	select {
	case r := <-done:
		return r.from, r.to, r.err
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

// Status is the pool's state for people: the admin API and `vdi-broker status`.
type Status struct {
	Pool      string `json:"pool"`
	Golden    string `json:"golden"`
	Connected bool   `json:"connected"`
	// Reconciling: connected, and the table is not yet checked against
	// libvirt (at the start, after a reconnect); no VM is handed out.
	Reconciling bool            `json:"reconciling,omitempty"`
	Size        int             `json:"size"`
	MaxVMs      int             `json:"max_vms"`
	Counts      map[State]int   `json:"counts"`
	Paused      string          `json:"paused,omitempty"`
	Degraded    string          `json:"degraded,omitempty"`
	Memory      string          `json:"memory,omitempty"` // why no clone can start now
	Failures    int             `json:"consecutive_failures"`
	Current     int             `json:"current_version,omitempty"`
	Versions    []VersionStatus `json:"versions"`
	Publish     *PublishStatus  `json:"publish,omitempty"`
	VMs         []VMStatus      `json:"vms"`
	Recorded    map[string]int  `json:"recorded"` // VMs by the state libvirt records: booting, clean, offered, in-use, ending
	Clones      map[int]int     `json:"clones_by_version"`
	// Hosts is each host of a site of several; one host's pool has none.
	Hosts []HostStatus `json:"hosts,omitempty"`
}

// HostStatus is one host of a site in Status.
type HostStatus struct {
	Name        string         `json:"name"`
	URI         string         `json:"uri"`
	Group       string         `json:"group,omitempty"`
	Connected   bool           `json:"connected"`
	Reconciling bool           `json:"reconciling,omitempty"`
	Lost        *time.Time     `json:"lost,omitempty"` // since when its connection is down
	Paused      string         `json:"paused,omitempty"`
	Degraded    string         `json:"degraded,omitempty"`
	Size        int            `json:"size"` // its share of the site's pool_size
	MaxVMs      int            `json:"max_vms"`
	Counts      map[State]int  `json:"counts"`
	Current     int            `json:"current_version,omitempty"`
	Publish     *PublishStatus `json:"publish,omitempty"` // its publish, or copy of a version, under way or the last
}

// Count returns how many VMs are recorded in libvirt as rec (booting,
// clean, offered, in-use or ending).
func (s Status) Count(rec string) int { return s.Recorded[rec] }

// VMStatus is one VM in Status. It never carries the SPICE password.
type VMStatus struct {
	Name     string    `json:"name"`
	State    State     `json:"state"`
	Since    time.Time `json:"since"`
	Version  int       `json:"version,omitempty"`
	Overlays []string  `json:"overlays,omitempty"`
	IP       string    `json:"ip,omitempty"`   // on the guest network
	Host     string    `json:"host,omitempty"` // in a site of several hosts
	Reason   string    `json:"reason,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// VersionStatus is one published version in Status.
type VersionStatus struct {
	Version   int        `json:"version"`
	Golden    string     `json:"golden"`
	Published time.Time  `json:"published"`
	Withdrawn *time.Time `json:"withdrawn,omitempty"`
	Size      uint64     `json:"size"` // bytes its volumes hold
	Clones    int        `json:"clones"`
	Current   bool       `json:"current,omitempty"`
	Kept      bool       `json:"kept,omitempty"` // kept for a rollback
	Volumes   []string   `json:"volumes"`
}

// PublishStatus is the publish under way, or the last one.
type PublishStatus struct {
	Version  int        `json:"version"`
	Reason   string     `json:"reason"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	Total    uint64     `json:"total"`
	Written  uint64     `json:"written"`
	Disk     string     `json:"disk,omitempty"`
	Error    string     `json:"error,omitempty"`
}

// Status returns a snapshot of the pool.
func (p *Pool) Status() Status {
	var s Status
	if err := p.call(func() { s = p.status() }); err != nil {
		s = Status{Pool: p.cfg.Name, Golden: p.cfg.Golden, Size: p.cfg.Size, MaxVMs: p.cfg.MaxVMs,
			Paused: "the pool is not running"}
	}
	return s
}

func (p *Pool) status() Status {
	s := Status{
		Pool: p.cfg.Name, Golden: p.cfg.Golden, Connected: p.connected, Reconciling: p.connected && !p.reconciled,
		Size: p.cfg.Size, MaxVMs: p.cfg.MaxVMs,
		Counts: map[State]int{}, Recorded: map[string]int{}, Clones: map[int]int{},
		Paused: p.paused, Degraded: p.degraded, Memory: p.memShort, Failures: p.fails,
	}
	for _, v := range p.vms {
		s.Counts[v.state]++
		s.Recorded[v.state.Recorded()]++
		s.Clones[v.version]++
		s.VMs = append(s.VMs, VMStatus{Name: v.name, State: v.state, Since: v.since, Version: v.version,
			Overlays: append([]string(nil), v.overlays...), IP: p.ip(v), Reason: v.reason, Error: v.lastErr})
	}
	slices.SortFunc(s.VMs, func(a, b VMStatus) int { return strings.Compare(a.Name, b.Name) })
	if p.current != nil {
		s.Current = p.current.Meta.Seq
	}
	for _, v := range p.versions {
		vs := VersionStatus{Version: v.Meta.Seq, Golden: v.Meta.Golden, Published: v.Meta.Published, Size: v.size(),
			Clones: s.Clones[v.Meta.Seq], Current: v == p.current, Kept: v != p.current && p.retained(v), Volumes: v.volumes()}
		if !v.Meta.Withdrawn.IsZero() {
			vs.Withdrawn = &v.Meta.Withdrawn
		}
		s.Versions = append(s.Versions, vs)
	}
	if j := p.publish; j != nil {
		ps := &PublishStatus{Version: j.Seq, Reason: j.Reason, Started: j.Started, Total: j.Total, Written: j.Written,
			Disk: j.Disk, Error: j.Err}
		if !j.Finished.IsZero() {
			ps.Finished = &j.Finished
		}
		s.Publish = ps
	}
	return s
}
