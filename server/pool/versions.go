package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/google/uuid"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// Published versions. Clones are linked clones of a version, never of the
// golden's own disk: publishing copies the golden's writable disks, through
// libvirt's storage API, into read-only volumes of the broker's versions
// storage pool, and only once every copy is verified defines the version's
// template domain. The template is what makes a version exist; volumes
// without one are a publish that never finished, and are deleted. The
// current version is the newest one of the configured golden that was not
// rolled back.

// Errors of publishing.
var (
	ErrPublishing = errors.New("a publish is already under way")
	ErrNoSpace    = errors.New("not enough space for a new version")
	ErrNoEarlier  = errors.New("no earlier version to roll back to")
	ErrReplica    = errors.New("not the golden's host")
	// ErrVersionConflict: a replica holds another version of the number
	// the golden's host publishes (a host that ran a broker of its own).
	ErrVersionConflict = errors.New("another version of that number")
)

// version is a published version as the pool keeps it.
type version struct {
	*domxml.Version
	name     string // its template domain
	deleting bool
}

func (v *version) volumes() []string {
	var out []string
	for _, d := range v.WritableDisks() {
		out = append(out, d.Path)
	}
	return out
}

func (v *version) size() uint64 {
	var n uint64
	for _, d := range v.WritableDisks() {
		n += d.Allocation
	}
	return n
}

func (p *Pool) versionName(seq int) string { return p.cfg.Name + "-v" + strconv.Itoa(seq) }

func (p *Pool) setVersions(vs []*domxml.Version) {
	p.versions = nil
	for _, v := range vs {
		if v.Meta.Pool == p.cfg.Name {
			p.versions = append(p.versions, &version{Version: v, name: p.versionName(v.Meta.Seq)})
		}
	}
	slices.SortFunc(p.versions, func(a, b *version) int { return a.Meta.Seq - b.Meta.Seq })
	p.pickCurrent()
}

// Current returns the version clones of golden are made of: the newest of
// its versions in pool that was not rolled back and is whole (every disk's
// copy is there). It returns nil if there is none.
func Current(vs []*domxml.Version, pool, golden string) *domxml.Version {
	var cur *domxml.Version
	for _, v := range vs {
		if v.Meta.Pool == pool && v.Meta.Golden == golden && v.Meta.Withdrawn.IsZero() && whole(v) &&
			(cur == nil || v.Meta.Seq > cur.Meta.Seq) {
			cur = v
		}
	}
	return cur
}

// whole reports whether every writable disk of a version has its copy: a
// copy libvirt cannot find has no capacity.
func whole(v *domxml.Version) bool {
	for _, d := range v.WritableDisks() {
		if d.Capacity == 0 {
			return false
		}
	}
	return true
}

// pickCurrent makes Current the current version.
func (p *Pool) pickCurrent() {
	prev := p.current
	p.current = nil
	var vs []*domxml.Version
	for _, v := range p.versions {
		if !v.deleting {
			vs = append(vs, v.Version)
		}
	}
	if cur := Current(vs, p.cfg.Name, p.cfg.Golden); cur != nil {
		p.current = p.versionBySeq(cur.Meta.Seq)
	}
	if p.current != nil && prev != nil && p.current.Meta.Seq != prev.Meta.Seq {
		p.log.Info("current version changed; clean clones of the old one are replaced as new ones are ready",
			"from", prev.Meta.Seq, "to", p.current.Meta.Seq)
	}
}

func (p *Pool) versionBySeq(seq int) *version {
	for _, v := range p.versions {
		if v.Meta.Seq == seq {
			return v
		}
	}
	return nil
}

// refs counts the VMs of a version.
func (p *Pool) refs(seq int) int {
	n := 0
	for k, c := range p.idx.counts {
		if k.version == seq {
			n += c
		}
	}
	return n
}

