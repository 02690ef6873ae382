package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/accept"
)

// helloTimeout bounds how long a new connection may take to say hello.
const helloTimeout = 10 * time.Second

// beatFrame is the broker's heartbeat, the same for every kiosk, framed
// once.
var beatFrame = func() []byte {
	var b bytes.Buffer
	if err := kioskproto.WriteMessage(&b, kioskproto.NewHeartbeat(0, "")); err != nil {
		panic(err)
	}
	return b.Bytes()
}()

// beat answers a kiosk's heartbeat with the broker's: the kiosk hears that
// its messages are read as often as it beats, and a thousand kiosks cost
// the broker no timers of their own. It is written at once, from the
// reading goroutine, unless something else is being written to the kiosk;
// then it may be dropped, as the kiosk is hearing from the broker anyway.
func (k *kioskConn) beat() { k.sendNow(outMsg{frame: beatFrame}, true) }

// writeTimeout bounds one write to a kiosk; a kiosk that does not read is lost.
const writeTimeout = 10 * time.Second

// kioskConn is one kiosk's protocol connection. A lease lives with it: when
// the connection is lost or its heartbeats stop, the session ends.
type kioskConn struct {
	m     *Manager
	c     net.Conn
	r     *kioskReader
	id    string
	addr  netip.Addr
	group Group        // the registry entry that admitted it
	host  string       // the offer's gateway host
	since time.Time    // when it said hello
	last  atomic.Int64 // when a message last came, unix nanoseconds
	// idleBeats: the kiosk heartbeats at cfg.IdleHeartbeat while it has no
	// request and no session (its hello said so). slow is whether it is at
	// that rate now, for admitConn, which may not take k.mu.
	idleBeats bool
	slow      atomic.Bool
	closed    chan struct{}
	once      sync.Once

	// The messages waiting to be written, in order. There is no writer
	// goroutine per kiosk: whoever finds nothing being written writes
	// (writing) — the connection's reader once it has handled a message
	// (handling) or inline (sendNow), anyone else from a goroutine started
	// for it (post).
	wmu       sync.Mutex
	queue     []outMsg
	writing   bool
	inHandler bool // the reader is handling a message: it writes once done
	broken    bool // a write failed: nothing more is written

	software string // what its hello said
	image    string
	commands bool // it takes operators' commands

	mu         sync.Mutex
	req        *request             // the current request or session, if any
	armed      time.Duration        // the read deadline's length, set by armLocked
	fault      string               // why the kiosk says it is out of order; "": in order
	faultSince time.Time            // when it first said so
	report     kioskproto.Heartbeat // its latest heartbeat: state, uptime, last error
	shots      map[string]*shot     // screenshots asked of it, by id
}

// KioskPort is the kiosk protocol's port: at most max_conns_per_addr
// connections from one address; more are refused, and audited.
func (m *Manager) KioskPort() accept.Port {
	return accept.Port{Handle: m.ServeKiosk, MaxPerAddr: m.cfg.MaxConnsPerAddr, Name: "kiosk", Log: m.log, Refuse: func(c net.Conn, open int) {
		addr := accept.RemoteAddr(c)
		m.audit.Refused("kiosk", addr.String(), "", fmt.Sprintf("%d connections from this address are open already", open))
		kioskproto.WriteMessage(c, kioskproto.NewError(kioskproto.CodeBusy, "too many connections from this address"))
	}}
}

// ServeKiosk runs the kiosk protocol on c until the connection ends.
func (m *Manager) ServeKiosk(ctx context.Context, c net.Conn) {
	defer c.Close()
	// The handshake, the hello and the welcome are deep work: done on a
	// stack of their own, as every message after them (kioskread.go).
	k := onDeepStack(func() *kioskConn { return m.admit(c) })
	if k == nil {
		return
	}
	defer m.dropConn(k)
	defer context.AfterFunc(ctx, k.close)() // a stopping broker hangs up
	reason := k.readLoop()
	k.close()
	k.mu.Lock()
	req := k.req
	k.mu.Unlock()
	if req != nil {
		m.cancel(req, reason)
	}
}

