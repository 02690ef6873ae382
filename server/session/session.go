// Package session hands VMs to kiosks and takes them back: the kiosk
// protocol, the original's signal port, the fair queue, and the lease that
// ties one kiosk to one VM until the session ends. The SPICE gateway asks it
// whether a link may pass.
//
// A session ends, always through Manager.end, when:
//   - the kiosk's connection is lost or its heartbeats stop;
//   - the kiosk says so (the visitor finished, logged out, went idle);
//   - the visitor is idle past idle_limit (heartbeats, or SPICE input for
//     legacy kiosks);
//   - every SPICE connection is closed for longer than the grace period;
//   - the guest powers off, reboots or crashes (the pool reports it);
//   - the session lasted max_session, or an admin ends it;
//   - the VM was offered but not linked within the connect window.
//
// Ending tells the kiosk why, closes the session's SPICE connections, and
// destroys the VM with its disk — or, if no client ever linked, puts the
// still pristine VM back in the pool.
package session

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/pool"
	"undervdi/server/spice"
)

// Pool is what sessions need from the VM pool; *pool.Pool has it. The
// pool's announcements of wiped VMs reach the manager through VMEnded.
type Pool interface {
	Take(pool.Claim) (pool.VM, error)
	WaitClean() <-chan struct{}
	MarkUsed(ctx context.Context, name string) error
	// Finish tells the pool, without waiting, that the session on a VM is
	// over: unused, the VM goes back clean; used, it is destroyed.
	Finish(name string, used bool, reason string)
}

// Config is the session part of the broker configuration.
type Config struct {
	ConnectWindow    time.Duration
	Grace            time.Duration
	Heartbeat        time.Duration
	HeartbeatTimeout time.Duration
	// IdleHeartbeat, if longer than Heartbeat, is how often a kiosk with no
	// request and no session heartbeats (one that says it can); its
	// timeout then is HeartbeatTimeout scaled as IdleHeartbeat is.
	IdleHeartbeat   time.Duration
	IdleLimit       time.Duration
	MaxSession      time.Duration // 0: no limit
	QueueLimit      int
	MaxConnsPerAddr int    // on the kiosk port; 0: no cap
	PublicHost      string // "" : the address the kiosk reached the broker on
	GatewayPort     int    // plaintext SPICE, for legacy kiosks
	GatewayTLSPort  int    // SPICE over TLS; 0 where the site runs without TLS
	SpiceSubject    string // the TLS port's certificate subject, for viewers' host-subject
	Viewer          kioskproto.Viewer
	Metrics         Metrics
	// OutOfOrderFile keeps the kiosks operators put out of order across
	// restarts; "": in memory only.
	OutOfOrderFile string
	// CurrentImages are the kiosk image versions the site serves; a
	// kiosk that reports another is flagged in the fleet. Nil: none.
	CurrentImages func() []string
	// Blocked returns, and forgets, what the guest network refused a VM
	// (the egress guard's tally): the count and the names most refused.
	// Nil: no guest network.
	Blocked func(vm string) (int, []BlockedName)
}

// Metrics hears what the manager measures, for the broker's metrics; nil
// fields are not called.
type Metrics struct {
	// Handoff is a request read to its offer written, at the broker.
	Handoff func(d time.Duration, legacy bool)
	// Ended is a session ending; used: its VM was linked; cause: Cause
	// of its reason.
	Ended func(used bool, cause string)
	// TouchToLink is a visitor's touch (as the kiosk reported it; for a
	// legacy kiosk, its connection to the signal port) to the session's
	// first SPICE link.
	TouchToLink func(d time.Duration, legacy bool)
}

// Errors the gateway turns into refused links.
var (
	ErrNoLease   = errors.New("no live lease for this address")
	ErrBadTicket = errors.New("ticket does not match the lease")
	ErrExpired   = errors.New("the connect window is over")
	ErrTakeover  = errors.New("the session's main channel is already linked")
	ErrNoMain    = errors.New("the session's main channel is not linked")
	ErrChannels  = errors.New("the session has all the channels a viewer opens")
	ErrPlaintext = errors.New("this session's SPICE goes over TLS only")
)