// retained reports whether a version is kept even with no clone of it: the
// current one, the keep_versions newest earlier ones of the golden that were
// not rolled back, and those rolled back from until the next publish (so
// that no number is used twice).
func (p *Pool) retained(v *version) bool {
	if p.current == nil || v == p.current {
		return true
	}
	if v.Meta.Golden != p.cfg.Golden || !whole(v.Version) {
		return false // another golden's, or broken: no rollback can use it
	}
	if v.Meta.Seq > p.current.Meta.Seq {
		return !v.Meta.Withdrawn.IsZero()
	}
	if !v.Meta.Withdrawn.IsZero() {
		return false
	}
	newer := 0
	for _, o := range p.versions {
		if o.Meta.Golden == p.cfg.Golden && o.Meta.Withdrawn.IsZero() && o.Meta.Seq > v.Meta.Seq && o != p.current {
			newer++
		}
	}
	return newer < p.cfg.KeepVersions
}

// collectVersions deletes the versions nothing uses or keeps.
func (p *Pool) collectVersions() {
	if !p.reconciled || time.Now().Before(p.versionGC) {
		return
	}
	for _, v := range p.versions {
		if v.deleting || p.retained(v) || p.refs(v.Meta.Seq) > 0 {
			continue
		}
		v.deleting = true
		name, volumes, seq := v.name, v.volumes(), v.Meta.Seq
		p.log.Info("deleting version: no clone uses it and none keeps it", "version", seq, "golden", v.Meta.Golden)
		p.submit("version "+name, func(ctx context.Context) func() {
			err := p.hv.DeleteVersion(ctx, name, volumes)
			return func() {
				if err != nil {
					v.deleting = false
					p.versionGC = time.Now().Add(30 * time.Second)
					if !virt.IsDisconnected(err) {
						p.log.Warn("could not delete version; retrying", "version", seq, "err", err)
					}
					return
				}
				p.versions = slices.DeleteFunc(p.versions, func(o *version) bool { return o == v })
			}
		})
	}
}

// prepare readies the storage pools and reads the versions, after each
// (re)connection. With no version of the golden yet, it publishes one.
func (p *Pool) prepare() {
	if p.busy("prepare") {
		return
	}
	p.submit("prepare", func(ctx context.Context) func() {
		err := p.hv.PrepareStorage(ctx, p.cfg.Name, p.cfg.OverlayDir, p.cfg.VersionDir)
		if n := p.cfg.Network; err == nil && n != nil {
			chain, root := n.FilterXML()
			if err = p.hv.DefineFilters(ctx, chain, root); err == nil {
				err = p.hv.EnsureNetwork(ctx, n.NetworkXML())
			}
		}
		var vs []*domxml.Version
		if err == nil {
			vs, err = p.hv.Versions(ctx, p.cfg.Name+"-v")
		}
		return func() { p.afterPrepare(vs, err) }
	})
}

func (p *Pool) afterPrepare(vs []*domxml.Version, err error) {
	if err != nil {
		if virt.IsDisconnected(err) {
			return // the next connection tries again
		}
		p.pause(err.Error())
		if p.cfg.Replica == nil {
			p.answerStart(err)
		} // a host without the golden tries again at each tick: the others serve meanwhile
		return
	}
	p.setVersions(vs)
	p.prepared = true
	if p.current == nil && p.cfg.Replica != nil {
		if why := "waiting for a copy of the current version from host " + p.cfg.Replica.From; !p.publish.running() && p.paused != why {
			p.log.Info("waiting for a copy of the current version", "from", p.cfg.Replica.From)
			p.paused = why // news, not an error: the site asks for the copy
		}
		return
	}
	if p.current == nil {
		if p.publish == nil || !p.publish.running() {
			p.startPublish("there is no published version of " + p.cfg.Golden + " yet")
		}
		return
	}
	p.pause("")
	p.list()
	if p.cfg.AutoPublish && p.cfg.Replica == nil {
		p.publishIfChanged()
	}
}

// retryPaused prepares again while the pool is paused: an operator may have
// fixed what stopped it (shut the golden down, made space) without any event.
func (p *Pool) retryPaused() {
	if p.paused != "" && p.connected && (!p.prepared || p.current == nil) && !p.publish.running() {
		p.prepare()
	}
}