// admit reads c's hello and, if the kiosk is known there and may connect,
// makes it the kiosk's connection and welcomes it; nil: c is refused, and
// told why.
func (m *Manager) admit(c net.Conn) *kioskConn {
	addr := accept.RemoteAddr(c)
	c.SetDeadline(time.Now().Add(helloTimeout))
	r := newKioskReader(c)
	msg, err := kioskproto.ReadMessage(r)
	if err != nil || msg.Type != kioskproto.THello {
		reason := "the first message must be hello"
		if err != nil {
			reason = err.Error()
		}
		kioskproto.WriteMessage(c, kioskproto.NewError(kioskproto.CodeBadMessage, reason))
		m.audit.Refused("kiosk", addr.String(), "", reason)
		return nil
	}
	h := msg.Hello
	if h.Version != kioskproto.Version {
		reason := fmt.Sprintf("protocol version %d is not spoken here (this broker speaks %d)", h.Version, kioskproto.Version)
		kioskproto.WriteMessage(c, kioskproto.NewError(kioskproto.CodeBadVersion, reason))
		m.audit.Refused("kiosk", addr.String(), h.Kiosk, reason)
		return nil
	}
	group, err := m.registry.Authenticate(h.Kiosk, h.Token, addr)
	if err != nil {
		// The audit says what was wrong; the kiosk is not told whether the
		// id exists or which addresses it may use.
		m.audit.Refused("kiosk", addr.String(), h.Kiosk, err.Error())
		kioskproto.WriteMessage(c, kioskproto.NewError(kioskproto.CodeUnknown, RefusedHello))
		return nil
	}
	host := m.cfg.PublicHost
	if host == "" {
		host = accept.LocalAddr(c).String()
	}
	welcome := kioskproto.NewWelcome(m.cfg.Heartbeat, m.cfg.IdleLimit, "vdi-broker", m.cfg.Viewer).WithSpiceSubject(m.cfg.SpiceSubject)
	idleBeats := h.IdleBeats && m.cfg.IdleHeartbeat > m.cfg.Heartbeat
	if idleBeats {
		welcome.WithIdleHeartbeat(m.cfg.IdleHeartbeat)
	}
	k := &kioskConn{m: m, c: c, r: r, id: h.Kiosk, addr: addr, host: host, group: group, since: time.Now(),
		software: h.Software, image: h.Image, commands: h.Commands, closed: make(chan struct{}), idleBeats: idleBeats,
		// The welcome is first: anything sent to the kiosk once it is
		// admitted (a command, a broadcast) queues behind it.
		queue: []outMsg{{msg: welcome}}, writing: true}
	k.slow.Store(idleBeats)
	k.heard()
	if err := m.admitConn(k); err != nil {
		m.audit.Refused("kiosk", addr.String(), h.Kiosk, err.Error())
		kioskproto.WriteMessage(c, kioskproto.NewError(kioskproto.CodeBusy, err.Error()))
		return nil
	}
	m.log.Debug("kiosk connected", "kiosk", k.id, "addr", addr, "software", h.Software)
	k.flush() // the welcome, and whatever queued behind it
	m.greet(k)
	return k
}

// readLoop handles the kiosk's messages and returns why the connection
// ended. Between messages it waits on the socket; each time bytes come, the
// messages there are read and handled on a goroutine of their own
// (kioskread.go).
func (k *kioskConn) readLoop() string {
	k.arm()
	if k.r.wait == nil {
		for {
			if reason := k.readOne(); reason != "" {
				return reason
			}
			k.arm()
		}
	}
	// What came with the hello (a heartbeat sent right after it) is
	// read before any wait.
	pending := onDeepStack(k.r.pending)
	k.arm()
	reason := make(chan string, 1)
	readSome := func() { reason <- k.readSome() } // made once: a message costs no allocation here
	for {
		if !pending {
			if err := k.r.wait(); err != nil {
				return k.lost(err)
			}
		}
		deepWork.run(readSome)
		if r := <-reason; r != "" {
			return r
		}
		pending = false
	}
}

// readSome reads and handles messages until none is pending, and returns
// why the connection ended, if it did. It leaves the read deadline set for
// the next message.
func (k *kioskConn) readSome() string {
	for {
		if reason := k.readOne(); reason != "" {
			return reason
		}
		pending := k.r.pending()
		k.arm() // for the next message, as it stands after this one; pending moved it
		if !pending {
			return ""
		}
	}
}

// arm sets the read deadline for the kiosk's next message.
func (k *kioskConn) arm() {
	k.mu.Lock()
	k.armLocked()
	k.mu.Unlock()
}

