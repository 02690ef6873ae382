package pool

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"undervdi/server/domxml"
	"undervdi/server/spice"
	"undervdi/server/virt"
)

// The executor: the actions next asks for, run against the Hypervisor
// outside the loop, their results fed back to it. A job runs with the
// loop's context and returns what the loop then does with its result.
type job func(ctx context.Context) (then func())

// jobQueue holds one key's jobs: a VM's actions run one at a time, in the
// order next asked for them, so that a late metadata write never brings
// back an older state and nothing is destroyed while it is being created.
type jobQueue struct {
	running bool
	cancel  context.CancelFunc // the running job's
	waiting []job
}

// submit runs j after the key's earlier jobs. Keys are VM names, or names
// of the pool's own work ("list", "publish", "version 3", an overlay path).
func (p *Pool) submit(key string, j job) {
	q := p.queues[key]
	if q == nil {
		q = &jobQueue{}
		p.queues[key] = q
	}
	if q.running {
		q.waiting = append(q.waiting, j)
		return
	}
	q.running = true
	p.run(key, q, j)
}

// run starts j on a goroutine of its own, at most maxJobs at once; the
// others wait their turn in the backlog, without a goroutine each (a
// thousand sessions ending at once are a thousand jobs).
func (p *Pool) run(key string, q *jobQueue, j job) {
	ctx, cancel := context.WithCancel(p.ctx)
	q.cancel = cancel
	if p.active >= maxJobs || len(p.backlog) > 0 { // in order: the oldest first
		p.backlog = append(p.backlog, waitingJob{key, ctx, cancel, j})
		return
	}
	p.start(waitingJob{key, ctx, cancel, j})
}

// waitingJob is a job of the backlog, with the context it will run with.
type waitingJob struct {
	key    string
	ctx    context.Context
	cancel context.CancelFunc
	j      job
}

func (p *Pool) start(w waitingJob) {
	p.active++
	p.jobs.Add(1)
	go func() {
		defer p.jobs.Done()
		defer w.cancel()
		then := w.j(w.ctx)
		p.post(func() {
			p.active--
			then()
			p.advance(w.key)
			for p.active < maxJobs && len(p.backlog) > 0 {
				next := p.backlog[0]
				p.backlog[0] = waitingJob{}
				p.backlog = p.backlog[1:]
				p.start(next)
			}
		})
	}()
}

func (p *Pool) advance(key string) {
	q := p.queues[key]
	if len(q.waiting) == 0 {
		delete(p.queues, key)
		return
	}
	j := q.waiting[0]
	q.waiting = q.waiting[1:]
	p.run(key, q, j)
}

// cancelPending stops what a VM that is now ending was doing: the job that
// runs is cancelled (next never cancels a creation: a cancelled VM waits for
// it) and the jobs waiting behind it are dropped.
func (p *Pool) cancelPending(key string) {
	if q := p.queues[key]; q != nil {
		q.cancel()
		q.waiting = nil
	}
}

// busy reports whether key has a job running or waiting.
func (p *Pool) busy(key string) bool { return p.queues[key] != nil }

// job builds the job for one of a VM's I/O actions, from what the loop
// knows now.
func (p *Pool) job(v *vm, a action) job {
	name := v.name
	result := func(in input) func() {
		in.vm = name
		return func() {
			p.stirred = false
			p.apply(in)
			p.quiet = !p.stirred // a result that changed no state gives sync nothing to do
		}
	}
	switch a.kind {
	case doCreate:
		ver := p.versionBySeq(v.version)
		meta := p.meta(v, recBooting)
		var nic *domxml.NIC
		if p.cfg.Network != nil && v.slot >= 0 {
			n := p.cfg.Network.NIC(v.slot)
			nic = &n
		}
		return func(ctx context.Context) func() { return result(p.create(ctx, ver, name, meta, nic)) }
	case doReady:
		vm, hasAgent, meta := p.export(v), v.hasAgent, p.meta(v, recClean)
		return func(ctx context.Context) func() {
			if err := p.ready(ctx, vm, hasAgent, meta); err != nil {
				p.log.Debug("VM not ready yet", "vm", name, "err", err)
				return result(input{kind: resReadyFailed, err: err})
			}
			return result(input{kind: resReady})
		}
	case doRecord:
		meta, rec := p.meta(v, a.rec), a.rec
		return func(ctx context.Context) func() {
			if err := p.hv.SetMetadata(ctx, name, meta); err != nil {
				p.log.Debug("could not record the VM's state", "vm", name, "state", rec, "err", err)
				return result(input{kind: resRecordFailed, rec: rec, err: err})
			}
			return result(input{kind: resRecorded, rec: rec})
		}
	case doDestroy:
		return func(ctx context.Context) func() {
			start := time.Now()
			if err := p.hv.Destroy(ctx, name); err != nil {
				p.logWipeFailure(ctx, name, "destroy", err)
				return result(input{kind: resDestroyFailed, err: err})
			}
			p.log.Debug("VM destroyed", "vm", name, "took", time.Since(start))
			return result(input{kind: resDestroyed})
		}
	case doDelete:
		overlays := append([]string(nil), v.overlays...)
		return func(ctx context.Context) func() {
			start := time.Now()
			var errs []error
			for _, o := range overlays {
				errs = append(errs, p.hv.DeleteOverlay(ctx, o))
			}
			if err := errors.Join(errs...); err != nil {
				p.logWipeFailure(ctx, name, "delete overlays", err)
				return result(input{kind: resDeleteFailed, err: err})
			}
			p.log.Debug("overlays deleted", "vm", name, "took", time.Since(start))
			return result(input{kind: resDeleted})
		}
	}
	panic("pool: no job for action " + a.String())
}