func (p *Pool) pause(reason string) {
	switch {
	case reason == p.paused:
	case reason == "":
		p.log.Info("pool resumed", "golden", p.cfg.Golden)
	default:
		p.log.Error("pool paused", "reason", reason)
	}
	p.paused = reason
}

// answerStart answers Start once: nil once the first reconcile is done, an
// error if the pool cannot start at all.
func (p *Pool) answerStart(err error) {
	if !p.startedOK {
		p.startedOK = true
		p.started <- err
	}
}

// goldenEvent follows the golden VM. Clones do not use its disk, so it may
// run at any time; shutting it off after it ran publishes a new version
// when auto_publish is on.
func (p *Pool) goldenEvent(ev virt.Event) {
	cur := 0
	if p.current != nil {
		cur = p.current.Meta.Seq
	}
	switch ev.Kind {
	case virt.Started:
		p.goldenRan = true
		p.log.Info("golden VM started; clones keep using the published version", "golden", p.cfg.Golden, "version", cur)
	case virt.Stopped:
		if p.goldenRan && p.cfg.AutoPublish && p.prepared {
			p.startPublish("the golden VM was shut off after it ran (auto_publish)")
		}
		p.goldenRan = false
	case virt.Undefined:
		p.log.Warn("golden VM undefined; clones keep using the published version", "golden", p.cfg.Golden, "version", cur)
	}
}

// publishIfChanged publishes when the golden's disks changed since the
// current version copied them (auto_publish, at start): libvirt's volume
// timestamps and allocation tell, without reading the disks.
func (p *Pool) publishIfChanged() {
	sources := p.current.Meta.Sources
	p.submit("golden check", func(ctx context.Context) func() {
		g, err := p.hv.Golden(ctx, p.cfg.Golden)
		return func() {
			if err != nil || p.publish.running() {
				return // running, or broken: its shutdown, or an operator, publishes
			}
			if changed(g, sources) {
				p.startPublish("the golden VM changed since the current version (auto_publish)")
			}
		}
	})
}

func changed(g *domxml.Golden, sources []domxml.Source) bool {
	disks := g.WritableDisks()
	if len(disks) != len(sources) {
		return true
	}
	for i, d := range disks {
		s := sources[i]
		if d.Target != s.Target || d.Path != s.Path || !d.Modified.Equal(s.Modified) || d.Allocation != s.Allocation {
			return true
		}
	}
	return false
}

// publishJob is a publish under way, or the last one.
type publishJob struct {
	Seq      int
	Reason   string
	Started  time.Time
	Finished time.Time
	Total    uint64 // bytes to copy: what the golden's disks hold
	Written  uint64
	Disk     string // the disk being copied
	Err      string
	logged   int // tenths of Total said in the log
}

func (j *publishJob) running() bool { return j != nil && j.Finished.IsZero() }

// startPublish begins publishing a new version. The returned channel gets
// nil once the golden was checked and the copy began, or why it could not.
func (p *Pool) startPublish(reason string) <-chan error {
	preflight := make(chan error, 1)
	if p.publish.running() {
		preflight <- ErrPublishing
		return preflight
	}
	if r := p.cfg.Replica; r != nil {
		preflight <- fmt.Errorf("%w: this host's versions are copies from host %s; publish there", ErrReplica, r.From)
		return preflight
	}
	seq := 1
	for _, v := range p.versions {
		seq = max(seq, v.Meta.Seq+1)
	}
	j := &publishJob{Seq: seq, Reason: reason, Started: time.Now()}
	p.publish = j
	p.log.Info("publishing a new version of the golden VM", "golden", p.cfg.Golden, "reason", reason)
	p.submit("publish", func(ctx context.Context) func() {
		began := false
		ver, err := p.publishVersion(ctx, j, func() { began = true; preflight <- nil })
		return func() {
			p.published(j, ver, err)
			if !began {
				// Refused before the copy: the caller hears it once the
				// job is over, so that a retry is not told one runs.
				preflight <- err
			}
		}
	})
	return preflight
}

