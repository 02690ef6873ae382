// Package pool keeps disposable clones of one golden VM on one libvirt host:
// a number of clean VMs booted and waiting, each handed out once and then
// destroyed with its disk. libvirt is the source of truth: each VM's state is
// in its domain's metadata, and a broker that starts (or reconnects) rebuilds
// its view from libvirt, destroying whatever it cannot prove clean.
//
// What happens to a VM, in one place:
//
//	creating -> booting -> clean -> offered -> in-use -> ending -> (gone)
//	                                 offered -> clean  (never linked: still pristine)
//	any state -> ending  (guest stopped, agent lost while clean, not ready in time, End)
package pool

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// creating is the state of a VM whose overlays or domain are being made. It
// is never written to libvirt: a crash here leaves no domain, only overlays
// that the next reconcile deletes.
const creating domxml.State = "creating"

// Errors of the session-facing API.
var (
	ErrNoCleanVM   = errors.New("no clean VM available")
	ErrUnavailable = errors.New("pool unavailable")
	ErrNotOffered  = errors.New("VM is not offered")
	ErrUnknownVM   = errors.New("no such VM in the pool")
)

// Hypervisor is what the pool needs from one libvirt host. *virt.Host
// implements it against libvirt; unit tests use a fake.
type Hypervisor interface {
	Events() <-chan virt.Event
	Golden(ctx context.Context, name string) (*domxml.Golden, error)
	PrepareOverlays(ctx context.Context, poolName, dir string) error
	Overlays(ctx context.Context) ([]string, error)
	CreateOverlay(ctx context.Context, name string, backing domxml.Disk) (string, error)
	DeleteOverlay(ctx context.Context, path string) error
	Domains(ctx context.Context, prefix string) ([]*domxml.Domain, error)
	DefineAndStart(ctx context.Context, xml string) (*domxml.Domain, error)
	Destroy(ctx context.Context, name string) error
	SetMetadata(ctx context.Context, name string, m domxml.Metadata) error
	Ping(ctx context.Context, name string) error
	AvailableMemory(ctx context.Context) (uint64, error)
}

// Config is the pool's part of the broker configuration.
type Config struct {
	Name              string // prefix of VM and overlay names
	Golden            string
	Size              int // clean VMs to keep ready
	MaxVMs            int // VMs of this pool in any state
	OverlayDir        string
	MemoryReserve     uint64
	ReadyTimeout      time.Duration
	RefillConcurrency int
	FailureLimit      int
	ReconcileInterval time.Duration
	// ReadyCheck, if set, is the last test before a VM is clean (the SPICE
	// gateway probes the VM's display there); an error fails the clone.
	ReadyCheck func(context.Context, VM) error
}

// SpiceTarget is how the broker reaches a VM's display: a unix socket on the
// VM's host and the VM's own SPICE password. The password never leaves the
// broker.
type SpiceTarget struct {
	Socket   string
	Password string
}

// VM is a copy of what the pool knows about one VM.
type VM struct {
	Name     string
	State    domxml.State
	Since    time.Time
	Spice    SpiceTarget
	Overlays []string
}

// Ended reports a VM that left the pool for good.
type Ended struct {
	VM     string
	Reason string
	Used   bool // a client linked to it
	Wiped  bool // domain and overlays verified gone
	At     time.Time
}

// Pool manages the VMs. Create it with New, start it with Start, then Run.
type Pool struct {
	cfg Config
	hv  Hypervisor
	log *slog.Logger

	// minBackoff is the first retry delay after a failed clone; it doubles
	// up to maxBackoff. Tests shorten them.
	minBackoff, maxBackoff time.Duration

	mu         sync.Mutex
	vms        map[string]*vm
	golden     *domxml.Golden
	connected  bool
	paused     string // why refills are stopped, e.g. the golden is running
	fails      int    // clones failed in a row
	lastFail   string
	degraded   string
	nextTry    time.Time   // no new clone before this (backoff, memory)
	retry      *time.Timer // kicks sync at nextTry
	memShort   string
	filled     bool                 // the pool has been full once: later fills are not news
	gone       map[string]time.Time // VMs wiped lately, so a reconcile does not mistake them for leftovers
	cleanWait  chan struct{}
	onEnded    []func(Ended)
	background sync.WaitGroup
	ctx        context.Context // for work started from events and API calls
}

