package session

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"undervdi/server/pool"
)

// Audit writes one JSON line per session and per refused connection. It
// never writes a ticket, token or password. A flood of refusals is
// summarised: the first refusal of a kind (what, address, reason) is
// written at once, and the ones that follow within refusalWindow become one
// line with their count. The file is rotated, so a flood cannot fill the
// disk that holds the overlays.
type Audit struct {
	// OnRefused, if set before the broker serves, hears every refusal by
	// what was refused ("kiosk", "legacy", "spice-link", "ads"), for the
	// metrics; the audit file summarises floods, this counts each one.
	OnRefused func(what string)

	mu       sync.Mutex
	w        io.Writer
	log      *slog.Logger
	refusals map[refusalKey]*refusalCount
	window   time.Duration // refusalWindow; tests shorten it
}

type refusalKey struct{ what, addr, reason string }

type refusalCount struct {
	since  time.Time
	n      int // after the first, not yet written
	kiosk  string
	closer *time.Timer
}

// refusalWindow is how long refusals of one kind are counted before the
// count is written.
const refusalWindow = time.Minute

// OpenAudit appends to the file at path, rotated once it holds maxSize
// bytes, keeping keep old files (compressed); "" keeps records in the log
// only.
func OpenAudit(path string, maxSize uint64, keep int, log *slog.Logger) (*Audit, error) {
	a := NewAudit(nil, log)
	if path == "" {
		return a, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	// Fail at start, not at the first session, if the file cannot be written.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f.Close()
	a.w = &lumberjack.Logger{Filename: path, MaxSize: int(max(maxSize>>20, 1)), MaxBackups: keep, Compress: true}
	return a, nil
}

// NewAudit writes to w; nil keeps records in the log only.
func NewAudit(w io.Writer, log *slog.Logger) *Audit {
	return &Audit{w: w, log: log, refusals: map[refusalKey]*refusalCount{}, window: refusalWindow}
}

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time    time.Time  `json:"time"`
	Event   string     `json:"event"` // "session", "refused", "replaced", "out-of-order", "in-order", "login" or "admin"
	What    string     `json:"what,omitempty"`
	User    string     `json:"user,omitempty"` // who logged in, or acted (admin)
	Lease   string     `json:"lease,omitempty"`
	Kiosk   string     `json:"kiosk,omitempty"`
	Addr    string     `json:"addr,omitempty"`
	Legacy  bool       `json:"legacy,omitempty"`
	VM      string     `json:"vm,omitempty"`
	Offered *time.Time `json:"offered,omitempty"`
	Linked  *time.Time `json:"linked,omitempty"`
	Ended   *time.Time `json:"ended,omitempty"`
	Reason  string     `json:"reason"`
	Count   int        `json:"count,omitempty"` // refusals of this kind after the first, since Since
	Since   *time.Time `json:"since,omitempty"`
	Wiped   bool       `json:"wiped"`
	WipedAt *time.Time `json:"wiped_at,omitempty"`
	// Blocked counts what the session's VM tried to reach and the guest
	// network refused; BlockedNames are the names most refused (never
	// URLs or content).
	Blocked      int           `json:"blocked,omitempty"`
	BlockedNames []BlockedName `json:"blocked_names,omitempty"`
}

// BlockedName is a name the guest network refused, and how often.
type BlockedName struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// record describes l's session as it ends.
func (l *Lease) record(reason string) *AuditRecord {
	now := time.Now()
	r := &AuditRecord{Event: "session", Lease: l.ID, Kiosk: l.Kiosk, Addr: l.Addr.String(), Legacy: l.Legacy,
		VM: l.VM.Name, Offered: timePtr(l.Offered), Ended: &now, Reason: reason}
	if !l.linked.IsZero() {
		r.Linked = timePtr(l.linked)
	}
	return r
}

// restartRecord is the audit line of a session a broker restart ended,
// from what the VM's metadata kept of it.
func restartRecord(e pool.Ended) *AuditRecord {
	r := &AuditRecord{Event: "session", Lease: e.Claim.Lease, Kiosk: e.Claim.Kiosk, Addr: e.Claim.Addr, VM: e.VM,
		Ended: timePtr(e.At), Reason: e.Reason, Wiped: e.Wiped, WipedAt: timePtr(e.At)}
	if !e.Claim.At.IsZero() {
		r.Offered = timePtr(e.Claim.At)
	}
	if !e.Linked.IsZero() {
		r.Linked = timePtr(e.Linked)
	}
	return r
}