// lost says why the connection ended, from the error that ended a read.
func (k *kioskConn) lost(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		k.mu.Lock()
		armed := k.armed
		k.mu.Unlock()
		return fmt.Sprintf("kiosk heartbeats stopped (nothing for %v)", armed)
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err):
		return "kiosk connection lost"
	}
	k.sendNow(outMsg{msg: kioskproto.NewError(kioskproto.CodeBadMessage, err.Error())}, false)
	return "kiosk sent a bad message: " + err.Error()
}

// readOne reads one message and handles it; it returns why the connection
// ended, if it did.
func (k *kioskConn) readOne() string {
	msg, err := kioskproto.ReadMessage(k.r)
	if err != nil {
		return k.lost(err)
	}
	k.heard()
	k.handling(true)
	defer k.handling(false)
	switch msg.Type {
	case kioskproto.TRequest:
		if err := k.request(time.Now(), time.Duration(msg.Request.TouchAgoMS)*time.Millisecond); err != nil {
			k.sendNow(outMsg{msg: err}, false)
		}
	case kioskproto.THeartbeat:
		k.beat()
		k.setFault(msg.Heartbeat.Fault)
		k.mu.Lock()
		r := k.req
		k.report = *msg.Heartbeat
		k.mu.Unlock()
		if r != nil {
			k.m.heartbeat(k.m.leaseOf(r), time.Duration(msg.Heartbeat.IdleSeconds)*time.Second)
		}
	case kioskproto.TScreenshot:
		k.gotShot(msg.Screenshot)
	case kioskproto.TEnd:
		k.mu.Lock()
		r := k.req
		k.req = nil
		k.mu.Unlock()
		if r != nil {
			k.m.cancel(r, "the kiosk ended the session: "+msg.End.Reason)
		}
	default:
		k.sendNow(outMsg{msg: kioskproto.NewError(kioskproto.CodeBadMessage, fmt.Sprintf("a kiosk does not send %s messages", msg.Type))}, false)
		return "kiosk sent a " + string(msg.Type) + " message"
	}
	return ""
}

// armLocked sets the read deadline: the heartbeat timeout, or for a kiosk
// with no request or session that beats at the idle rate, the idle one.
// A closed connection keeps the deadline close set. k.mu is held.
func (k *kioskConn) armLocked() {
	slow := k.idleBeats && k.req == nil
	k.armed = k.m.cfg.HeartbeatTimeout
	if slow {
		k.armed = k.m.idleTimeout()
	}
	k.slow.Store(slow)
	k.c.SetReadDeadline(time.Now().Add(k.armed))
	select {
	case <-k.closed:
		k.c.SetReadDeadline(time.Now()) // close may have set its own before this one
	default:
	}
}

// request queues a session request. When nobody waits and a clean VM is
// there it is served at once, and the offer is written from here, the
// kiosk's reader, with no other goroutine in between; otherwise the answer
// comes as status and offer messages from the dispatcher.
func (k *kioskConn) request(received time.Time, touchAgo time.Duration) *kioskproto.Message {
	k.mu.Lock()
	if k.req != nil {
		k.mu.Unlock()
		return kioskproto.NewError(kioskproto.CodeBusy, "this kiosk already has a session or a request")
	}
	if k.fault != "" {
		// The kiosk said it could not wipe the last visitor's session:
		// nobody else sits down at it until it says otherwise.
		k.mu.Unlock()
		return kioskproto.NewError(kioskproto.CodeUnavailable, "this kiosk reported itself out of order")
	}
	r := &request{kiosk: k.id, addr: k.addr, touched: received.Add(-touchAgo)}
	r.onStatus = func(state string, ahead int, msg string) {
		k.trySend(kioskproto.NewStatus(state, ahead, msg))
	}
	r.onEnd = func(reason string) { k.endSession(r, reason) }
	r.onOffer = func(l *Lease) { k.post(k.offer(l, received), false) }
	l, err := k.m.enqueue(r)
	if err != nil {
		k.mu.Unlock()
		return kioskproto.NewError(kioskproto.CodeUnavailable, fmt.Sprintf("%v: try again in a minute", err))
	}
	k.req = r
	// The offer is queued before k.mu is let go: an end of the session,
	// which takes k.mu, is written after it.
	write := l != nil && k.queued(k.offer(l, received), false)
	k.mu.Unlock()
	if write {
		k.flush()
	}
	return nil
}