// Manager runs the sessions of one broker.
type Manager struct {
	cfg      Config
	pool     Pool
	registry *Registry
	audit    *Audit
	log      *slog.Logger

	ctx  context.Context
	kick chan struct{} // wakes the dispatcher

	mu      sync.Mutex
	queue   []*request
	leases  leaseTable              // by lease ID and by VM (leases.go)
	pending map[string]*AuditRecord // used VMs being wiped, by VM name
	conns   map[string]*kioskConn   // by kiosk id
	offline map[string]KioskStatus  // kiosks seen since the start and gone, by id: the fleet
	groups  map[string]int          // kiosks connected per registry entry
	closed  string                  // why no new session starts (drained); "" serves
	notice  string                  // what kiosks say while closed
	// disabled holds the kiosks operators put out of order, by id, with
	// why; saved in cfg.OutOfOrderFile.
	disabled map[string]string
	saveMu   sync.Mutex
	// What a request served at once checks before it asks the pool,
	// without m.mu: how many requests wait (len(queue)), and who is
	// refused (closed, disabled). Written under m.mu; the answer is checked
	// again under m.mu once a VM is taken.
	waiting atomic.Int32
	gate    atomic.Pointer[gate]

	handoffs handoffStats
	// Why a lease's own timers end it, worded once.
	reasons struct{ connect, max string }
}

// New returns a manager; Run starts its dispatcher.
func New(cfg Config, p Pool, reg *Registry, audit *Audit, log *slog.Logger) *Manager {
	m := &Manager{
		cfg: cfg, pool: p, registry: reg, audit: audit, log: log,
		kick:    make(chan struct{}, 1),
		leases:  newLeaseTable(),
		pending: map[string]*AuditRecord{},
		conns:   map[string]*kioskConn{},
		offline: map[string]KioskStatus{},
		groups:  map[string]int{},
	}
	m.reasons.connect = fmt.Sprintf("not linked within the connect window (%v)", cfg.ConnectWindow)
	m.reasons.max = fmt.Sprintf("maximum session time (%v) reached", cfg.MaxSession)
	var err error
	if m.disabled, err = loadDisabled(cfg.OutOfOrderFile); err != nil {
		log.Error("cannot read which kiosks operators put out of order; all are in order", "err", err)
		m.disabled = map[string]string{}
	}
	m.regateLocked()
	return m
}

// gate is a copy of what refuses a request, for enqueue's check without
// m.mu.
type gate struct {
	closed   bool
	disabled map[string]string
}

// regateLocked publishes closed and disabled for enqueue; m.mu is held
// (or m is not shared yet).
func (m *Manager) regateLocked() {
	m.gate.Store(&gate{closed: m.closed != "", disabled: maps.Clone(m.disabled)})
}

// idleTimeout is how long a kiosk at the idle heartbeat rate may be
// silent: HeartbeatTimeout, as many heartbeats long.
func (m *Manager) idleTimeout() time.Duration {
	return time.Duration(float64(m.cfg.HeartbeatTimeout) * float64(m.cfg.IdleHeartbeat) / float64(m.cfg.Heartbeat))
}

// Lease ties one kiosk to one VM.
type Lease struct {
	ID      string
	Kiosk   string
	Addr    netip.Addr // SPICE links must come from here
	Legacy  bool
	VM      pool.VM
	Offered time.Time
	Expires time.Time // link before this
	ticket  string

	// Guarded by Manager.mu.
	linked    time.Time
	touched   time.Time // the touch the lease answers, for the touch-to-link figure
	mainOpen  bool
	conns     map[int]func() // open SPICE connections -> close
	channels  map[string]int // open SPICE channels ("display:0") -> their connection
	nextConn  int
	ended     bool
	reason    string
	linkedCh  chan struct{} // closed at the first link
	endedCh   chan struct{} // closed when the session ends
	notifyEnd func(reason string)
	timers    map[string]*time.Timer
	nextFresh *Lease // on the list of leases published without m.mu
}

// Linked is closed at the lease's first SPICE link.
func (l *Lease) Linked() <-chan struct{} { return l.linkedCh }

// Ended is closed when the session has ended.
func (l *Lease) Ended() <-chan struct{} { return l.endedCh }

// Reason is why the session ended, once it has.
func (m *Manager) Reason(l *Lease) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return l.reason
}

