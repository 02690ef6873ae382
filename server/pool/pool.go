// Package pool keeps disposable linked clones of a golden VM's published
// version on one libvirt host: a number of clean VMs booted and waiting,
// each handed out once and then destroyed with its disk. libvirt is the
// source of truth: a VM's state is in its domain's metadata, a version is
// a template domain, and a broker that starts (or reconnects) rebuilds its
// view from libvirt, destroying whatever it cannot prove clean.
//
// The shape: one goroutine, the loop (this file), owns the table of VMs.
// Everything that happens — libvirt events, API calls, results of actions,
// timers — reaches it as a function it runs. What happens to a VM is decided
// by one pure function, next (machine.go); the actions it returns are run
// by the executor (exec.go), with bounded concurrency, and their results
// come back to the loop. What the pool as a whole does — refill, admission
// by memory, rolling a new version, trimming a surplus — is sync
// (controller.go); what it learns from a listing of libvirt is reconcile
// (reconcile.go); publishing and rolling back versions is versions.go.
package pool

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"undervdi/internal/lockfree"
	"undervdi/kioskproto"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// Errors of the pool's API.
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
	PrepareStorage(ctx context.Context, poolName, overlayDir, versionDir string) error
	// EnsureNetwork and DefineFilters make the guest network and its
	// filters exist, as GuestNet lays them out.
	EnsureNetwork(ctx context.Context, xml string) error
	DefineFilters(ctx context.Context, xmls ...string) error
	Overlays(ctx context.Context) ([]string, error)
	// CreateOverlay makes a clone's overlay of backing; encrypted, it is
	// LUKS with a key of its own, whose libvirt secret is returned.
	CreateOverlay(ctx context.Context, name string, backing domxml.Disk, encrypt bool) (path, secret string, err error)
	// DeleteOverlay deletes an overlay and its key (the key first).
	DeleteOverlay(ctx context.Context, path string) error
	Domains(ctx context.Context, prefix string) ([]*domxml.Domain, error)
	DefineAndStart(ctx context.Context, xml string) (*domxml.Domain, error)
	Destroy(ctx context.Context, name string) error
	SetMetadata(ctx context.Context, name string, m domxml.Metadata) error
	Ping(ctx context.Context, name string) error
	AvailableMemory(ctx context.Context) (uint64, error)
	VersionStore
}

// VersionStore is where published versions live: template domains and
// their read-only volumes in the broker's own storage pool.
type VersionStore interface {
	// Versions returns the template domains whose names start with prefix.
	Versions(ctx context.Context, prefix string) ([]*domxml.Version, error)
	// VersionVolumes returns the paths of all volumes in the versions pool.
	VersionVolumes(ctx context.Context) ([]string, error)
	// VersionSpace returns the bytes free in the versions pool, and its name.
	VersionSpace(ctx context.Context) (free uint64, pool string, err error)
	// CopyDisk copies a golden disk into the versions pool as a read-only,
	// sparse qcow2 volume named name, reporting the bytes written so far.
	CopyDisk(ctx context.Context, src domxml.Disk, name string, progress func(written uint64)) (string, error)
	// CheckCopy verifies a copy: a qcow2 image of the given virtual size
	// with no backing file.
	CheckCopy(ctx context.Context, path string, capacity uint64) error
	DefineVersion(ctx context.Context, xml string) (*domxml.Version, error)
	// WithdrawVersion records in a template's metadata that it was rolled back.
	WithdrawVersion(ctx context.Context, name string, m domxml.VersionMeta) error
	// DeleteVersion undefines a template, then deletes its volumes.
	DeleteVersion(ctx context.Context, name string, volumes []string) error
	DeleteVersionVolume(ctx context.Context, path string) error
}

// GuestNet is the guest network's layout (*egress.Plan): a fixed address
// and interface per slot, so that a clone's slot is read back from its
// domain and never stored.
type GuestNet interface {
	Slots() int
	Addr(slot int) netip.Addr
	NIC(slot int) domxml.NIC
	Slot(ip string) int // -1: not one of the network's clone addresses
	Policy() string     // what of the layout a clone's definition carries
	NetworkXML() string
	FilterXML() (chain, root string)
}

