package pool

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// list asks libvirt for the pool's domains, overlays and version volumes;
// reconcile then compares them with the table. It runs after every
// (re)connection and, as a safety net, every reconcile_interval.
func (p *Pool) list() {
	// Without a current version nothing found can be judged clean; a
	// publish's (or a replica's copy's) end lists.
	if !p.connected || !p.prepared || p.listing || p.current == nil {
		return
	}
	p.listing = true
	listed := time.Now()
	p.submit("list", func(ctx context.Context) func() {
		doms, err := p.hv.Domains(ctx, p.cfg.Name+"-")
		var overlays, volumes []string
		if err == nil {
			overlays, err = p.hv.Overlays(ctx)
		}
		if err == nil {
			volumes, err = p.hv.VersionVolumes(ctx)
		}
		return func() {
			p.listing = false
			if err != nil {
				if !virt.IsDisconnected(err) {
					p.log.Warn("reconcile failed; will retry", "err", err)
				}
				return
			}
			p.reconcile(listed, doms, overlays, volumes)
		}
	})
}

// reconcile repairs the difference between the table and a listing of
// libvirt made at listed. At start it is how the pool learns of VMs from an
// earlier run: only clean, running clones of the current version are kept,
// once checked again; everything else is destroyed. It judges only what the
// listing can tell: a VM whose state changed after the listing started, or
// that was wiped since, is left alone.
func (p *Pool) reconcile(listed time.Time, doms []*domxml.Domain, overlays, volumes []string) {
	for name, at := range p.gone {
		if time.Since(at) > 10*time.Minute {
			delete(p.gone, name)
		}
	}
	inLibvirt := map[string]bool{}
	for _, d := range doms {
		if d.Meta == nil || d.Meta.Pool != p.cfg.Name {
			continue
		}
		inLibvirt[d.Name] = true
		v := p.vms[d.Name]
		switch {
		case v == nil:
			if _, wiped := p.gone[d.Name]; !wiped {
				p.found(d)
			}
		case v.since.After(listed):
		case !d.Running && v.state != Creating && v.state != Cancelled:
			p.apply(input{kind: evStopped, vm: v.name, detail: d.StopReason})
		}
	}
	for _, v := range p.vms {
		if !inLibvirt[v.name] && !v.since.After(listed) && v.state != Creating && v.state != Cancelled {
			p.apply(input{kind: evStopped, vm: v.name}) // gone without an event
		}
	}
	for _, f := range overlays {
		owner := p.overlayOwner(f)
		if owner == "" || inLibvirt[owner] || p.vms[owner] != nil || !p.gone[owner].Before(listed) {
			continue
		}
		p.deleteOrphan("overlay", f, p.hv.DeleteOverlay)
	}
	for _, f := range volumes {
		seq, ok := p.versionVolumeSeq(f)
		if !ok || p.versionBySeq(seq) != nil || p.publishingSeq(seq) || p.refs(seq) > 0 {
			continue
		}
		p.deleteOrphan("version volume", f, p.hv.DeleteVersionVolume) // a publish that never finished
	}
	if !p.reconciled {
		p.reconciled = true
		p.answerStart(nil)
	}
}

// found takes in a pool domain the table does not know: a previous run's.
func (p *Pool) found(d *domxml.Domain) {
	m := d.Meta
	if p.cfg.Names != nil && !p.cfg.Names.Claim(d.Name) {
		p.log.Warn("a VM left from an earlier run has the name of one live on another host", "vm", d.Name)
	}
	v := &vm{name: d.Name, since: m.Since, version: m.Version, overlays: p.overlaysOf(d), slot: -1,
		spice:  SpiceTarget{Socket: d.SpiceSocket, TLS: d.SpiceTLS, Password: d.SpicePassword},
		claim:  Claim{Kiosk: m.Kiosk, Lease: m.Lease, Addr: m.Addr, At: m.Offered},
		linked: m.Linked, hasAgent: p.current.HasAgent, agent: d.AgentState == "connected"}
	if p.cfg.Network != nil && d.GuestIP != "" {
		v.slot = p.cfg.Network.Slot(d.GuestIP)
	}
	switch {
	case m.State == recClean && d.Running && m.Golden == p.cfg.Golden && m.Version == p.current.Seq() && m.Policy == p.policy:
		p.log.Debug("checking a clean VM left by an earlier run", "vm", d.Name)
		v.state = Adopting
		p.add(v)
		p.perform(v, action{kind: doReady})
		return
	case m.State == recClean && d.Running && m.Golden == p.cfg.Golden && m.Version == p.current.Seq():
		v.reason = "a clean clone made under another USB policy or guest network than the site's now: replaced"
	case m.State == recClean && d.Running:
		v.reason = fmt.Sprintf("a clean clone of version %d of %s, not of the current version %d of %s: replaced",
			m.Version, m.Golden, p.current.Seq(), p.cfg.Golden)
	case m.Lease != "" && (m.State == recOffered || m.State == recInUse || m.State == recEnding):
		v.reason, v.restart = ReasonRestart, true
	default:
		v.reason = fmt.Sprintf("left from an earlier run in state %s, running=%v: not provably clean", m.State, d.Running)
	}
	p.log.Info("destroying VM left from an earlier run", "vm", d.Name, "state", m.State, "running", d.Running, "reason", v.reason)
	v.state = Destroying
	p.add(v)
	p.perform(v, action{kind: doDestroy})
}

// deleteOrphan deletes a file no domain and no version owns, once.
func (p *Pool) deleteOrphan(what, path string, del func(context.Context, string) error) {
	key := what + " " + path
	if p.busy(key) {
		return
	}
	p.log.Info("deleting "+what+" that nothing uses", "path", path)
	p.submit(key, func(ctx context.Context) func() {
		err := del(ctx, path)
		return func() {
			if err != nil && !virt.IsDisconnected(err) {
				p.log.Warn("could not delete "+what+"; the next reconcile retries", "path", path, "err", err)
			}
		}
	})
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

// versionVolumeSeq returns the version a volume of the versions pool
// belongs to, from its name <pool>-v<N>-<disk>.qcow2.
func (p *Pool) versionVolumeSeq(path string) (int, bool) {
	if filepath.Dir(path) != filepath.Clean(p.cfg.VersionDir) {
		return 0, false
	}
	rest, ok := strings.CutPrefix(filepath.Base(path), p.cfg.Name+"-v")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, "-")
	seq, err := strconv.Atoi(num)
	if !ok || err != nil || seq < 1 || !strings.HasSuffix(rest, ".qcow2") {
		return 0, false
	}
	return seq, true
}
