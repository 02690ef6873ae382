package session

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/pool"
)

// ErrQueueFull is returned when more kiosks wait than queue_limit allows.
var ErrQueueFull = errors.New("too many kiosks waiting")

// ErrClosed is returned while the broker is drained: no new sessions.
var ErrClosed = errors.New("no new sessions")

// ErrOutOfOrder is returned for a kiosk an operator put out of order.
var ErrOutOfOrder = errors.New("an operator put this kiosk out of order")

// request is one kiosk waiting for a VM, served in arrival order.
type request struct {
	kiosk   string
	addr    netip.Addr
	legacy  bool
	touched time.Time // the visitor's touch, as the kiosk reported it (legacy: the connection)
	// Callbacks into the kiosk's connection; they must not block.
	onStatus func(state string, ahead int, msg string)
	onOffer  func(*Lease)
	onEnd    func(reason string) // the session ended; may be nil

	// Guarded by Manager.mu.
	lastAhead int
	lastState string

	lease atomic.Pointer[Lease] // once served; set without m.mu when served at once
}

// enqueue puts r at the end of the queue. When nobody waits and a clean VM
// is there, r is served at once instead: the lease is returned, for the
// caller to offer. Otherwise the dispatcher serves it, and tells it its
// place if it has to wait at all.
func (m *Manager) enqueue(r *request) (*Lease, error) {
	if g := m.gate.Load(); m.waiting.Load() == 0 && !g.closed && g.disabled[r.kiosk] == "" {
		// Nobody waits: the pool is asked, and the lease made and
		// published, without m.mu. A thousand kiosks asking at once
		// would otherwise queue on it.
		if vm, id, err := m.take(r); err == nil {
			l := m.newLease(r, vm, id)
			r.lease.Store(l)
			m.leases.publish(l)
			// A drain or an operator that refused the kiosk between the
			// check above and the publication has not seen the lease.
			if g := m.gate.Load(); g.closed || g.disabled[r.kiosk] != "" {
				if why := m.withdraw(r, l); why != nil {
					return nil, why
				}
			}
			m.log.Debug("offer", "lease", l.ID, "kiosk", l.Kiosk, "vm", vm.Name)
			return l, nil
		}
		// No clean VM (or the pool is unavailable): r waits, and the
		// dispatcher says why.
	}
	m.mu.Lock()
	if err := m.refuseLocked(r); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	if len(m.queue) >= m.cfg.QueueLimit {
		m.mu.Unlock()
		return nil, ErrQueueFull
	}
	m.queue = append(m.queue, r)
	m.waiting.Store(int32(len(m.queue)))
	r.lastAhead, r.lastState = -1, kioskproto.StateQueued
	m.mu.Unlock()
	m.wake()
	return nil, nil
}

// withdraw takes back l, the lease of a request served at once, if the
// request is refused now (drained, or the kiosk put out of order): its
// offer was never written, so its VM goes back clean and no session is
// recorded. It returns why, or nil if r may be served after all.
func (m *Manager) withdraw(r *request, l *Lease) error {
	m.mu.Lock()
	why := m.refuseLocked(r)
	ended := l.ended // ended meanwhile (an operator): its VM is dealt with
	if why != nil && !ended {
		l.ended, l.reason = true, why.Error()
		for _, t := range l.timers {
			t.Stop()
		}
		m.leasesLocked().remove(l)
		r.lease.Store(nil)
		close(l.endedCh)
	}
	m.mu.Unlock()
	if why != nil && !ended {
		m.pool.Finish(l.VM.Name, false, why.Error())
	}
	return why
}

// refuseLocked says why r may not be served now, if it may not; m.mu is
// held.
func (m *Manager) refuseLocked(r *request) error {
	if m.closed != "" {
		return fmt.Errorf("%w: %s", ErrClosed, m.closed)
	}
	if why := m.disabled[r.kiosk]; why != "" {
		return fmt.Errorf("%w: %s", ErrOutOfOrder, why)
	}
	return nil
}