// publishVersion does a publish's I/O: it checks the golden (shut off,
// cloneable), that the versions pool has room, copies each writable disk,
// verifies the copies and defines the template. A failure deletes what it
// copied; a crash leaves volumes without a template, which the next
// reconcile deletes.
func (p *Pool) publishVersion(ctx context.Context, j *publishJob, began func()) (ver *domxml.Version, err error) {
	var copies []string
	defer func() {
		if err != nil {
			p.discard(ctx, copies)
		}
	}()
	g, err := p.hv.Golden(ctx, p.cfg.Golden)
	if err != nil {
		return nil, fmt.Errorf("publishing needs the golden shut off and cloneable: %w", err)
	}
	existing, err := p.hv.VersionVolumes(ctx)
	if err != nil {
		return nil, err
	}
	seq := j.Seq
	for _, f := range existing {
		if s, ok := p.versionVolumeSeq(f); ok {
			seq = max(seq, s+1) // never a name an unfinished copy still holds
		}
	}
	var total uint64
	for _, d := range g.WritableDisks() {
		total += d.Allocation
	}
	if err := p.versionRoom(ctx, g.WritableDisks(), fmt.Sprintf("version %d of %s", seq, p.cfg.Golden)); err != nil {
		return nil, err
	}
	p.post(func() { j.Seq, j.Total = seq, total; p.logPublish(j) })
	began()

	disks, err := p.copyDisks(ctx, j, seq, g.WritableDisks(), p.hv.CopyDisk, p.cfg.Golden, &copies)
	if err != nil {
		return nil, err
	}
	var sources []domxml.Source
	for _, d := range g.WritableDisks() {
		sources = append(sources, domxml.Source{Target: d.Target, Path: d.Path, Modified: d.Modified, Allocation: d.Allocation})
	}
	xml, err := g.TemplateXML(domxml.Template{Name: p.versionName(seq), UUID: uuid.NewString(), Disks: disks,
		Meta: domxml.VersionMeta{Pool: p.cfg.Name, Seq: seq, Golden: p.cfg.Golden, Published: time.Now().UTC(), Sources: sources}})
	if err != nil {
		return nil, err
	}
	return p.hv.DefineVersion(ctx, xml)
}

// versionRoom checks that the versions pool has room for copies of disks,
// for what (a version, or a copy of one).
func (p *Pool) versionRoom(ctx context.Context, disks []domxml.Disk, what string) error {
	var need uint64
	for _, d := range disks {
		need += d.Allocation + max(d.Capacity/512, 1<<20) // qcow2's own tables
	}
	free, store, err := p.hv.VersionSpace(ctx)
	if err != nil {
		return err
	}
	if free < need {
		return fmt.Errorf("%w: storage pool %s (%s) needs %s for %s, and has %s free",
			ErrNoSpace, store, p.cfg.VersionDir, humanize.IBytes(need), what, humanize.IBytes(free))
	}
	return nil
}

// copyDisks copies each disk into the versions pool as a volume of version
// seq, with copy (a publish's CopyDisk, a replica's copy from the golden's
// host), and checks it; j hears the progress. It returns the copies by
// disk target; every volume it made, also on failure, is added to made.
func (p *Pool) copyDisks(ctx context.Context, j *publishJob, seq int, disks []domxml.Disk,
	copy func(ctx context.Context, src domxml.Disk, name string, progress func(written uint64)) (string, error),
	from string, made *[]string) (map[string]string, error) {
	out := map[string]string{}
	var done uint64
	for _, d := range disks {
		name := fmt.Sprintf("%s-%s.qcow2", p.versionName(seq), d.Target)
		base := done
		p.post(func() { j.Disk = d.Target })
		path, err := copy(ctx, d, name, func(written uint64) {
			// A copy may move a little more than the allocation the total
			// counts (a replica moves the source file's bytes).
			p.post(func() { j.Written = min(base+written, j.Total); p.logPublish(j) })
		})
		if path != "" {
			*made = append(*made, path)
		}
		if err != nil {
			return nil, fmt.Errorf("copying disk %s of %s: %w", d.Target, from, err)
		}
		if err := p.hv.CheckCopy(ctx, path, d.Capacity); err != nil {
			return nil, fmt.Errorf("verifying the copy of disk %s: %w", d.Target, err)
		}
		done += d.Allocation
		out[d.Target] = path
	}
	return out, nil
}

