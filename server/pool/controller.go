package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/dustin/go-humanize"

	"undervdi/server/virt"
)

// sync compares what the pool has with what it should have and acts, as a
// Kubernetes controller's sync does; the loop runs it after every input.
//   - A surplus of clean VMs is trimmed back to pool_size, clones of an
//     older version first: that is also how a new version rolls in.
//   - Clean VMs of the current version are made until pool_size are clean
//     or booting, at most refill_concurrency at a time, never more than
//     max_vms in all and only while the host's memory allows.
//   - Versions no clone uses and none keeps for rollback are deleted.
func (p *Pool) sync() {
	if !p.serving() {
		return
	}
	p.applyClaims() // the counts below are then the table's
	t := p.count()
	if p.trim(t) {
		t = p.count()
	}
	p.refill(t)
	p.collectVersions()
}

// serving reports whether the pool may make and retire VMs: connected, its
// table complete, a current version known.
func (p *Pool) serving() bool {
	return p.connected && p.prepared && p.reconciled && p.current != nil && p.ctx.Err() == nil
}

// tally counts the table.
type tally struct {
	clean, cleanCurrent         int
	preparing, preparingCurrent int // on their way to clean
	ending                      int
	total                       int // in libvirt, or about to be
}

func (p *Pool) count() tally {
	var t tally
	cur := p.current.Seq()
	for k, n := range p.idx.counts {
		t.total += n
		switch {
		case k.state == Clean:
			t.clean += n
			if k.version == cur {
				t.cleanCurrent += n
			}
		case k.state.preparing():
			t.preparing += n
			if k.version == cur {
				t.preparingCurrent += n
			}
		case k.state.ending():
			t.ending += n
		}
	}
	return t
}

// trim retires clean VMs beyond pool_size: clones of older versions first
// (a roll), else the one that became clean last (offers never linked, that
// came back after their replacement was made).
func (p *Pool) trim(t tally) (trimmed bool) {
	// Bounded by the count, and by the table: VMs taken from the shelf
	// while it trims leave the clean ones, and are not trimmed for.
	for ; t.clean > p.cfg.Size && len(p.idx.clean) > p.cfg.Size; t.clean-- {
		trimmed = true
		var pick *vm
		for _, v := range p.idx.clean {
			old := v.version != p.current.Seq()
			switch {
			case pick == nil:
				pick = v
			case old != (pick.version != p.current.Seq()):
				if old {
					pick = v
				}
			case v.since.After(pick.since):
				pick = v
			}
		}
		reason := "surplus: more clean VMs than pool_size"
		if pick.version != p.current.Seq() {
			reason = fmt.Sprintf("replaced by version %d", p.current.Seq())
		}
		p.apply(input{kind: apiRetire, vm: pick.name, detail: reason})
	}
	return trimmed
}

// refill starts as many clones as the pool lacks, within its bounds.
func (p *Pool) refill(t tally) {
	want := p.cfg.Size - t.cleanCurrent - t.preparingCurrent
	slots := p.cfg.RefillConcurrency - t.preparing
	room := p.cfg.MaxVMs - t.total
	if want <= 0 || slots <= 0 {
		return
	}
	if room <= 0 {
		if t.clean > t.cleanCurrent {
			p.makeRoom(t)
		}
		return
	}
	if time.Now().Before(p.nextTry) {
		p.kickAt(p.nextTry)
		return
	}
	if p.memory == nil {
		p.readMemory()
		return
	}
	admitted := p.admissible(p.memory.avail, t.preparing)
	p.memory = nil // one reading per wave: the clones it admits change it
	if admitted <= 0 {
		return
	}
	for range min(want, slots, room, admitted) {
		p.newVM()
	}
}

// makeRoom retires one clean clone of an older version when max_vms leaves
// no room for its replacement: a roll then takes the pool at most
// refill_concurrency below pool_size, one replacement at a time per slot.
func (p *Pool) makeRoom(t tally) {
	if t.preparing+t.ending >= p.cfg.RefillConcurrency {
		return
	}
	var pick *vm
	for _, v := range p.idx.clean { // oldest first
		if v.version != p.current.Seq() {
			pick = v
			break
		}
	}
	if pick != nil {
		p.apply(input{kind: apiRetire, vm: pick.name, detail: fmt.Sprintf("replaced by version %d", p.current.Seq())})
	}
}

func (p *Pool) newVM() {
	slot := p.freeSlot()
	if slot < -1 {
		p.log.Warn("no free address on the guest network for another clone: make its subnet larger, or max_vms smaller")
		return
	}
	now := time.Now()
	v := &vm{name: p.newName(), state: Creating, since: now, born: now, version: p.current.Seq(), hasAgent: p.current.HasAgent,
		slot: slot}
	p.add(v)
	p.perform(v, action{kind: doCreate})
}