// newLeaseLocked records lease id for a VM taken for r and starts its
// connect window; m.mu is held.
func (m *Manager) newLeaseLocked(r *request, vm pool.VM, id string) *Lease {
	l := m.newLease(r, vm, id)
	m.leasesLocked().add(l)
	return l
}

// newLease makes r's lease of vm, not yet known to m, and starts its
// timers. It takes no lock: a request served at once makes its lease and
// publishes it without m.mu (leases.go).
func (m *Manager) newLease(r *request, vm pool.VM, id string) *Lease {
	now := time.Now()
	l := &Lease{
		ID: id, Kiosk: r.kiosk, Addr: r.addr, Legacy: r.legacy, VM: vm, touched: r.touched,
		Offered: now, Expires: now.Add(m.cfg.ConnectWindow),
		conns: map[int]func(){}, channels: map[string]int{}, linkedCh: make(chan struct{}), endedCh: make(chan struct{}),
		timers: map[string]*time.Timer{}, notifyEnd: r.onEnd,
	}
	if !l.Legacy {
		l.ticket = spice.NewPassword()
	}
	connect, max := m.unarmedTimer(l, m.reasons.connect), (*time.Timer)(nil)
	l.timers["connect"] = connect
	if m.cfg.MaxSession > 0 {
		max = m.unarmedTimer(l, m.reasons.max)
		l.timers["max"] = max
	}
	// Armed once l is whole: a timer that fires reads it.
	connect.Reset(m.cfg.ConnectWindow)
	if max != nil {
		max.Reset(m.cfg.MaxSession)
	}
	return l
}

// unarmedTimer returns a stopped timer that ends l's session with reason
// when it fires, once armed (Reset).
func (m *Manager) unarmedTimer(l *Lease, reason string) *time.Timer {
	t := time.AfterFunc(time.Hour, func() { m.end(l, reason) })
	t.Stop()
	return t
}

// timerLocked (re)starts the lease's timer named name, ending the session
// with reason when it fires.
func (m *Manager) timerLocked(l *Lease, name string, d time.Duration, reason string) {
	if t := l.timers[name]; t != nil {
		t.Stop()
	}
	l.timers[name] = time.AfterFunc(d, func() { m.end(l, reason) })
}

func (m *Manager) stopTimerLocked(l *Lease, name string) {
	if t := l.timers[name]; t != nil {
		t.Stop()
		delete(l.timers, name)
	}
}

// end ends a session. Every way a session ends comes here, once.
func (m *Manager) end(l *Lease, reason string) { m.endWith(l, reason, nil) }

// endWith ends a session; wiped, if not nil, is the pool's word that the
// VM is already gone. The audit line is written before the kiosk or the
// viewer can see the session end, whenever it is complete by then: an
// unused session's always, a used one's when its VM is wiped already;
// otherwise once the pool says the VM is wiped.
func (m *Manager) endWith(l *Lease, reason string, wiped *pool.Ended) {
	m.mu.Lock()
	if l.ended {
		m.mu.Unlock()
		return
	}
	l.ended, l.reason = true, reason
	for _, t := range l.timers {
		t.Stop()
	}
	m.leasesLocked().remove(l)
	closers := make([]func(), 0, len(l.conns))
	for _, c := range l.conns {
		closers = append(closers, c)
	}
	notify, used := l.notifyEnd, !l.linked.IsZero()
	rec := l.record(reason)
	if f := m.cfg.Blocked; f != nil {
		rec.Blocked, rec.BlockedNames = f(l.VM.Name)
	}
	if used && wiped == nil {
		m.pending[l.VM.Name] = rec
	}
	close(l.endedCh)
	m.mu.Unlock()

	m.log.Info("session ended", "lease", l.ID, "kiosk", l.Kiosk, "vm", l.VM.Name, "reason", reason, "used", used)
	if f := m.cfg.Metrics.Ended; f != nil {
		f(used, Cause(reason))
	}
	switch {
	case wiped != nil:
		rec.Wiped, rec.WipedAt = wiped.Wiped, timePtr(wiped.At)
		m.audit.Write(rec)
	case !used:
		m.audit.Write(rec)
	}
	if notify != nil {
		notify(reason)
	}
	for _, c := range closers {
		c()
	}
	if wiped == nil {
		// Used, the VM is destroyed, and VMEnded writes the audit record
		// once its disk is gone. Never linked, it is still pristine and
		// goes back ("one use", docs/design.md).
		m.pool.Finish(l.VM.Name, used, reason)
	}
	m.wake()
}