type vm struct {
	name      string
	state     domxml.State
	since     time.Time
	overlays  []string
	spice     SpiceTarget
	used      bool
	reason    string      // why it is ending
	endErr    error       // last failed attempt to wipe it
	admitted  bool        // passed the memory check; counts as memory taken until clean
	agentSeen bool        // the agent connected before the domain was known started
	stopped   bool        // the domain stopped while it was being created
	timer     *time.Timer // readiness deadline
	metaMu    sync.Mutex  // serializes the VM's metadata writes (see record)
}

// New returns a pool; nothing happens until Start.
func New(cfg Config, hv Hypervisor, log *slog.Logger) *Pool {
	return &Pool{
		cfg:        cfg,
		hv:         hv,
		log:        log,
		minBackoff: 2 * time.Second,
		maxBackoff: 2 * time.Minute,
		vms:        map[string]*vm{},
		gone:       map[string]time.Time{},
		cleanWait:  make(chan struct{}),
	}
}

// OnEnded registers f to be called (from a goroutine of the pool's) for
// every VM that ends.
func (p *Pool) OnEnded(f func(Ended)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onEnded = append(p.onEnded, f)
}

// Start waits for the libvirt connection, checks the golden VM, prepares the
// overlay pool and reconciles with libvirt: leftovers of an earlier run are
// destroyed and the refill begins. A golden VM that cannot be cloned is an
// error here; later it only pauses the pool.
func (p *Pool) Start(ctx context.Context) error {
	p.ctx = ctx
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-p.hv.Events():
			if ev.Kind != virt.Connected {
				continue
			}
			if err := p.prepare(ctx); err != nil {
				if virt.IsDisconnected(err) {
					continue
				}
				return err
			}
			p.mu.Lock()
			p.connected = true
			p.mu.Unlock()
			p.reconcile(ctx)
			return nil
		}
	}
}

// prepare checks the golden and the overlay storage pool.
func (p *Pool) prepare(ctx context.Context) error {
	g, err := p.hv.Golden(ctx, p.cfg.Golden)
	if err != nil {
		return err
	}
	if err := p.hv.PrepareOverlays(ctx, p.cfg.Name, p.cfg.OverlayDir); err != nil {
		return err
	}
	p.mu.Lock()
	p.golden = g
	p.paused = ""
	p.mu.Unlock()
	return nil
}

// Run handles events until ctx ends. VMs are left as they are on return: the
// next start reconciles them.
func (p *Pool) Run(ctx context.Context) error {
	tick := time.NewTicker(p.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-p.hv.Events():
			p.handle(ctx, ev)
		case <-tick.C:
			// Events already queued are newer news than a listing: apply
			// them first, so a guest's power-off is reported as such.
			for drained := false; !drained; {
				select {
				case ev := <-p.hv.Events():
					p.handle(ctx, ev)
				default:
					drained = true
				}
			}
			p.retryPaused(ctx)
			p.reconcile(ctx)
		}
	}
}

// Wait waits for the pool's background work (clone creation, wiping) to
// finish, after ctx was cancelled. Tests use it.
func (p *Pool) Wait() { p.background.Wait() }

func (p *Pool) goBackground(f func()) {
	p.background.Add(1)
	go func() {
		defer p.background.Done()
		f()
	}()
}