// freeSlot returns a guest network slot no VM of the table holds (a VM
// holds its slot until it is off the table: destroyed): one never used, or
// the one freed longest ago, so that what was in flight to the last VM at
// that address has died out. -1 without a guest network, -2 when every
// slot is held.
func (p *Pool) freeSlot() int {
	if p.cfg.Network == nil {
		return -1
	}
	pick := -2
	for i := range p.idx.held {
		if p.idx.held[i] > 0 {
			continue
		}
		if pick < 0 || p.freed[i].Before(p.freed[pick]) {
			pick = i
		}
		if p.freed[i].IsZero() {
			break // never used: the first such is as good as any
		}
	}
	return pick
}

func (p *Pool) newName() string {
	for {
		b := make([]byte, 4)
		rand.Read(b)
		name := p.cfg.Name + "-" + hex.EncodeToString(b)
		if _, taken := p.vms[name]; !taken && p.gone[name].IsZero() && (p.cfg.Names == nil || p.cfg.Names.Claim(name)) {
			return name
		}
	}
}

// memoryReading is the host's available memory, read once per refill wave.
type memoryReading struct{ avail uint64 }

func (p *Pool) readMemory() {
	if p.reading {
		return
	}
	p.reading = true
	p.submit("memory", func(ctx context.Context) func() {
		avail, err := p.hv.AvailableMemory(ctx)
		return func() {
			p.reading = false
			if err != nil {
				if !virt.IsDisconnected(err) {
					p.log.Warn("cannot check host memory", "err", err)
				}
				p.backOff(5 * p.minBackoff)
				return
			}
			p.memory = &memoryReading{avail: avail}
		}
	})
}

// admissible says how many more clones may start: the host keeps
// memory_reserve free with them, counting clones still on their way to
// clean as if their memory were taken (a fresh guest has touched little).
func (p *Pool) admissible(avail uint64, preparing int) int {
	per := p.current.Memory
	need := p.cfg.MemoryReserve + per*uint64(preparing+1)
	if avail < need {
		msg := fmt.Sprintf("host has %s available; a clone needs %s and %s stay reserved",
			humanize.IBytes(avail), humanize.IBytes(per), humanize.IBytes(p.cfg.MemoryReserve))
		if p.memShort == "" {
			p.log.Warn("not enough memory for another clone; waiting", "detail", msg)
		}
		p.memShort = msg
		p.backOff(5 * p.minBackoff)
		return 0
	}
	p.memShort = ""
	return int((avail-p.cfg.MemoryReserve)/max(per, 1)) - preparing
}

// backOff holds new clones back for d, then syncs again.
func (p *Pool) backOff(d time.Duration) {
	p.nextTry = time.Now().Add(d)
	p.kickAt(p.nextTry)
}

// kickAt runs sync at t.
func (p *Pool) kickAt(t time.Time) {
	if p.kick != nil {
		return
	}
	p.kick = time.AfterFunc(time.Until(t), func() { p.post(func() { p.kick = nil }) })
}

// countFailure counts a failed clone, backs off, and reports a degraded
// pool loudly.
func (p *Pool) countFailure(vm string, err error) {
	if f := p.cfg.Metrics.CloneFailed; f != nil {
		f()
	}
	p.fails++
	p.lastFail = err.Error()
	backoff := p.minBackoff << min(p.fails-1, 16)
	if backoff > p.maxBackoff || backoff <= 0 {
		backoff = p.maxBackoff
	}
	p.backOff(backoff)
	if p.fails >= p.cfg.FailureLimit {
		p.degraded = fmt.Sprintf("%d clones in a row failed; last: %v", p.fails, err)
		p.log.Error("pool degraded: clones keep failing; check that the golden VM boots and its guest agent runs",
			"golden", p.cfg.Golden, "version", p.current.Seq(), "failures", p.fails, "vm", vm, "err", err, "retry_in", backoff)
		return
	}
	p.log.Warn("clone failed; retrying", "vm", vm, "err", err, "retry_in", backoff)
}

func (p *Pool) countSuccess(vm string) {
	if p.fails >= p.cfg.FailureLimit {
		p.log.Info("pool recovered: a clone became ready", "vm", vm, "after_failures", p.fails)
	}
	p.fails, p.degraded, p.lastFail = 0, "", ""
	p.log.Debug("VM clean", "vm", vm)
}

// noteFilled says once that the pool is full.
func (p *Pool) noteFilled() {
	if p.filled || p.current == nil {
		return
	}
	if len(p.idx.clean) >= p.cfg.Size {
		p.filled = true
		p.log.Info("pool ready", "clean", p.cfg.Size, "golden", p.cfg.Golden, "version", p.current.Seq())
	}
}