// VMEnded hears from the pool that a VM is gone: a session whose guest
// stopped ends, and a used VM's audit record is completed. A VM a broker
// restart ended gets the audit line its interrupted session never had.
func (m *Manager) VMEnded(e pool.Ended) {
	m.mu.Lock()
	l := m.leasesLocked().byVM[e.VM]
	m.mu.Unlock()
	if l != nil {
		m.endWith(l, e.Reason, &e)
	}
	m.mu.Lock()
	rec := m.pending[e.VM]
	delete(m.pending, e.VM)
	m.mu.Unlock()
	switch {
	case rec != nil:
		rec.Wiped = e.Wiped
		rec.WipedAt = timePtr(e.At)
		m.audit.Write(rec)
	case e.Restart && e.Claim.Lease != "":
		m.audit.Write(restartRecord(e))
	}
	m.wake()
}

// Audit is where the manager records sessions and refusals.
func (m *Manager) Audit() *Audit { return m.audit }

// EndVM ends the session on a VM, for an admin. It reports whether there was one.
func (m *Manager) EndVM(vm, reason string) bool {
	m.mu.Lock()
	l := m.leasesLocked().byVM[vm]
	m.mu.Unlock()
	if l == nil {
		return false
	}
	m.end(l, reason)
	return true
}

// EndLease ends a session by its lease ID, for an admin. It reports whether
// there was one.
func (m *Manager) EndLease(id, reason string) bool {
	m.mu.Lock()
	l := m.leasesLocked().byID[id]
	m.mu.Unlock()
	if l == nil {
		return false
	}
	m.end(l, reason)
	return true
}

// Drain stops new sessions, for why (closing time, maintenance): requests
// are refused with it, and kiosks still waiting are told and go back to
// their slideshow, which says notice (if not "") until Resume. Running
// sessions go on until they end.
func (m *Manager) Drain(why, notice string) {
	m.mu.Lock()
	m.closed, m.notice = why, notice
	waiting := m.queue
	m.queue = nil
	m.waiting.Store(0)
	m.regateLocked()
	m.mu.Unlock()
	for _, r := range waiting {
		if r.onEnd != nil {
			r.onEnd("no new sessions: " + why)
		}
	}
	if notice != "" {
		m.Broadcast(kioskproto.Command{Action: kioskproto.CmdClosed, Text: kioskproto.Clip(notice)})
	}
	m.log.Info("draining: no new sessions; running ones go on", "reason", why, "waiting_sent_away", len(waiting))
}

// Resume serves new sessions again after Drain.
func (m *Manager) Resume() {
	m.mu.Lock()
	was, notice := m.closed, m.notice
	m.closed, m.notice = "", ""
	m.regateLocked()
	m.mu.Unlock()
	if notice != "" {
		m.Broadcast(kioskproto.Command{Action: kioskproto.CmdClosed})
	}
	if was != "" {
		m.log.Info("serving new sessions again", "was", was)
	}
	m.wake()
}

// Closed says why no new session starts, "" while serving.
func (m *Manager) Closed() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Lookup returns the VM a SPICE client at addr would reach, before its ticket
// is read: the gateway needs the VM's capabilities for its reply. An address
// with no live lease gets ErrNoLease, and its link never reaches a VM.
func (m *Manager) Lookup(addr netip.Addr) (pool.VM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.leasesLocked().byID {
		if l.Addr == addr {
			return l.VM, nil
		}
	}
	return pool.VM{}, ErrNoLease
}

// MaxChannels is the most SPICE channels one session may have open at once.
// remote-viewer opens main, display, inputs, cursor and one usbredir per
// redirected USB port (six with the tiny golden's two), and playback and
// record with audio: 16 leaves room for a golden with more.
const MaxChannels = 16