// Config is the pool's part of the broker configuration.
type Config struct {
	Name          string // prefix of VM, version and overlay names
	Golden        string
	Size          int // clean VMs to keep ready
	MaxVMs        int // VMs of this pool in any state
	OverlayDir    string
	VersionDir    string
	KeepVersions  int  // versions kept besides the current one, for rollback
	AutoPublish   bool // publish when the golden is shut off after it ran or changed
	MemoryReserve uint64
	// EncryptDisks makes each clone's overlays LUKS-encrypted with keys of
	// their own, undefined when the VM ends: a crypto-erase.
	EncryptDisks      bool
	ReadyTimeout      time.Duration
	RefillConcurrency int
	FailureLimit      int
	ReconcileInterval time.Duration
	// ReadyCheck, if set, is the last test before a VM is clean (the SPICE
	// gateway probes the VM's display there); an error fails the clone.
	ReadyCheck func(context.Context, VM) error
	// USBFilter is the site's USB redirection policy; each clone's QEMU
	// enforces it (a <redirfilter>), whatever the client does.
	USBFilter []kioskproto.USBRule
	// SpiceAddress, if set, is the host's backend address where each
	// clone's SPICE listens, TLS only: the host is not the broker's
	// machine. "": SPICE on unix sockets, on the broker's own host.
	SpiceAddress string
	// Network, if set, puts each clone on the broker's guest network, in
	// an address slot no other VM of the pool holds; nil keeps the golden's
	// interfaces.
	Network GuestNet
	// Replica, if set, makes this a host without the golden: its versions
	// are copies of the golden host's, made when the site asks (Replicate),
	// and it never publishes.
	Replica *Replica
	// Names, if set, reserves VM names across the site's hosts, so that a
	// name is never live on two.
	Names Names
	// Metrics hears what the pool measures; nil fields are not called.
	Metrics Metrics
}

// Replica is how a host without the golden gets its versions.
type Replica struct {
	From string // the golden's host, for people
	// Copy copies one disk of a version on the golden's host into this
	// host's versions pool as volume name (virt.Host.ReplicateDisk).
	Copy func(ctx context.Context, src domxml.Disk, name string, progress func(written, total uint64)) (string, error)
}

// Names reserves VM names across hosts.
type Names interface {
	Claim(name string) bool // false: the name is live elsewhere
	Release(name string)
}

// Metrics hears what the pool measures, for the broker's metrics.
type Metrics struct {
	Cloned      func(d time.Duration) // a clone made and found clean: from its creation
	CloneFailed func()                // a clone that did not become clean
	Wiped       func(d time.Duration) // a VM destroyed and its disks deleted: from its end
}

// maxJobs bounds the actions the executor runs at once, across all VMs.
const maxJobs = 16

// Pool manages the VMs. Create it with New, then Start and Run it.
type Pool struct {
	cfg    Config
	policy string // policyOf(cfg), as each clone's metadata records it
	hv     Hypervisor
	log    *slog.Logger
	rules  rules
	// minBackoff is the first delay after a failed clone; it doubles up to
	// maxBackoff. Tests shorten them, and rules' retry delays.
	minBackoff, maxBackoff time.Duration

	work    chan func()   // what the loop runs: results, timers, API calls
	ended   chan Ended    // announcements of wiped VMs, for the broker
	done    chan struct{} // closed when the loop has returned
	started chan error    // Start's answer
	cancel  context.CancelFunc
	jobs    sync.WaitGroup
	shelf   shelf // clean VMs Take hands out without the loop (shelf.go)
	// told is what callers told the loop to do without waiting for it
	// (tell), newest first; nudge wakes the loop for it and for the shelf.
	told  atomic.Pointer[told]
	nudge chan struct{}

	// Everything below belongs to the loop goroutine.
	ctx        context.Context
	vms        map[string]*vm
	idx        index                // beside vms: the clean ones in order, counts, guest slots
	shelved    shelfKey             // what the shelf was last stocked for
	queues     map[string]*jobQueue // per VM (and per pool-level key): actions in order
	active     int                  // jobs running, at most maxJobs
	backlog    []waitingJob         // jobs waiting for one of those to end, in order
	deadlines  map[string]*time.Timer
	retries    map[string]*retryTimer
	retryGen   uint64
	waiters    map[string][]chan error // MarkUsed callers, per VM
	cleanWait  chan struct{}
	pending    []Ended // announcements not yet taken
	gone       map[string]time.Time
	freed      map[int]time.Time // guest network slots, when their last VM left the table
	connected  bool
	prepared   bool // storage pools ready, versions read
	reconciled bool // the table holds every pool domain libvirt has
	listing    bool
	stirred    bool   // apply changed a VM's state
	quiet      bool   // the work just run changed nothing sync acts on
	paused     string // why the pool does not serve, if it does not
	startedOK  bool   // Start has been answered

	fails    int // clones failed in a row
	lastFail string
	degraded string
	nextTry  time.Time   // no new clone before this (backoff, memory)
	kick     *time.Timer // runs sync at nextTry
	memShort string
	memory   *memoryReading // the latest reading, spent by one refill
	reading  bool           // a memory reading is under way
	filled   bool           // the pool has been full once: later fills are no news

	versions  []*version
	current   *version
	publish   *publishJob // the publish under way, or the last one
	goldenRan bool        // the golden was started since the broker last saw it shut off
	versionGC time.Time   // no version deletion is retried before this
}