// takeLocked takes a clean VM for r and makes its lease; m.mu is held.
// Taking is instant: the VM was checked ready (guest agent, display)
// before it was clean.
func (m *Manager) takeLocked(r *request) (*Lease, error) {
	vm, id, err := m.take(r)
	if err != nil {
		return nil, err
	}
	return m.leaseLocked(r, vm, id), nil
}

// take takes a clean VM from the pool for r, claimed for a new lease id.
func (m *Manager) take(r *request) (pool.VM, string, error) {
	id := "l-" + randomHex(8)
	vm, err := m.pool.Take(pool.Claim{Kiosk: r.kiosk, Lease: id, Addr: r.addr.String()})
	return vm, id, err
}

// leaseLocked makes r's lease of vm; m.mu is held.
func (m *Manager) leaseLocked(r *request, vm pool.VM, id string) *Lease {
	l := m.newLeaseLocked(r, vm, id)
	r.lease.Store(l)
	m.log.Debug("offer", "lease", l.ID, "kiosk", l.Kiosk, "vm", vm.Name)
	return l
}

// cancel takes r out of the queue, or ends its session if it was served.
func (m *Manager) cancel(r *request, reason string) {
	if l := r.lease.Load(); l != nil {
		// Served: off the queue (the dispatcher took it off as it made
		// the lease), and the session is all there is to end. m.mu is
		// not taken: a thousand kiosks ending at once would queue on it.
		m.end(l, reason)
		return
	}
	m.mu.Lock()
	for i, q := range m.queue {
		if q == r {
			m.queue = append(m.queue[:i], m.queue[i+1:]...)
			m.waiting.Store(int32(len(m.queue)))
			break
		}
	}
	l := r.lease.Load() // served since
	m.mu.Unlock()
	if l != nil {
		m.end(l, reason)
	}
	m.wake()
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run serves the queue until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	m.ctx = ctx
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		m.dispatch(ctx)
		m.sendPositions()
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-m.pool.WaitClean():
		case <-tick.C:
		}
	}
}

// dispatch serves the queue, head first, as long as there are clean VMs,
// and offers them.
func (m *Manager) dispatch(ctx context.Context) {
	for {
		m.mu.Lock()
		if len(m.queue) == 0 {
			m.mu.Unlock()
			return
		}
		head := m.queue[0]
		l, err := m.takeLocked(head)
		if err != nil {
			state, msg := kioskproto.StatePreparing, "Preparing your workstation…"
			if errors.Is(err, pool.ErrUnavailable) {
				state, msg = kioskproto.StateQueued, "Service temporarily unavailable"
			}
			// Told on a change, and the first time: enqueue set the
			// state a new request starts in, and nothing was said yet.
			notify := head.lastState != state || head.lastAhead != 0
			head.lastState, head.lastAhead = state, 0
			m.mu.Unlock()
			if notify {
				head.onStatus(state, 0, msg)
			}
			return
		}
		m.queue = m.queue[1:]
		m.waiting.Store(int32(len(m.queue)))
		// Queued before m.mu is let go: an end of the session, which
		// takes m.mu, is written after its offer.
		head.onOffer(l) // it must not block
		m.mu.Unlock()
	}
}

// sendPositions tells waiting kiosks their place when they start waiting
// and whenever it changes.
func (m *Manager) sendPositions() {
	type update struct {
		r     *request
		ahead int
	}
	var ups []update
	m.mu.Lock()
	for i, r := range m.queue {
		if r.lastAhead != i && r.lastState == kioskproto.StateQueued {
			r.lastAhead = i
			ups = append(ups, update{r, i})
		}
	}
	m.mu.Unlock()
	for _, u := range ups {
		u.r.onStatus(kioskproto.StateQueued, u.ahead, queueMessage(u.ahead))
	}
}

func queueMessage(ahead int) string {
	if ahead == 0 {
		return "Preparing your workstation…"
	}
	return fmt.Sprintf("Preparing your workstation… (%d ahead of you)", ahead)
}