// handle applies one libvirt event.
func (p *Pool) handle(ctx context.Context, ev virt.Event) {
	p.log.Debug("libvirt event", "kind", ev.Kind, "domain", ev.Domain, "detail", ev.Detail)
	switch ev.Kind {
	case virt.Connected:
		if err := p.prepare(ctx); err != nil {
			p.pause(fmt.Sprintf("after reconnecting: %v", err))
		}
		p.mu.Lock()
		p.connected = true
		p.mu.Unlock()
		p.reconcile(ctx)
		return
	case virt.Disconnected:
		p.mu.Lock()
		p.connected = false
		p.mu.Unlock()
		return
	}
	if ev.Domain == p.cfg.Golden {
		p.goldenEvent(ctx, ev)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[ev.Domain]
	if v == nil {
		return
	}
	switch ev.Kind {
	case virt.Stopped, virt.Undefined:
		p.stoppedLocked(v, ev.Detail)
	case virt.AgentConnected:
		switch v.state {
		case creating:
			v.agentSeen = true
		case domxml.Booting:
			p.goBackground(func() { p.checkReady(v) })
		}
	case virt.AgentDisconnected:
		if v.state == domxml.Clean {
			p.endLocked(v, "guest agent went away while the VM was clean")
		}
	}
}

// goldenEvent pauses refills while the golden VM runs: its disk is the
// backing file of every clone.
func (p *Pool) goldenEvent(ctx context.Context, ev virt.Event) {
	switch ev.Kind {
	case virt.Started:
		p.pause("golden VM " + p.cfg.Golden + " is running: no new clones until it is shut off")
	case virt.Stopped:
		p.goBackground(func() {
			if err := p.prepare(ctx); err != nil {
				p.pause(err.Error())
				return
			}
			p.log.Info("golden VM is shut off again; refilling", "golden", p.cfg.Golden)
			p.mu.Lock()
			p.syncLocked()
			p.mu.Unlock()
		})
	case virt.Undefined:
		p.pause("golden VM " + p.cfg.Golden + " was undefined")
	}
}

// retryPaused checks the golden again while the pool is paused: an operator
// may have fixed it (deleted a snapshot, shut it down) without any event.
func (p *Pool) retryPaused(ctx context.Context) {
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	if paused == "" {
		return
	}
	if err := p.prepare(ctx); err != nil {
		p.pause(err.Error())
		return
	}
	p.log.Info("pool resumed: the golden VM can be cloned again", "golden", p.cfg.Golden)
}

func (p *Pool) pause(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused != reason {
		p.log.Error("pool paused", "reason", reason)
	}
	p.paused = reason
}

// stoppedLocked handles a domain that stopped or vanished.
func (p *Pool) stoppedLocked(v *vm, detail string) {
	switch v.state {
	case creating:
		v.stopped = true
	case domxml.Booting:
		p.failLocked(v, fmt.Errorf("stopped while booting (%s)", detail))
	case domxml.Clean:
		p.log.Warn("clean VM stopped; replacing it", "vm", v.name, "detail", detail)
		p.endLocked(v, "stopped while clean ("+detail+")")
	case domxml.Offered, domxml.InUse:
		p.endLocked(v, stopReason(detail))
	}
}

func stopReason(detail string) string {
	switch detail {
	case "shutdown":
		return "guest powered off or rebooted"
	case "crashed":
		return "guest crashed"
	case "destroyed":
		return "domain destroyed outside the broker"
	case "":
		return "domain disappeared"
	case "unknown":
		return "domain found stopped"
	}
	return "domain stopped (" + detail + ")"
}

// syncLocked starts as many clones as the pool lacks, within the bounds:
// refill concurrency, max_vms, backoff after failures. Memory is checked by
// each clone before it starts.
func (p *Pool) syncLocked() {
	if !p.connected || p.golden == nil || p.paused != "" || p.ctx == nil || p.ctx.Err() != nil {
		return
	}
	ready, inflight := 0, 0
	for _, v := range p.vms {
		switch v.state {
		case creating, domxml.Booting: // both count against refill_concurrency: boots are the expensive part
			inflight++
			ready++
		case domxml.Clean:
			ready++
		}
	}
	if wait := time.Until(p.nextTry); wait > 0 {
		if p.retry == nil {
			p.retry = time.AfterFunc(wait, func() {
				p.mu.Lock()
				p.retry = nil
				p.syncLocked()
				p.mu.Unlock()
			})
		}
		return
	}
	for ready < p.cfg.Size && inflight < p.cfg.RefillConcurrency && len(p.vms) < p.cfg.MaxVMs {
		v := &vm{name: p.newNameLocked(), state: creating, since: time.Now()}
		p.vms[v.name] = v
		ready++
		inflight++
		p.goBackground(func() { p.create(v) })
	}
}

func (p *Pool) newNameLocked() string {
	for {
		b := make([]byte, 4)
		rand.Read(b)
		name := p.cfg.Name + "-" + hex.EncodeToString(b)
		if _, taken := p.vms[name]; !taken {
			return name
		}
	}
}

// create makes one clone: overlays, domain, start. Readiness comes later,
// from the guest agent's event (or at once without an agent).
func (p *Pool) create(v *vm) {
	ctx := p.ctx
	p.mu.Lock()
	g := p.golden
	p.mu.Unlock()
	if ok, err := p.admit(ctx, v, g); !ok {
		p.mu.Lock()
		delete(p.vms, v.name)
		if err != nil && !virt.IsDisconnected(err) {
			p.log.Warn("cannot check host memory", "err", err)
		}
		p.nextTry = time.Now().Add(5 * p.minBackoff)
		p.syncLocked()
		p.mu.Unlock()
		return
	}
	overlays := map[string]string{}
	for _, d := range g.WritableDisks() {
		path, err := p.hv.CreateOverlay(ctx, v.name+"-"+d.Target+".qcow2", d)
		if err != nil {
			p.mu.Lock()
			p.failLocked(v, err)
			p.mu.Unlock()
			return
		}
		overlays[d.Target] = path
		p.mu.Lock()
		v.overlays = append(v.overlays, path)
		p.mu.Unlock()
	}
	password := randomPassword()
	xml, err := g.CloneXML(domxml.Clone{
		Name:          v.name,
		UUID:          uuid.NewString(),
		Overlays:      overlays,
		SpicePassword: password,
		Meta:          domxml.Metadata{Pool: p.cfg.Name, State: domxml.Booting, Since: time.Now().UTC(), Golden: g.Name},
		MAC:           randomMAC,
	})
	if err == nil {
		var dom *domxml.Domain
		dom, err = p.hv.DefineAndStart(ctx, xml)
		if err == nil {
			p.mu.Lock()
			defer p.mu.Unlock()
			v.spice = SpiceTarget{Socket: dom.SpiceSocket, Password: password}
			v.state, v.since = domxml.Booting, time.Now()
			if v.stopped {
				p.failLocked(v, errors.New("stopped while booting"))
				return
			}
			v.timer = time.AfterFunc(p.cfg.ReadyTimeout, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if v.state == domxml.Booting {
					p.failLocked(v, fmt.Errorf("not ready within %v (guest agent never answered guest-ping)", p.cfg.ReadyTimeout))
				}
			})
			if !g.HasAgent || v.agentSeen || dom.AgentState == "connected" {
				p.goBackground(func() { p.checkReady(v) })
			}
			return
		}
	}
	p.mu.Lock()
	p.failLocked(v, err)
	p.mu.Unlock()
}