// Attach admits a SPICE channel connection from addr with ticket: channel
// names it ("display:0"), main says whether it is the session's main
// channel, secure whether it came over TLS (only a legacy kiosk's may not,
// where the site has TLS), hangUp closes it when the session ends. It returns the VM to
// reach, input to call on the visitor's input, and detach to call when the
// connection closes. Each channel is open once (linking it again replaces
// the old connection), the session has at most MaxChannels. On a lease's first link it records the VM as used
// (in libvirt) before returning, and any other channel waits for that:
// only then may the client's bytes reach the VM.
func (m *Manager) Attach(ctx context.Context, addr netip.Addr, ticket, channel string, main, secure bool, hangUp func()) (vm pool.VM, input, detach func(), err error) {
	m.mu.Lock()
	var l *Lease
	for _, cand := range m.leasesLocked().byID {
		if cand.Addr == addr && ticketMatches(cand, ticket) {
			l = cand
			break
		}
	}
	switch {
	case l == nil:
		m.mu.Unlock()
		if _, err := m.Lookup(addr); err != nil {
			return pool.VM{}, nil, nil, ErrNoLease
		}
		return pool.VM{}, nil, nil, ErrBadTicket
	case !secure && !l.Legacy && m.cfg.GatewayTLSPort != 0:
		m.mu.Unlock()
		return pool.VM{}, nil, nil, ErrPlaintext
	case l.linked.IsZero() && time.Now().After(l.Expires):
		m.mu.Unlock()
		return pool.VM{}, nil, nil, ErrExpired
	case main && (l.mainOpen || !l.linked.IsZero()):
		// One main channel per lease, ever: nobody takes over a session.
		m.mu.Unlock()
		return pool.VM{}, nil, nil, ErrTakeover
	case !main && !l.mainOpen:
		m.mu.Unlock()
		return pool.VM{}, nil, nil, ErrNoMain
	case l.channels[channel] == 0 && len(l.channels) >= MaxChannels:
		m.mu.Unlock()
		return pool.VM{}, nil, nil, ErrChannels
	}
	first := l.linked.IsZero()
	if first {
		l.linked = time.Now()
		m.stopTimerLocked(l, "connect")
	}
	if main {
		l.mainOpen = true
	}
	// A channel is open once: a viewer that links it again (after a
	// network blip) replaces its old connection, which is hung up.
	var replaced func()
	if old := l.channels[channel]; old != 0 {
		replaced = l.conns[old]
		delete(l.conns, old)
	}
	l.nextConn++
	id := l.nextConn
	l.conns[id] = hangUp
	l.channels[channel] = id
	m.stopTimerLocked(l, "grace")
	m.mu.Unlock()
	if replaced != nil {
		replaced()
	}
	detach = func() { m.detach(l, id, channel) }

	if first {
		if err := m.pool.MarkUsed(ctx, l.VM.Name); err != nil {
			m.end(l, "could not record the VM as used: "+err.Error())
			detach()
			return pool.VM{}, nil, nil, err
		}
		close(l.linkedCh)
		m.log.Info("session linked", "lease", l.ID, "kiosk", l.Kiosk, "vm", l.VM.Name)
		if f := m.cfg.Metrics.TouchToLink; f != nil && !l.touched.IsZero() {
			f(l.linked.Sub(l.touched), l.Legacy)
		}
		if l.Legacy {
			m.activity(l) // starts the idle clock
		}
	} else {
		select {
		case <-l.linkedCh:
		case <-l.endedCh:
			detach()
			return pool.VM{}, nil, nil, ErrNoLease
		case <-ctx.Done():
			detach()
			return pool.VM{}, nil, nil, ctx.Err()
		}
	}
	return l.VM, func() { m.activity(l) }, detach, nil
}

// detach records that an admitted connection closed. When the last one has
// been closed for the grace period, the session ends.
func (m *Manager) detach(l *Lease, id int, channel string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(l.conns, id)
	if l.channels[channel] == id {
		delete(l.channels, channel)
	}
	if len(l.conns) == 0 && !l.ended {
		l.mainOpen = false
		m.timerLocked(l, "grace", m.cfg.Grace, "the viewer disconnected")
	}
}