// New returns a pool; nothing happens until Start.
func New(cfg Config, hv Hypervisor, log *slog.Logger) *Pool {
	p := &Pool{
		cfg: cfg, hv: hv, log: log, policy: policyOf(cfg),
		minBackoff: 2 * time.Second, maxBackoff: 2 * time.Minute,
		work:      make(chan func(), 256),
		ended:     make(chan Ended),
		done:      make(chan struct{}),
		started:   make(chan error, 1),
		vms:       map[string]*vm{},
		queues:    map[string]*jobQueue{},
		deadlines: map[string]*time.Timer{},
		retries:   map[string]*retryTimer{},
		waiters:   map[string][]chan error{},
		cleanWait: make(chan struct{}),
		gone:      map[string]time.Time{},
		freed:     map[int]time.Time{},
	}
	slots := 0
	if cfg.Network != nil {
		slots = cfg.Network.Slots()
	}
	p.idx = newIndex(slots)
	p.nudge = make(chan struct{}, 1)
	p.shelf.nudge = p.nudge
	p.shelf.entries = map[string]*shelfEntry{}
	p.setBackoff(p.minBackoff, p.maxBackoff)
	return p
}

func (p *Pool) setBackoff(lo, hi time.Duration) {
	p.minBackoff, p.maxBackoff = lo, hi
	p.rules = rules{readyTimeout: p.cfg.ReadyTimeout, minRetry: lo / 8, maxRetry: 10 * time.Second}
	if hi < p.rules.maxRetry {
		p.rules.maxRetry = hi
	}
}

// Ended is the pool's announcement of a VM that left for good. Each is sent
// once on the channel Ended returns.
type Ended struct {
	VM     string
	Reason string
	Used   bool // a client linked to it
	Wiped  bool // domain and overlays verified gone
	At     time.Time
	// Who had it, from its metadata. Restart is set for VMs a broker
	// restart found in a session's state: nobody else wrote their audit line.
	Claim   Claim
	Linked  time.Time
	Restart bool
}

// Ended delivers an Ended for every VM wiped, in order. The broker reads it
// (one reader); announcements wait, in memory, until read.
func (p *Pool) Ended() <-chan Ended { return p.ended }