// offer is the offer of l, which counts the handoff once written.
func (k *kioskConn) offer(l *Lease, received time.Time) outMsg {
	return outMsg{msg: kioskproto.NewOffer(kioskproto.Offer{
		Lease: l.ID, Host: k.host, Port: k.m.cfg.GatewayPort, TLSPort: k.m.cfg.GatewayTLSPort, Ticket: l.ticket, Expires: l.Expires,
		Viewer: k.m.cfg.Viewer, MaxSeconds: int(k.m.cfg.MaxSession / time.Second),
	}), written: func() { k.m.handoff(time.Since(received), false) }}
}

// setFault records what the kiosk's heartbeat says about its own state: a
// kiosk that could not complete a logout says why, and the audit and the
// broker's status show it until it says it is in order again.
func (k *kioskConn) setFault(fault string) {
	k.mu.Lock()
	was := k.fault
	k.fault = fault
	switch {
	case was == "" && fault != "":
		k.faultSince = time.Now()
	case fault == "":
		k.faultSince = time.Time{}
	}
	k.mu.Unlock()
	switch {
	case fault != "" && fault != was:
		k.m.audit.Fault(k.addr.String(), k.id, fault)
	case fault == "" && was != "":
		k.m.audit.Fault(k.addr.String(), k.id, "")
	}
}

// endSession tells the kiosk its session is over and forgets it.
func (k *kioskConn) endSession(r *request, reason string) {
	k.mu.Lock()
	if k.req == r {
		k.req = nil
		k.armLocked() // the kiosk beats at the idle rate from the end on
	}
	k.mu.Unlock()
	k.send(kioskproto.NewEnd(reason))
}

func (m *Manager) leaseOf(r *request) *Lease { return r.lease.Load() }

// outMsg is a message waiting to be written (or frame, a message framed
// already), and what to do once it is.
type outMsg struct {
	msg     *kioskproto.Message
	frame   []byte
	written func()
}

// maxQueued bounds the messages that may be dropped (status, heartbeat)
// waiting behind a write that does not finish: a kiosk that does not read
// misses them. Messages that matter (offer, end, error, command) always
// queue; the write's deadline drops such a kiosk.
const maxQueued = 32

// send queues an important message (offer, end, error, command); if the
// kiosk does not take it in time, the connection is dropped, which ends
// the session.
func (k *kioskConn) send(msg *kioskproto.Message) { k.post(outMsg{msg: msg}, false) }

// trySend queues a message that may be dropped (status).
func (k *kioskConn) trySend(msg *kioskproto.Message) { k.post(outMsg{msg: msg}, true) }

// post queues o behind what is queued, and starts a goroutine to write it
// unless a write is under way, whose writer takes it too. It never blocks:
// the dispatcher and the session timers call it.
func (k *kioskConn) post(o outMsg, droppable bool) {
	if k.queued(o, droppable) {
		go k.flush()
	}
}

// sendNow is post for the connection's own reader: if nothing is being
// written, it writes o (and what is queued meanwhile) itself. A kiosk that
// does not read stalls only its own reader, until the write's deadline.
func (k *kioskConn) sendNow(o outMsg, droppable bool) {
	if k.queued(o, droppable) {
		k.flush()
	}
}

// queued adds o to the queue, and says whether the caller is to write it:
// nobody is writing now, nor is the reader handling a message (it writes
// what is queued once it has: the answers its handling brought, an end
// among them, without a goroutine each), and the caller is the writer from
// here on.
func (k *kioskConn) queued(o outMsg, droppable bool) (write bool) {
	k.wmu.Lock()
	defer k.wmu.Unlock()
	if k.broken || droppable && len(k.queue) >= maxQueued {
		return false
	}
	k.queue = append(k.queue, o)
	if k.writing || k.inHandler {
		return false
	}
	k.writing = true
	return true
}

// handling says that the reader starts (true) or has done (false)
// handling a message. Once done, it writes what was queued meanwhile,
// unless a writer is at it.
func (k *kioskConn) handling(start bool) {
	k.wmu.Lock()
	k.inHandler = start
	write := !start && !k.writing && !k.broken && len(k.queue) > 0
	k.writing = k.writing || write
	k.wmu.Unlock()
	if write {
		k.flush()
	}
}