// discard deletes a failed publish's (or copy's) volumes, best effort: a
// volume left here has no template, and the next reconcile deletes it.
func (p *Pool) discard(ctx context.Context, volumes []string) {
	for _, c := range volumes {
		if derr := p.hv.DeleteVersionVolume(context.WithoutCancel(ctx), c); derr != nil {
			p.log.Debug("could not delete a failed publish's copy yet", "volume", c, "err", derr)
		}
	}
}

// CurrentVersion returns the current version, or nil: what the site copies
// to its other hosts.
func (p *Pool) CurrentVersion() *domxml.Version {
	var out *domxml.Version
	p.call(func() {
		if p.current != nil {
			cp := *p.current.Version
			out = &cp
		}
	})
	return out
}

// Replicate makes this host, one without the golden (Config.Replica), hold
// a copy of version ver of the golden's host: each disk is copied into the
// versions pool, checked, and the template defined last, as a publish
// does; the pool then rolls to it if it is the newest. It returns once the
// copy began, or at once if the version is here already; Status shows its
// progress as a publish's.
func (p *Pool) Replicate(ver *domxml.Version) error {
	var err error
	if cerr := p.call(func() {
		switch have := p.versionBySeq(ver.Meta.Seq); {
		case p.cfg.Replica == nil:
			err = fmt.Errorf("%w: this pool publishes its own versions", ErrReplica)
		case have != nil && !have.Meta.Published.Equal(ver.Meta.Published):
			err = fmt.Errorf("%w: this host holds a version %d of its own (published %s), not host %s's (published %s): "+
				"undefine its template %s there, and the copy follows",
				ErrVersionConflict, ver.Meta.Seq, have.Meta.Published.Format(time.RFC3339), p.cfg.Replica.From,
				ver.Meta.Published.Format(time.RFC3339), have.name)
		case have != nil && whole(have.Version):
		case p.publish.running():
			err = ErrPublishing
		case !p.connected || !p.prepared:
			err = fmt.Errorf("%w: not connected to libvirt", ErrUnavailable)
		default:
			p.startReplica(ver)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

func (p *Pool) startReplica(ver *domxml.Version) {
	j := &publishJob{Seq: ver.Meta.Seq, Started: time.Now(),
		Reason: fmt.Sprintf("a copy of version %d from host %s", ver.Meta.Seq, p.cfg.Replica.From)}
	for _, d := range ver.WritableDisks() {
		j.Total += d.Allocation
	}
	p.publish = j
	p.log.Info("copying a version from the golden's host", "version", j.Seq, "from", p.cfg.Replica.From, "size", humanize.IBytes(j.Total))
	p.submit("publish", func(ctx context.Context) func() {
		got, err := p.replicateVersion(ctx, j, ver)
		return func() { p.published(j, got, err) }
	})
}

// replicateVersion does a replica's I/O: room, the copies, their check and
// the template, which names this host's copies and keeps the version's
// number and metadata. A failure deletes what it copied.
func (p *Pool) replicateVersion(ctx context.Context, j *publishJob, ver *domxml.Version) (got *domxml.Version, err error) {
	var copies []string
	defer func() {
		if err != nil {
			p.discard(ctx, copies)
		}
	}()
	seq := ver.Meta.Seq
	if err := p.versionRoom(ctx, ver.WritableDisks(), fmt.Sprintf("the copy of version %d", seq)); err != nil {
		return nil, err
	}
	r := p.cfg.Replica
	disks, err := p.copyDisks(ctx, j, seq, ver.WritableDisks(),
		func(ctx context.Context, src domxml.Disk, name string, progress func(uint64)) (string, error) {
			return r.Copy(ctx, src, name, func(written, _ uint64) { progress(written) })
		}, fmt.Sprintf("version %d from host %s", seq, r.From), &copies)
	if err != nil {
		return nil, err
	}
	xml, err := ver.TemplateXML(domxml.Template{Name: p.versionName(seq), UUID: uuid.NewString(), Disks: disks, Meta: ver.Meta})
	if err != nil {
		return nil, err
	}
	return p.hv.DefineVersion(ctx, xml)
}

// published applies the end of a publish.
func (p *Pool) published(j *publishJob, ver *domxml.Version, err error) {
	j.Finished = time.Now()
	if err != nil {
		j.Err = err.Error()
		if virt.IsDisconnected(err) || p.ctx.Err() != nil {
			return
		}
		if j.Reason == "requested" {
			p.log.Warn("publish failed", "golden", p.cfg.Golden, "err", err) // the operator who asked is told
		} else {
			p.log.Error("publish failed", "golden", p.cfg.Golden, "err", err)
		}
		switch {
		case p.current == nil && p.cfg.Replica != nil:
			p.pause("no copy of the current version yet: " + err.Error()) // the site asks again
		case p.current == nil:
			p.pause("no published version: " + err.Error())
			p.answerStart(err)
		}
		return
	}
	j.Written = j.Total
	p.log.Info("version published", "version", ver.Meta.Seq, "golden", p.cfg.Golden, "copied", humanize.IBytes(j.Total),
		"took", j.Finished.Sub(j.Started).Round(time.Millisecond))
	first := p.current == nil
	p.versions = append(p.versions, &version{Version: ver, name: p.versionName(ver.Meta.Seq)})
	p.pickCurrent()
	if first {
		p.pause("")
		p.list()
	}
}

// logPublish says how a publish goes, every tenth of the way.
func (p *Pool) logPublish(j *publishJob) {
	if j.Total == 0 {
		return
	}
	tenth := int(10 * j.Written / j.Total)
	if tenth > j.logged || j.Written == 0 {
		j.logged = tenth
		p.log.Info("publishing", "version", j.Seq, "disk", j.Disk, "written", humanize.IBytes(j.Written),
			"of", humanize.IBytes(j.Total), "percent", 10*tenth)
	}
}

func (p *Pool) publishingSeq(seq int) bool { return p.publish.running() && p.publish.Seq == seq }

// rollback withdraws the current version: the newest earlier one kept
// becomes current, and the pool rolls to it as it does after a publish.
func (p *Pool) rollback(done chan<- rollbackResult) {
	switch {
	case p.publish.running():
		done <- rollbackResult{err: fmt.Errorf("%w: wait for it to finish", ErrPublishing)}
		return
	case p.current == nil:
		done <- rollbackResult{err: fmt.Errorf("%w: no version is published", ErrNoEarlier)}
		return
	}
	from := p.current
	var to *version
	for _, v := range p.versions {
		if v != from && p.retained(v) && v.Meta.Withdrawn.IsZero() && v.Meta.Seq < from.Meta.Seq && !v.deleting {
			to = v
		}
	}
	if to == nil {
		done <- rollbackResult{err: fmt.Errorf("%w: version %d is the only one kept (keep_versions = %d)",
			ErrNoEarlier, from.Meta.Seq, p.cfg.KeepVersions)}
		return
	}
	meta := from.Meta
	meta.Withdrawn = time.Now().UTC()
	p.submit("version "+from.name, func(ctx context.Context) func() {
		err := p.hv.WithdrawVersion(ctx, from.name, meta)
		return func() {
			if err == nil {
				from.Meta = meta
				p.pickCurrent()
				p.log.Info("rolled back", "from", from.Meta.Seq, "to", to.Meta.Seq)
			}
			done <- rollbackResult{from: from.Meta.Seq, to: to.Meta.Seq, err: err}
		}
	})
}

type rollbackResult struct {
	from, to int
	err      error
}

// Seq is the version's number.
func (v *version) Seq() int { return v.Meta.Seq }