// Write appends a record.
func (a *Audit) Write(r *AuditRecord) {
	r.Time = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		a.log.Error("audit record", "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.w == nil {
		a.log.Info("audit", "record", string(b))
		return
	}
	if _, err := a.w.Write(append(b, '\n')); err != nil {
		a.log.Error("cannot write the audit log", "err", err, "record", string(b))
	}
}

// Replaced records a kiosk connection that replaced a silent one.
func (a *Audit) Replaced(what, addr, kiosk, reason string) {
	a.log.Warn("replaced", "what", what, "addr", addr, "kiosk", kiosk, "reason", reason)
	a.Write(&AuditRecord{Event: "replaced", What: what, Addr: addr, Kiosk: kiosk, Reason: reason})
}

// Login records an operator's login.
func (a *Audit) Login(user, addr, detail string) {
	a.log.Info("login", "user", user, "addr", addr, "detail", detail)
	a.Write(&AuditRecord{Event: "login", What: "api", User: user, Addr: addr, Reason: detail})
}

// Admin records what an operator did through the API (what: "end",
// "drain", "publish", ...), and to what.
func (a *Audit) Admin(user, addr, what, kiosk, vm, detail string) {
	a.log.Info("operator action", "user", user, "addr", addr, "action", what, "kiosk", kiosk, "vm", vm, "detail", detail)
	a.Write(&AuditRecord{Event: "admin", What: what, User: user, Addr: addr, Kiosk: kiosk, VM: vm, Reason: detail})
}

// Fault records a kiosk reporting itself out of order (why), or back in
// order (fault "").
func (a *Audit) Fault(addr, kiosk, fault string) {
	if fault == "" {
		a.log.Info("kiosk back in order", "kiosk", kiosk, "addr", addr)
		a.Write(&AuditRecord{Event: "in-order", What: "kiosk", Addr: addr, Kiosk: kiosk, Reason: "the kiosk completed its logout"})
		return
	}
	a.log.Error("kiosk out of order: it could not wipe a visitor's session; see the kiosk's console", "kiosk", kiosk, "addr", addr, "fault", fault)
	a.Write(&AuditRecord{Event: "out-of-order", What: "kiosk", Addr: addr, Kiosk: kiosk, Reason: fault})
}

// Refused records a refused connection: what was refused (kiosk, legacy,
// spice-link, ads), from where, and why. Refusals of a kind that follow
// within a minute are counted, and written as one line when the minute is
// over.
func (a *Audit) Refused(what, addr, kiosk, reason string) {
	if a.OnRefused != nil {
		a.OnRefused(what)
	}
	k := refusalKey{what, addr, reason}
	a.mu.Lock()
	if c := a.refusals[k]; c != nil {
		c.n++
		a.mu.Unlock()
		a.log.Debug("refused again", "what", what, "addr", addr, "kiosk", kiosk, "reason", reason)
		return
	}
	c := &refusalCount{since: time.Now(), kiosk: kiosk}
	a.refusals[k] = c
	c.closer = time.AfterFunc(a.window, func() { a.closeRefusals(k) })
	a.mu.Unlock()
	a.log.Warn("refused", "what", what, "addr", addr, "kiosk", kiosk, "reason", reason)
	a.Write(&AuditRecord{Event: "refused", What: what, Addr: addr, Kiosk: kiosk, Reason: reason})
}

// closeRefusals ends a kind's minute: the refusals counted in it are
// written as one line.
func (a *Audit) closeRefusals(k refusalKey) {
	a.mu.Lock()
	c := a.refusals[k]
	delete(a.refusals, k)
	a.mu.Unlock()
	if c == nil || c.n == 0 {
		return
	}
	a.log.Warn("refused, again and again", "what", k.what, "addr", k.addr, "count", c.n, "since", c.since, "reason", k.reason)
	a.Write(&AuditRecord{Event: "refused", What: k.what, Addr: k.addr, Kiosk: c.kiosk, Count: c.n,
		Since: timePtr(c.since), Reason: k.reason})
}