// flush writes what is queued, in order, until nothing is; one flush runs
// at a time. Once the connection is closed, what is left (an end, an
// error) gets a short deadline.
func (k *kioskConn) flush() {
	for {
		k.wmu.Lock()
		if len(k.queue) == 0 || k.broken {
			k.queue, k.writing = nil, false
			k.wmu.Unlock()
			return
		}
		o := k.queue[0]
		k.queue[0] = outMsg{}
		k.queue = k.queue[1:]
		k.wmu.Unlock()
		timeout := writeTimeout
		select {
		case <-k.closed:
			timeout = time.Second
		default:
		}
		k.c.SetWriteDeadline(time.Now().Add(timeout))
		var err error
		if o.frame != nil {
			_, err = k.c.Write(o.frame)
		} else {
			err = kioskproto.WriteMessage(k.c, o.msg)
		}
		if err != nil {
			k.wmu.Lock()
			k.broken = true
			k.wmu.Unlock()
			k.close()
			continue
		}
		if o.written != nil {
			o.written()
		}
	}
}

func (k *kioskConn) close() {
	k.once.Do(func() {
		close(k.closed)
		k.c.SetReadDeadline(time.Now())
	})
}

// RefusedHello is all a refused kiosk is told: not whether its id exists,
// nor which addresses it may connect from.
const RefusedHello = "this broker does not know a kiosk with that id and token at that address"

// heard records that a message came from the kiosk.
func (k *kioskConn) heard() { k.last.Store(time.Now().UnixNano()) }

// silence is how long the kiosk has said nothing.
func (k *kioskConn) silence() time.Duration { return time.Since(time.Unix(0, k.last.Load())) }

// beatsEvery is how often the kiosk heartbeats now.
func (k *kioskConn) beatsEvery() time.Duration {
	if k.slow.Load() {
		return k.m.cfg.IdleHeartbeat
	}
	return k.m.cfg.Heartbeat
}

// admitConn makes k its kiosk's only connection. A kiosk id has one live
// connection at a time: a second hello is refused while the first one
// heartbeats, and replaces it once it has missed its heartbeats (a kiosk
// that rebooted reconnects before the broker hears its old connection is
// gone). A group admits at most its cap of kiosks at once.
func (m *Manager) admitConn(k *kioskConn) error {
	m.mu.Lock()
	old := m.conns[k.id]
	switch {
	case old != nil && old.silence() <= 2*old.beatsEvery():
		m.mu.Unlock()
		return fmt.Errorf("kiosk %q is connected already, from %s, and sends its heartbeats: refused", k.id, old.addr)
	case old == nil && k.group.Max > 0 && m.groups[k.group.ID] >= k.group.Max:
		m.mu.Unlock()
		return fmt.Errorf("the group %q has its %d kiosks connected: refused", k.group.ID, k.group.Max)
	}
	m.conns[k.id] = k
	if old == nil {
		m.groups[k.group.ID]++
	}
	m.mu.Unlock()
	if old != nil {
		m.audit.Replaced("kiosk", k.addr.String(), k.id, fmt.Sprintf("its connection from %s was silent for %v: replaced",
			old.addr, old.silence().Round(time.Second)))
		old.close()
	}
	return nil
}

// maxOffline bounds the kiosks the fleet remembers gone (a group's token
// could otherwise make it remember any number of ids).
const maxOffline = 4096

// rememberOffline keeps s in the fleet, offline, forgetting the kiosk
// heard from longest ago if there are too many; m.mu is held.
func (m *Manager) rememberOffline(s KioskStatus) {
	if _, ok := m.offline[s.ID]; !ok && len(m.offline) >= maxOffline {
		oldest := ""
		for id, o := range m.offline {
			if oldest == "" || o.LastSeen.Before(m.offline[oldest].LastSeen) {
				oldest = id
			}
		}
		delete(m.offline, oldest)
	}
	m.offline[s.ID] = s
}

// status is the kiosk as the fleet view shows it.
func (k *kioskConn) status() KioskStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := KioskStatus{ID: k.id, Addr: k.addr.String(), Connected: k.since, Fault: k.fault, Session: k.req != nil,
		Online: true, LastSeen: time.Unix(0, k.last.Load()), Software: k.software, Screen: k.report.Screen,
		State: k.report.State, UptimeSeconds: k.report.UptimeSeconds, LastError: k.report.LastError, Image: k.image,
		Commands: k.commands}
	if k.fault != "" {
		s.FaultSince = timePtr(k.faultSince)
	}
	return s
}

func (m *Manager) dropConn(k *kioskConn) {
	s := k.status()
	s.Online, s.Session = false, false
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conns[k.id] == k { // a newer connection may have replaced it
		delete(m.conns, k.id)
		m.rememberOffline(s)
		if m.groups[k.group.ID]--; m.groups[k.group.ID] <= 0 {
			delete(m.groups, k.group.ID)
		}
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}