// Start begins the pool: it waits for libvirt, prepares its storage pools,
// reads the published versions (publishing the first one if there is none)
// and reconciles with libvirt: leftovers of an earlier run are destroyed,
// clean VMs of the current version are checked again, and the refill
// begins. Start returns once that first reconcile is done. A golden VM that
// cannot be published when there is no version yet is an error here.
func (p *Pool) Start(ctx context.Context) error {
	ctx, p.cancel = context.WithCancel(ctx)
	p.ctx = ctx
	go p.loop(ctx)
	select {
	case err := <-p.started:
		if err != nil {
			p.cancel()
			<-p.done
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run runs the pool until ctx ends. VMs are left as they are: the next
// start reconciles them.
func (p *Pool) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		p.cancel()
		<-p.done
		return ctx.Err()
	case <-p.done:
		return p.ctx.Err()
	}
}

// Wait waits for the pool's loop and every action it started to finish,
// after its context ended. Tests use it.
func (p *Pool) Wait() {
	if p.cancel == nil {
		return // never started
	}
	<-p.done
	p.jobs.Wait()
}

// loop is the one goroutine that owns the pool's state.
func (p *Pool) loop(ctx context.Context) {
	defer close(p.done)
	tick := time.NewTicker(p.cfg.ReconcileInterval)
	defer tick.Stop()
	events := p.hv.Events()
	for {
		var out chan Ended
		var head Ended
		if len(p.pending) > 0 {
			out, head = p.ended, p.pending[0]
		}
		select {
		case <-ctx.Done():
			p.stopTimers()
			return
		case ev := <-events:
			p.event(ev)
		case f := <-p.work:
			p.quiet = false
			f()
			if p.quiet {
				continue
			}
		case out <- head:
			p.pending = p.pending[1:]
			continue
		case <-p.nudge:
			p.applyClaims()
			p.runTold()
		case <-tick.C:
			p.drainEvents(events) // queued events are newer news than a listing
			p.retryPaused()
			p.list()
		}
		p.sync()
		p.restock()
	}
}

func (p *Pool) drainEvents(events <-chan virt.Event) {
	for {
		select {
		case ev := <-events:
			p.event(ev)
		default:
			return
		}
	}
}

// told is one function told to the loop (tell).
type told struct {
	f    func()
	next *told
}

// tell has the loop run f, and returns at once: it never waits, not even
// for room in the loop's queue. Told functions run in the order they were
// told; those told after the loop's end never run. One that reaches a VM a
// Take took from the shelf finds it offered: apply applies the claim first.
func (p *Pool) tell(f func()) {
	t := &told{f: f}
	lockfree.Push(&p.told, t, &t.next)
	select {
	case p.nudge <- struct{}{}:
	default: // a nudge is pending: the loop takes this one with it
	}
}

// runTold runs what was told, oldest first.
func (p *Pool) runTold() {
	var fs []func()
	for t := p.told.Swap(nil); t != nil; t = t.next {
		fs = append(fs, t.f)
	}
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// post asks the loop to run f. It never blocks past the loop's end.
func (p *Pool) post(f func()) {
	select {
	case p.work <- f:
	case <-p.done:
	}
}

// call runs f in the loop and waits for it. It returns ErrUnavailable if
// the pool is not running.
func (p *Pool) call(f func()) error {
	ran := make(chan struct{})
	select {
	case p.work <- func() { f(); close(ran) }:
	case <-p.done:
		return ErrUnavailable
	}
	select {
	case <-ran:
		return nil
	case <-p.done:
		return ErrUnavailable
	}
}

// event applies one libvirt event.
func (p *Pool) event(ev virt.Event) {
	p.log.Debug("libvirt event", "kind", ev.Kind, "domain", ev.Domain, "detail", ev.Detail)
	switch ev.Kind {
	case virt.Connected:
		p.connected = true
		p.prepare()
		return
	case virt.Disconnected:
		p.connected, p.prepared, p.reconciled = false, false, false
		p.wake()
		return
	}
	if ev.Domain == p.cfg.Golden && p.cfg.Replica == nil {
		p.goldenEvent(ev)
		return
	}
	in := input{vm: ev.Domain}
	switch ev.Kind {
	case virt.Stopped, virt.Undefined:
		in.kind, in.detail = evStopped, ev.Detail
	case virt.AgentConnected:
		in.kind = evAgentUp
	case virt.AgentDisconnected:
		in.kind = evAgentDown
	default:
		return
	}
	if p.vms[ev.Domain] != nil {
		p.apply(in)
	}
}

// apply runs one input through next and carries out what it returns. It
// returns next's refusal, or ErrUnknownVM for a VM not on the table.
func (p *Pool) apply(in input) error {
	v := p.vms[in.vm]
	if v == nil {
		return ErrUnknownVM
	}
	if in.at.IsZero() {
		in.at = time.Now()
	}
	nv, acts, err := p.rules.next(*v, in)
	if v.state == Clean && !in.shelved && (err != nil || nv.state != Clean || len(acts) > 0) {
		// No Take may have it while an input changes it (shelf.go). An
		// input that leaves it clean and asks for nothing (the result of
		// writing its metadata, the guest agent's news) leaves it there:
		// it is as much nothing to an offered VM, should a Take have it
		// (TestShelfNoOps).
		switch place, e := p.shelf.unshelve(v.name); place {
		case wasShelved:
			defer func() {
				if v.state == Clean {
					p.shelve(v)
				}
			}()
		case claimedOff:
			p.applyClaim(e) // v is offered now
			if in.kind == apiTake || in.kind == apiRetire {
				return errTaken // the loop's choice of a clean VM: choose again
			}
			nv, acts, err = p.rules.next(*v, in)
		}
	}
	if err != nil {
		if errors.Is(err, errImpossible) {
			p.log.Error("pool: input refused by the state machine (a bug)", "vm", v.name, "err", err)
		}
		return err
	}
	if nv.state != v.state {
		p.stirred = true
		p.log.Debug("VM state", "vm", v.name, "from", v.state, "to", nv.state, "input", in.kind, "reason", nv.reason)
		p.stopRetry(v.name)
		p.noteTransition(v, &nv, in)
	}
	from := v.state
	*v = nv
	if v.state != from {
		p.moved(v, from)
		p.measure(v)
	}
	for _, a := range acts {
		p.perform(v, a)
	}
	if v.state == Gone {
		p.remove(v, hasAction(acts, announceEnded))
	}
	return nil
}

// measure feeds the metrics as v enters a state: clean (the clone's time,
// for the VMs this broker made), destroying (the wipe starts) and gone (the
// wipe's time).
func (p *Pool) measure(v *vm) {
	m := p.cfg.Metrics
	switch {
	case v.state == Clean && !v.born.IsZero() && m.Cloned != nil:
		m.Cloned(time.Since(v.born))
	case v.state == Destroying && v.wiping.IsZero():
		v.wiping = time.Now()
	case v.state == Gone && !v.wiping.IsZero() && m.Wiped != nil:
		m.Wiped(time.Since(v.wiping))
	}
}

// noteTransition logs what an operator acts on.
func (p *Pool) noteTransition(old *vm, nv *vm, in input) {
	if nv.state != Destroying {
		return
	}
	switch {
	case old.state == Clean && in.kind == evStopped:
		p.log.Warn("clean VM stopped; replacing it", "vm", old.name, "detail", in.detail)
	case old.state == Clean && in.kind == evAgentDown:
		p.log.Warn("guest agent of a clean VM went away; replacing it", "vm", old.name)
	}
}

func hasAction(acts []action, k actionKind) bool {
	for _, a := range acts {
		if a.kind == k {
			return true
		}
	}
	return false
}

// perform carries out one action of next.
func (p *Pool) perform(v *vm, a action) {
	switch a.kind {
	case doCreate, doReady, doRecord, doDestroy, doDelete:
		p.submit(v.name, p.job(v, a))
	case cancelPending:
		p.cancelPending(v.name)
	case armDeadline:
		name := v.name
		p.deadlines[name] = time.AfterFunc(p.cfg.ReadyTimeout, func() {
			p.post(func() {
				if p.deadlines[name] != nil {
					delete(p.deadlines, name)
					p.apply(input{kind: tmDeadline, vm: name})
				}
			})
		})
	case stopDeadline:
		if t := p.deadlines[v.name]; t != nil {
			t.Stop()
			delete(p.deadlines, v.name)
		}
	case armRetry:
		p.armRetry(v.name, a.after)
	case countFailure:
		p.countFailure(v.name, a.err)
	case countSuccess:
		p.countSuccess(v.name)
	case answerLinked:
		for _, w := range p.waiters[v.name] {
			w <- a.err
		}
		delete(p.waiters, v.name)
	case announceClean:
		p.wake()
		p.noteFilled()
	case announceEnded:
		p.pending = append(p.pending, Ended{VM: v.name, Reason: v.reason, Used: !v.linked.IsZero(), Wiped: true,
			At: time.Now(), Claim: v.claim, Linked: v.linked, Restart: v.restart})
	}
}

// retryTimer is a VM's pending retry; gen tells a stale firing from the
// current one.
type retryTimer struct {
	t   *time.Timer
	gen uint64
}

func (p *Pool) armRetry(name string, after time.Duration) {
	p.stopRetry(name)
	p.retryGen++
	gen := p.retryGen
	p.retries[name] = &retryTimer{gen: gen, t: time.AfterFunc(after, func() {
		p.post(func() {
			if r := p.retries[name]; r != nil && r.gen == gen {
				delete(p.retries, name)
				p.apply(input{kind: tmRetry, vm: name, gen: gen})
			}
		})
	})}
}

// stopRetry drops a VM's pending retry: a retry belongs to the state that
// armed it.
func (p *Pool) stopRetry(name string) {
	if r := p.retries[name]; r != nil {
		r.t.Stop()
		delete(p.retries, name)
	}
}

func (p *Pool) stopTimers() {
	for _, t := range p.deadlines {
		t.Stop()
	}
	for _, r := range p.retries {
		r.t.Stop()
	}
	if p.kick != nil {
		p.kick.Stop()
	}
}

// remove takes a VM off the table. A wiped VM is remembered for a while, so
// that a listing made before its wipe does not mistake it for a leftover.
func (p *Pool) remove(v *vm, wiped bool) {
	p.drop(v)
	if v.slot >= 0 {
		p.freed[v.slot] = time.Now()
	}
	p.stopRetry(v.name)
	if t := p.deadlines[v.name]; t != nil {
		t.Stop()
		delete(p.deadlines, v.name)
	}
	for _, w := range p.waiters[v.name] {
		w <- ErrUnknownVM
	}
	delete(p.waiters, v.name)
	if wiped {
		p.gone[v.name] = time.Now()
		if p.cfg.Names != nil {
			p.cfg.Names.Release(v.name)
		}
	}
	p.log.Debug("VM off the table", "vm", v.name, "wiped", wiped, "reason", v.reason)
}

// wake tells waiters that a clean VM may be available, or that the pool's
// availability changed.
func (p *Pool) wake() {
	close(p.cleanWait)
	p.cleanWait = make(chan struct{})
}