// activity records input from the visitor (SPICE inputs channel). Legacy
// kiosks send no heartbeats, so this is their idle clock.
func (m *Manager) activity(l *Lease) {
	if !l.Legacy {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !l.ended {
		m.timerLocked(l, "idle", m.cfg.IdleLimit, fmt.Sprintf("idle for %v", m.cfg.IdleLimit))
	}
}

// heartbeat records a kiosk's heartbeat; the broker enforces the idle limit
// from the idle time the kiosk reports.
func (m *Manager) heartbeat(l *Lease, idle time.Duration) {
	if l != nil && idle >= m.cfg.IdleLimit {
		m.end(l, fmt.Sprintf("idle for %v", idle.Round(time.Second)))
	}
}

func ticketMatches(l *Lease, ticket string) bool {
	if l.Legacy {
		// The original remote.sh connects without a password: a legacy
		// lease is bound to its kiosk's address, and takes no ticket.
		return ticket == ""
	}
	return subtle.ConstantTimeCompare([]byte(l.ticket), []byte(ticket)) == 1
}

// Leases returns a snapshot of the live leases, for status.
func (m *Manager) Leases() []LeaseStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []LeaseStatus
	for _, l := range m.leasesLocked().byID {
		s := LeaseStatus{ID: l.ID, Kiosk: l.Kiosk, Addr: l.Addr.String(), VM: l.VM.Name, Legacy: l.Legacy,
			Offered: l.Offered, Connections: len(l.conns)}
		if !l.linked.IsZero() {
			s.Linked = timePtr(l.linked)
		}
		out = append(out, s)
	}
	return out
}

// Kiosks returns a snapshot of the connected kiosks, for status.
func (m *Manager) Kiosks() []KioskStatus {
	m.mu.Lock()
	conns := make([]*kioskConn, 0, len(m.conns))
	for _, k := range m.conns {
		conns = append(conns, k)
	}
	m.mu.Unlock()
	out := make([]KioskStatus, 0, len(conns))
	for _, k := range conns {
		out = append(out, k.status())
	}
	slices.SortFunc(out, func(a, b KioskStatus) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Fleet is every kiosk the broker knows: those connected, those seen since
// the broker started and gone (offline, with when they were last heard),
// and those configured by id and never seen (offline). Group members are
// known once seen.
func (m *Manager) Fleet() []KioskStatus {
	online := m.Kiosks()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := online
	seen := map[string]bool{}
	for _, s := range online {
		seen[s.ID] = true
	}
	for id, s := range m.offline {
		if !seen[id] {
			out = append(out, s)
			seen[id] = true
		}
	}
	for _, id := range m.registry.IDs() {
		if !seen[id] {
			out = append(out, KioskStatus{ID: id})
		}
	}
	var current []string
	if m.cfg.CurrentImages != nil {
		current = m.cfg.CurrentImages()
	}
	for i := range out {
		out[i].Disabled = m.disabled[out[i].ID]
		out[i].OldImage = len(current) > 0 && out[i].Image != "" && !slices.Contains(current, out[i].Image)
	}
	slices.SortFunc(out, func(a, b KioskStatus) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// KioskStatus is one connected kiosk in the broker's status.
type KioskStatus struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Connected time.Time `json:"connected"`
	Session   bool      `json:"session,omitempty"` // a request or a session is open
	// Fault is why the kiosk says it is out of order: a logout it could
	// not complete. It serves nobody until it says it is in order again.
	Fault      string     `json:"fault,omitempty"`
	FaultSince *time.Time `json:"fault_since,omitempty"`
	// What the kiosk says of itself (its hello and latest heartbeat).
	Online        bool      `json:"online"`
	LastSeen      time.Time `json:"last_seen,omitzero"` // its latest message
	Software      string    `json:"software,omitempty"`
	Screen        string    `json:"screen,omitempty"`
	State         string    `json:"state,omitempty"`
	UptimeSeconds int       `json:"uptime_seconds,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	Image         string    `json:"image,omitempty"`    // the kiosk image's version
	Commands      bool      `json:"commands,omitempty"` // it takes operators' commands
	// Disabled is why an operator put the kiosk out of order.
	Disabled string `json:"disabled,omitempty"`
	// OldImage: the kiosk runs an image the site no longer serves.
	OldImage bool `json:"old_image,omitempty"`
}

// LeaseStatus is one lease in the broker's status; it carries no ticket.
type LeaseStatus struct {
	ID          string     `json:"id"`
	Kiosk       string     `json:"kiosk"`
	Addr        string     `json:"addr"`
	VM          string     `json:"vm"`
	Legacy      bool       `json:"legacy,omitempty"`
	Offered     time.Time  `json:"offered"`
	Linked      *time.Time `json:"linked,omitempty"`
	Connections int        `json:"connections"`
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func timePtr(t time.Time) *time.Time { return &t }