func (p *Pool) logWipeFailure(ctx context.Context, vm, step string, err error) {
	switch {
	case ctx.Err() != nil:
	case virt.IsDisconnected(err):
		// The connection's loss is logged once; the wipe goes on when it is back.
		p.log.Debug("wiping a VM waits for libvirt", "vm", vm, "step", step, "err", err)
	default:
		p.log.Warn("wiping a VM failed; retrying", "vm", vm, "step", step, "err", err)
	}
}

// create makes one clone of ver: an overlay per writable disk, backed by
// the version's copy, then the domain, defined and started.
func (p *Pool) create(ctx context.Context, ver *version, name string, meta domxml.Metadata, nic *domxml.NIC) input {
	if ver == nil {
		return input{kind: resCreateFailed, err: fmt.Errorf("version %d is gone", meta.Version)}
	}
	overlays, secrets := map[string]string{}, map[string]string{}
	var paths []string
	for _, d := range ver.WritableDisks() {
		path, secret, err := p.hv.CreateOverlay(ctx, name+"-"+d.Target+".qcow2", d, p.cfg.EncryptDisks)
		if err != nil {
			return input{kind: resCreateFailed, err: err, paths: paths}
		}
		overlays[d.Target] = path
		if secret != "" {
			secrets[d.Target] = secret
		}
		paths = append(paths, path)
	}
	password := spice.NewPassword()
	xml, err := ver.CloneXML(domxml.Clone{
		Name: name, UUID: uuid.NewString(), Overlays: overlays, Secrets: secrets, SpicePassword: password, Meta: meta, MAC: randomMAC,
		USBFilter: p.cfg.USBFilter, NIC: nic, SpiceAddress: p.cfg.SpiceAddress,
	})
	if err != nil {
		return input{kind: resCreateFailed, err: err, paths: paths}
	}
	dom, err := p.hv.DefineAndStart(ctx, xml)
	if err != nil {
		return input{kind: resCreateFailed, err: err, paths: paths}
	}
	return input{kind: resCreated, dom: dom, paths: paths, spice: SpiceTarget{Socket: dom.SpiceSocket, TLS: dom.SpiceTLS, Password: password}}
}

// ready pings the guest agent a few times (it may take a moment to answer
// after its port opens), runs the display check, and records the VM clean.
func (p *Pool) ready(ctx context.Context, vm VM, hasAgent bool, meta domxml.Metadata) error {
	var err error
	for attempt := 0; hasAgent && attempt < 3; attempt++ {
		if err = p.hv.Ping(ctx, vm.Name); err == nil {
			break
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}
	if p.cfg.ReadyCheck != nil {
		if err := p.cfg.ReadyCheck(ctx, vm); err != nil {
			return err
		}
	}
	return p.hv.SetMetadata(ctx, vm.Name, meta)
}

// meta is what a VM's metadata says when it is recorded as rec.
func (p *Pool) meta(v *vm, rec string) domxml.Metadata {
	m := domxml.Metadata{Pool: p.cfg.Name, State: rec, Since: time.Now().UTC(), Golden: p.cfg.Golden, Version: v.version,
		Kiosk: v.claim.Kiosk, Lease: v.claim.Lease, Addr: v.claim.Addr, Offered: v.claim.At, Linked: v.linked, Policy: p.policy}
	if ver := p.versionBySeq(v.version); ver != nil {
		m.Golden = ver.Meta.Golden
	}
	if rec == recEnding {
		m.Reason = v.reason
	}
	return m
}

// policyOf is the site's settings that go into a clone's domain, as its
// metadata records them: the USB filter, rule by rule, and the guest
// network's layout.
func policyOf(cfg Config) string {
	var rules []string
	for _, r := range cfg.USBFilter {
		rules = append(rules, fmt.Sprintf("%d,%d,%d,%d,%t", r.Class, r.Vendor, r.Product, r.Version, r.Allow))
	}
	var parts []string
	if len(rules) > 0 {
		parts = append(parts, "usb:"+strings.Join(rules, "|"))
	}
	if cfg.Network != nil {
		parts = append(parts, cfg.Network.Policy())
	}
	return strings.Join(parts, " ")
}

// randomMAC returns a MAC in QEMU's locally administered range 52:54:00.
func randomMAC() string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}