// admit checks that the host keeps memory_reserve free with one more clone,
// counting clones admitted but still booting as if their memory were
// already taken: a fresh guest has touched little of its memory yet.
func (p *Pool) admit(ctx context.Context, v *vm, g *domxml.Golden) (bool, error) {
	avail, err := p.hv.AvailableMemory(ctx)
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	booting := uint64(0)
	for _, v := range p.vms {
		if v.state == domxml.Booting || v.admitted {
			booting++
		}
	}
	need := p.cfg.MemoryReserve + g.Memory*(booting+1)
	if avail < need {
		msg := fmt.Sprintf("host has %s available; a clone needs %s and %s stay reserved",
			iBytes(avail), iBytes(g.Memory), iBytes(p.cfg.MemoryReserve))
		if p.memShort == "" {
			p.log.Warn("not enough memory for another clone; waiting", "detail", msg)
		}
		p.memShort = msg
		return false, nil
	}
	p.memShort = ""
	v.admitted = true
	return true, nil
}

// checkReady pings the guest agent a few times (it may take a moment to
// answer after its port opens), and marks the VM clean when it answers.
func (p *Pool) checkReady(v *vm) {
	ctx := p.ctx
	p.mu.Lock()
	hasAgent := p.golden.HasAgent
	p.mu.Unlock()
	var err error
	for attempt := 0; hasAgent && attempt < 3; attempt++ {
		if err = p.hv.Ping(ctx, v.name); err == nil {
			break
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return
		}
	}
	if err != nil {
		p.log.Debug("guest agent not answering yet", "vm", v.name, "err", err)
		return // the deadline or the agent's next event decides
	}
	p.mu.Lock()
	if v.state != domxml.Booting {
		p.mu.Unlock()
		return
	}
	snapshot := v.export()
	p.mu.Unlock()
	if p.cfg.ReadyCheck != nil {
		if err := p.cfg.ReadyCheck(ctx, snapshot); err != nil {
			p.mu.Lock()
			if v.state == domxml.Booting {
				p.failLocked(v, fmt.Errorf("readiness check: %w", err))
			}
			p.mu.Unlock()
			return
		}
	}
	if err := p.hv.SetMetadata(ctx, v.name, p.meta(domxml.Clean)); err != nil {
		p.mu.Lock()
		if v.state == domxml.Booting {
			p.failLocked(v, err)
		}
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v.state != domxml.Booting {
		return
	}
	v.state, v.since, v.admitted = domxml.Clean, time.Now(), false
	v.timer.Stop()
	if p.fails >= p.cfg.FailureLimit {
		p.log.Info("pool recovered: a clone became ready", "vm", v.name, "after_failures", p.fails)
	}
	p.fails, p.degraded, p.lastFail = 0, "", ""
	p.log.Debug("VM clean", "vm", v.name)
	p.wakeLocked()
	p.syncLocked()
	if !p.filled && p.countLocked(domxml.Clean) >= p.cfg.Size {
		p.filled = true
		p.log.Info("pool ready", "clean", p.cfg.Size, "golden", p.cfg.Golden)
	}
}

// failLocked counts a failed clone, backs off, reports a degraded pool
// loudly, and wipes the VM. Failures caused by a lost libvirt connection do
// not count: the VM is left for the reconcile after reconnecting.
func (p *Pool) failLocked(v *vm, err error) {
	if v.state == domxml.Ending {
		return
	}
	if virt.IsDisconnected(err) {
		p.log.Debug("clone interrupted by the lost libvirt connection", "vm", v.name, "err", err)
		if v.state == creating {
			delete(p.vms, v.name) // its overlays are orphans for the reconcile
		}
		return
	}
	p.fails++
	p.lastFail = err.Error()
	backoff := p.minBackoff << min(p.fails-1, 16)
	if backoff > p.maxBackoff || backoff <= 0 {
		backoff = p.maxBackoff
	}
	p.nextTry = time.Now().Add(backoff)
	if p.fails >= p.cfg.FailureLimit {
		p.degraded = fmt.Sprintf("%d clones in a row failed; last: %v", p.fails, err)
		p.log.Error("pool degraded: clones keep failing; check that the golden VM boots and its guest agent runs",
			"golden", p.cfg.Golden, "failures", p.fails, "vm", v.name, "err", err, "retry_in", backoff)
	} else {
		p.log.Warn("clone failed; retrying", "vm", v.name, "err", err, "retry_in", backoff)
	}
	p.endLocked(v, "clone failed: "+err.Error())
}

// endLocked starts wiping a VM: destroy, undefine, delete its overlays and
// verify they are gone, then refill.
func (p *Pool) endLocked(v *vm, reason string) {
	if v.state == domxml.Ending {
		return
	}
	p.startWipeLocked(v, reason)
	p.syncLocked()
}

func (p *Pool) startWipeLocked(v *vm, reason string) {
	v.state, v.since, v.reason = domxml.Ending, time.Now(), reason
	if v.timer != nil {
		v.timer.Stop()
	}
	p.log.Debug("ending VM", "vm", v.name, "reason", reason)
	p.goBackground(func() { p.wipe(v) })
}

// wipe destroys the domain and its overlays. On failure the VM stays in
// state ending and the next reconcile tries again.
func (p *Pool) wipe(v *vm) {
	ctx := p.ctx
	start := time.Now()
	p.record(ctx, v) // "ending", best effort: for status readers only
	marked := time.Now()
	err := p.hv.Destroy(ctx, v.name)
	destroyed := time.Now()
	if err == nil {
		p.mu.Lock()
		overlays := append([]string(nil), v.overlays...)
		p.mu.Unlock()
		var errs []error
		for _, o := range overlays {
			errs = append(errs, p.hv.DeleteOverlay(ctx, o))
		}
		err = errors.Join(errs...)
	}
	p.log.Debug("wiped VM", "vm", v.name, "err", err, "mark", marked.Sub(start), "destroy", destroyed.Sub(marked), "overlays", time.Since(destroyed))
	p.mu.Lock()
	if err != nil {
		v.endErr = err
		if !virt.IsDisconnected(err) && ctx.Err() == nil {
			p.log.Error("could not wipe VM; the reconcile will retry", "vm", v.name, "err", err)
		}
		p.mu.Unlock()
		return
	}
	delete(p.vms, v.name)
	p.gone[v.name] = time.Now()
	ended := Ended{VM: v.name, Reason: v.reason, Used: v.used, Wiped: true, At: time.Now()}
	p.syncLocked()
	listeners := p.onEnded
	p.mu.Unlock()
	for _, f := range listeners {
		f(ended)
	}
}

func (p *Pool) meta(s domxml.State) domxml.Metadata {
	return domxml.Metadata{Pool: p.cfg.Name, State: s, Since: time.Now().UTC(), Golden: p.cfg.Golden}
}

// reconcile compares the pool with libvirt and repairs the difference. At
// start it is how the pool learns of VMs from an earlier run: only VMs that
// are provably clean (metadata clean, running, agent answering) are kept.
func (p *Pool) reconcile(ctx context.Context) {
	listed := time.Now()
	doms, err := p.hv.Domains(ctx, p.cfg.Name+"-")
	if err == nil {
		var files []string
		files, err = p.hv.Overlays(ctx)
		if err == nil {
			p.reconcileWith(ctx, listed, doms, files)
			return
		}
	}
	if !virt.IsDisconnected(err) {
		p.log.Warn("reconcile failed; will retry", "err", err)
	}
}

// reconcileWith judges only what the listing can tell: a VM whose state
// changed after the listing started, or that was wiped since, is left alone.
func (p *Pool) reconcileWith(ctx context.Context, listed time.Time, doms []*domxml.Domain, files []string) {
	// Ping the agents of clean VMs we do not know (a previous run's) before
	// taking the lock: each ping may take seconds.
	p.mu.Lock()
	hasAgent := p.golden != nil && p.golden.HasAgent
	var candidates []string
	for _, d := range doms {
		if _, known := p.vms[d.Name]; !known && d.Meta.Pool == p.cfg.Name && d.Meta.State == domxml.Clean && d.Running {
			candidates = append(candidates, d.Name)
		}
	}
	p.mu.Unlock()
	answered := map[string]bool{}
	var amu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range candidates {
		wg.Go(func() {
			ok := !hasAgent || p.hv.Ping(ctx, name) == nil
			amu.Lock()
			answered[name] = ok
			amu.Unlock()
		})
	}
	wg.Wait()

	p.mu.Lock()
	defer p.mu.Unlock()
	for name, at := range p.gone {
		if time.Since(at) > 10*time.Minute {
			delete(p.gone, name)
		}
	}
	inLibvirt := map[string]bool{}
	for _, d := range doms {
		if d.Meta.Pool != p.cfg.Name {
			continue
		}
		inLibvirt[d.Name] = true
		v, known := p.vms[d.Name]
		if !known {
			if _, wiped := p.gone[d.Name]; wiped {
				continue
			}
			v = &vm{name: d.Name, state: d.Meta.State, since: d.Meta.Since, overlays: p.overlaysOf(d),
				spice: SpiceTarget{Socket: d.SpiceSocket, Password: d.SpicePassword}}
			p.vms[d.Name] = v
			if v.state == domxml.Clean && answered[d.Name] {
				p.log.Info("kept clean VM from an earlier run", "vm", d.Name)
				p.wakeLocked()
				continue
			}
			p.log.Info("destroying VM left from an earlier run", "vm", d.Name, "state", d.Meta.State, "running", d.Running)
			p.startWipeLocked(v, fmt.Sprintf("left from an earlier run in state %s, running=%v: not provably clean", d.Meta.State, d.Running))
			continue
		}
		if v.since.After(listed) {
			continue
		}
		switch {
		case v.state == domxml.Ending && v.endErr != nil:
			v.endErr = nil
			p.goBackground(func() { p.wipe(v) })
		case v.state != creating && !d.Running:
			p.stoppedLocked(v, d.StopReason)
		}
	}
	for _, v := range p.vms {
		if inLibvirt[v.name] || v.state == creating || v.since.After(listed) {
			continue
		}
		switch v.state {
		case domxml.Ending:
			if v.endErr != nil { // the domain is gone; the overlays may not be
				v.endErr = nil
				p.goBackground(func() { p.wipe(v) })
			}
		default:
			p.stoppedLocked(v, "")
		}
	}
	for _, f := range files {
		owner := p.overlayOwner(f)
		if owner == "" || inLibvirt[owner] || p.vms[owner] != nil || !p.gone[owner].Before(listed) {
			continue
		}
		p.log.Info("deleting overlay without a domain", "overlay", f)
		p.goBackground(func() {
			if err := p.hv.DeleteOverlay(ctx, f); err != nil {
				p.log.Warn("could not delete orphaned overlay; will retry", "overlay", f, "err", err)
			}
		})
	}
	p.syncLocked()
}

// overlaysOf returns the disks of d that are this pool's overlays.
func (p *Pool) overlaysOf(d *domxml.Domain) []string {
	var out []string
	for _, disk := range d.Disks {
		if disk.Path != "" && p.overlayOwner(disk.Path) == d.Name {
			out = append(out, disk.Path)
		}
	}
	return out
}

// overlayOwner returns the VM an overlay belongs to, from its name
// <pool>-<8 hex>-<disk>.qcow2 in the overlay directory, or "" when the file is
// not one of this pool's overlays.
func (p *Pool) overlayOwner(path string) string {
	if filepath.Dir(path) != filepath.Clean(p.cfg.OverlayDir) {
		return ""
	}
	base := strings.TrimSuffix(filepath.Base(path), ".qcow2")
	rest, ok := strings.CutPrefix(base, p.cfg.Name+"-")
	if !ok || len(rest) < 10 || rest[8] != '-' {
		return ""
	}
	if _, err := hex.DecodeString(rest[:8]); err != nil {
		return ""
	}
	return p.cfg.Name + "-" + rest[:8]
}

func (p *Pool) countLocked(s domxml.State) int {
	n := 0
	for _, v := range p.vms {
		if v.state == s {
			n++
		}
	}
	return n
}

// wakeLocked tells waiters that a clean VM may be available.
func (p *Pool) wakeLocked() {
	close(p.cleanWait)
	p.cleanWait = make(chan struct{})
}

func randomPassword() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b) // 32 characters; SPICE allows 60
}

// randomMAC returns a MAC in QEMU's locally administered range 52:54:00.
func randomMAC() string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

func iBytes(n uint64) string {
	const unit = 1 << 20
	return fmt.Sprintf("%d MiB", n/unit)
}

// sortStatus orders VMs by name for stable output.
func sortStatus(vs []VMStatus) {
	sort.Slice(vs, func(i, j int) bool { return vs[i].Name < vs[j].Name })
}
