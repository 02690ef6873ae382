package kioskd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jezek/xgb/xproto"

	"undervdi/internal/testlog"
	"undervdi/kioskd/viewer"
	"undervdi/kioskproto"
)

// Fakes for the kiosk's logic; the real parts run in integration_test.go.

type fakeDisplay struct {
	mu      sync.Mutex
	text    string
	visible bool
	warn    string
	touches chan struct{}
}

func (d *fakeDisplay) SetText(s string)         { d.mu.Lock(); d.text = s; d.mu.Unlock() }
func (d *fakeDisplay) SetVisible(v bool)        { d.mu.Lock(); d.visible = v; d.mu.Unlock() }
func (d *fakeDisplay) Warn(s string)            { d.mu.Lock(); d.warn = s; d.mu.Unlock() }
func (d *fakeDisplay) Touches() <-chan struct{} { return d.touches }
func (d *fakeDisplay) get() (string, bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.text, d.visible, d.warn
}

type fakeScreen struct {
	mapped chan xproto.Window
	mu     sync.Mutex
	idle   time.Duration
}

func (s *fakeScreen) Mapped() <-chan xproto.Window { return s.mapped }
func (s *fakeScreen) Idle() (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle, nil
}
func (s *fakeScreen) setIdle(d time.Duration) { s.mu.Lock(); s.idle = d; s.mu.Unlock() }

type fakeBroker struct {
	events   chan<- Event
	ready    chan struct{}
	mu       sync.Mutex
	requests int
	touched  time.Time // the touch the latest request said it answers
	ends     []string
	faults   []string
	shots    []string // "id: refusal" or "id: N bytes"
}

func (b *fakeBroker) Screenshot(id string, jpeg []byte, refused string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if refused != "" {
		b.shots = append(b.shots, id+": "+refused)
		return
	}
	b.shots = append(b.shots, fmt.Sprintf("%s: %d bytes", id, len(jpeg)))
}

func (b *fakeBroker) lastShot() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.shots) == 0 {
		return ""
	}
	return b.shots[len(b.shots)-1]
}

func (b *fakeBroker) Run(ctx context.Context, events chan<- Event) {
	b.events = events
	close(b.ready)
	events <- BrokerUp{}
}
func (b *fakeBroker) Request(touched time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.touched = touched
	b.requests++
	return nil
}
func (b *fakeBroker) End(reason string) {
	b.mu.Lock()
	b.ends = append(b.ends, reason)
	b.mu.Unlock()
}
func (b *fakeBroker) Fault(reason string) {
	b.mu.Lock()
	b.faults = append(b.faults, reason)
	b.mu.Unlock()
}
func (b *fakeBroker) faultsTold() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.faults...)
}
func (b *fakeBroker) endReasons() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.ends, "; ")
}

// fakeSession runs a stand-in viewer (a shell sleeping) so that kills and
// exits are real.
type fakeSession struct {
	t       *testing.T
	bin     string
	mu      sync.Mutex
	logouts int
	fail    int // the next fail logouts fail; -1: all do
	viewers []*viewer.Viewer
}

func (s *fakeSession) Prepare(kioskproto.Viewer) {}

func (s *fakeSession) Start(o kioskproto.Offer, sec *viewer.Secure) (*viewer.Viewer, error) {
	v, err := viewer.Launch(viewer.Options{Binary: s.bin}, o, sec)
	s.mu.Lock()
	s.viewers = append(s.viewers, v)
	s.mu.Unlock()
	return v, err
}

func (s *fakeSession) started() []*viewer.Viewer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.viewers
}
func (s *fakeSession) Logout(ctx context.Context, v *viewer.Viewer) error {
	if v != nil {
		v.Stop(100 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logouts++
	if s.fail != 0 {
		s.fail--
		return errors.New(`wipe: still holds ["leftover"]`)
	}
	return nil
}

func (s *fakeSession) failNext(n int) { s.mu.Lock(); s.fail = n; s.mu.Unlock() }
func (s *fakeSession) logoutCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logouts
}

type harness struct {
	t      *testing.T
	k      *Kiosk
	d      *fakeDisplay
	s      *fakeScreen
	b      *fakeBroker
	sess   *fakeSession
	states chan State
}

func newHarness(t *testing.T, opts ...func(*harness)) *harness {
	bin := filepath.Join(t.TempDir(), "viewer")
	os.WriteFile(bin, []byte("#!/bin/sh\ncat > /dev/null\nexec sleep 300\n"), 0o755)
	h := &harness{t: t, d: &fakeDisplay{touches: make(chan struct{}, 1)}, s: &fakeScreen{mapped: make(chan xproto.Window, 1)},
		b: &fakeBroker{ready: make(chan struct{})}, sess: &fakeSession{t: t, bin: bin}, states: make(chan State, 64)}
	log := testlog.Logger()
	h.k = &Kiosk{Display: h.d, Screen: h.s, Broker: h.b, Session: h.sess, Log: log,
		IdleLimit: time.Minute, IdleWarning: 30 * time.Second, ConnectTimeout: time.Minute}
	h.k.OnState(func(s State) { h.states <- s })
	for _, o := range opts {
		o(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.k.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if len(opts) == 0 {
		h.expect(Starting, Idle)
	}
	<-h.b.ready
	return h
}

// expect waits for the kiosk to enter the states given, in order.
func (h *harness) expect(want ...State) {
	h.t.Helper()
	for _, w := range want {
		select {
		case got := <-h.states:
			if got != w {
				h.t.Fatalf("state = %v, want %v", got, w)
			}
		case <-time.After(10 * time.Second):
			h.t.Fatalf("the kiosk never became %v", w)
		}
	}
}

func (h *harness) event(e Event) { h.b.events <- e }
func (h *harness) touch()        { h.d.touches <- struct{}{} }

// touchTaken touches and waits until the kiosk has taken the touch: it
// handles it before anything sent afterwards (touches and events come on
// separate channels, so otherwise their order is the scheduler's).
func (h *harness) touchTaken() {
	h.t.Helper()
	h.touch()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.d.touches) > 0 {
		if time.Now().After(deadline) {
			h.t.Fatal("the kiosk never took the touch")
		}
		time.Sleep(time.Millisecond)
	}
}

var offer = kioskproto.Offer{Lease: "l", Host: "h", Port: 1, Ticket: "t", Expires: time.Now().Add(time.Minute)}

func (h *harness) startSession() {
	h.t.Helper()
	before := time.Now()
	h.touch()
	h.expect(Requesting)
	h.b.mu.Lock()
	touched := h.b.touched
	h.b.mu.Unlock()
	if touched.Before(before) || time.Since(touched) > time.Minute {
		h.t.Errorf("the request says the touch was at %v, want the touch's time (after %v)", touched, before)
	}
	h.event(Status{Ahead: 2})
	h.expect(Waiting)
	if text, _, _ := h.d.get(); text != "Preparing your workstation… (2 ahead of you)" {
		h.t.Errorf("waiting text = %q", text)
	}
	h.event(Offer{Offer: offer})
	h.expect(Connecting)
	if _, visible, _ := h.d.get(); !visible {
		h.t.Errorf("the slideshow went away before the viewer's window came")
	}
	h.s.mapped <- 1
	h.expect(InSession)
	if _, visible, _ := h.d.get(); visible {
		h.t.Errorf("the slideshow is still shown during the session")
	}
}

func TestViewerExitEndsSession(t *testing.T) {
	h := newHarness(t)
	h.startSession()
	h.sess.started()[0].Stop(time.Second) // the viewer dies
	h.expect(Ending, Idle)
	if r := h.b.endReasons(); r != "the viewer exited" {
		t.Errorf("told the broker %q", r)
	}
	if text, visible, _ := h.d.get(); text != TextTouch || !visible {
		t.Errorf("after logout: %q visible=%v, want the slideshow saying %q", text, visible, TextTouch)
	}
}

func TestIdleWarningThenEnd(t *testing.T) {
	h := newHarness(t)
	h.startSession()
	h.s.setIdle(35 * time.Second)
	time.Sleep(1500 * time.Millisecond)
	if _, _, warn := h.d.get(); warn != "Session ends in 25 s — touch to continue" {
		t.Errorf("warning = %q", warn)
	}
	h.s.setIdle(time.Second) // the visitor touched
	time.Sleep(1500 * time.Millisecond)
	if _, _, warn := h.d.get(); warn != "" {
		t.Errorf("warning after a touch = %q, want none", warn)
	}
	h.s.setIdle(61 * time.Second)
	h.expect(Ending, Idle)
	if r := h.b.endReasons(); r != "idle for 1m1s" {
		t.Errorf("told the broker %q", r)
	}
}

// TestMaxSessionWarning: the kiosk warns before the longest session ends;
// touching does not help, and the broker ends it.
func TestMaxSessionWarning(t *testing.T) {
	h := newHarness(t)
	h.touch()
	h.expect(Requesting)
	o := offer
	o.MaxSeconds = 20
	h.event(Offer{Offer: o})
	h.expect(Connecting)
	h.s.mapped <- 1
	h.expect(InSession)
	time.Sleep(1500 * time.Millisecond)
	if _, _, warn := h.d.get(); !strings.HasPrefix(warn, "Session ends in 1") || !strings.Contains(warn, "the longest a session may last") {
		t.Errorf("warning = %q, want the longest session's", warn)
	}
}

func TestBrokerLostInSession(t *testing.T) {
	h := newHarness(t)
	h.startSession()
	h.event(BrokerDown{})
	h.expect(Ending, Unreachable)
	if text, visible, _ := h.d.get(); text != TextUnavailable || !visible {
		t.Errorf("after losing the broker: %q visible=%v", text, visible)
	}
	h.touchTaken() // nothing to ask
	h.event(BrokerUp{})
	h.expect(Idle)
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if h.b.requests != 1 {
		t.Errorf("%d requests, want 1: a touch while unreachable must not ask", h.b.requests)
	}
}

func TestStaleOfferIsReturned(t *testing.T) {
	h := newHarness(t)
	h.event(Offer{Offer: offer})
	time.Sleep(100 * time.Millisecond)
	if r := h.b.endReasons(); r != "the kiosk no longer waits for a VM" {
		t.Errorf("a stale offer: told the broker %q", r)
	}
	if len(h.sess.started()) != 0 {
		t.Errorf("a viewer started for an offer nobody asked for")
	}
}

func TestViewerThatNeverShows(t *testing.T) {
	h := newHarness(t)
	h.k.ConnectTimeout = 200 * time.Millisecond
	h.touch()
	h.expect(Requesting)
	h.event(Offer{Offer: offer})
	h.expect(Connecting, Ending, Idle)
	if r := h.b.endReasons(); r != "the viewer did not show up" {
		t.Errorf("told the broker %q", r)
	}
}

func TestBrokerEndsRequest(t *testing.T) {
	h := newHarness(t)
	h.touch()
	h.expect(Requesting)
	h.event(End{Reason: "no VM"})
	h.expect(Idle)
	h.touch()
	h.expect(Requesting)
	h.event(Refuse{Message: TextUnavailable})
	h.expect(Unreachable)
}

// TestStartWipesFirst: kioskd's start runs the logout (a crash may have
// left a visitor's files and processes) before the slideshow offers
// sessions; a touch meanwhile asks for nothing.
func TestStartWipesFirst(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.sess.failNext(0) })
	h.expect(Starting, Idle)
	if n := h.sess.logoutCount(); n != 1 {
		t.Errorf("%d logouts at start, want 1", n)
	}
	if text, visible, _ := h.d.get(); text != TextTouch || !visible {
		t.Errorf("after the start: %q visible=%v", text, visible)
	}
}

// TestFailedLogoutOutOfOrder: a logout that does not complete puts the
// kiosk out of order: it tells the broker, serves no touch, retries, and
// is back in order (and says so) once a logout completes.
func TestFailedLogoutOutOfOrder(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.k.FaultRetry = 100 * time.Millisecond })
	h.expect(Starting, Idle)
	h.startSession()
	h.sess.failNext(2)
	h.sess.started()[0].Stop(time.Second) // the visitor is done
	h.expect(Ending, OutOfOrder)
	if text, visible, _ := h.d.get(); text != TextOutOfOrder || !visible {
		t.Errorf("out of order: %q visible=%v", text, visible)
	}
	if f := h.b.faultsTold(); len(f) != 1 || !strings.Contains(f[0], "logout incomplete") || !strings.Contains(f[0], "leftover") {
		t.Errorf("told the broker %q, want the logout's failure", f)
	}
	// Heartbeats say it too, from another goroutine than the kiosk's.
	if state, last := h.k.Said(); state != OutOfOrder || !strings.Contains(last, "leftover") {
		t.Errorf("Said() = %v, %q; want out-of-order and the logout's failure", state, last)
	}
	h.touchTaken()
	h.expect(OutOfOrder, Idle) // one retry fails, the next completes
	h.b.mu.Lock()
	requests := h.b.requests
	h.b.mu.Unlock()
	if requests != 1 {
		t.Errorf("%d requests, want 1: an out-of-order kiosk asks for nothing", requests)
	}
	if f := h.b.faultsTold(); len(f) != 2 || f[1] != "" {
		t.Errorf("told the broker %q, want the fault then in order (\"\")", f)
	}
}

// TestFailedStartOutOfOrder: a kiosk that cannot wipe at start never shows
// "Touch to start".
func TestFailedStartOutOfOrder(t *testing.T) {
	h := newHarness(t, func(h *harness) { h.sess.failNext(-1); h.k.FaultRetry = time.Hour })
	h.expect(Starting, OutOfOrder)
	h.event(BrokerUp{})
	h.touchTaken()
	time.Sleep(50 * time.Millisecond)
	if text, _, _ := h.d.get(); text != TextOutOfOrder {
		t.Errorf("text = %q, want %q", text, TextOutOfOrder)
	}
	select {
	case s := <-h.states:
		t.Errorf("an out-of-order kiosk moved to %v", s)
	default:
	}
}

// TestFailingLogoutReboots: on the appliance, a logout that keeps failing
// reboots the kiosk from its read-only image.
func TestFailingLogoutReboots(t *testing.T) {
	rebooted := make(chan string, 1)
	h := newHarness(t, func(h *harness) {
		h.sess.failNext(-1)
		h.k.FaultRetry, h.k.RebootAfter = 20*time.Millisecond, 2
		h.k.Reboot = func(reason string) { rebooted <- reason }
	})
	h.expect(Starting, OutOfOrder, OutOfOrder, OutOfOrder)
	select {
	case r := <-rebooted:
		if !strings.Contains(r, "leftover") {
			t.Errorf("reboot reason %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reboot")
	}
	if n := h.sess.logoutCount(); n != 3 {
		t.Errorf("%d logouts before the reboot, want 3 (the start and 2 retries)", n)
	}
}

func cmd(action, text string) Command {
	return Command{kioskproto.Command{Action: action, Text: text}}
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOperatorOutOfOrder: out of order, the kiosk's slideshow says so, a
// touch asks for nothing; a waiting request is given up; back in order
// it serves again; a session running when the order comes goes on, and
// the kiosk is closed after it.
func TestOperatorOutOfOrderKiosk(t *testing.T) {
	h := newHarness(t)
	h.event(cmd(kioskproto.CmdOutOfOrder, "screen cracked"))
	h.expect(Closed)
	if text, visible, _ := h.d.get(); text != TextOutOfOrder || !visible {
		t.Errorf("closed: %q visible=%v", text, visible)
	}
	h.touchTaken()
	h.b.mu.Lock()
	n := h.b.requests
	h.b.mu.Unlock()
	if n != 0 {
		t.Errorf("a touch on a kiosk out of order asked the broker")
	}
	h.event(cmd(kioskproto.CmdInOrder, ""))
	h.expect(Idle)

	h.touch()
	h.expect(Requesting)
	h.event(cmd(kioskproto.CmdClosed, "Closed — opens at 8:00"))
	h.expect(Closed)
	if r := h.b.endReasons(); !strings.Contains(r, "Closed — opens at 8:00") {
		t.Errorf("the request was not given up: %q", r)
	}
	if text, _, _ := h.d.get(); text != "Closed — opens at 8:00" {
		t.Errorf("closed text %q", text)
	}
	h.event(cmd(kioskproto.CmdClosed, ""))
	h.expect(Idle)

	h.startSession()
	h.event(cmd(kioskproto.CmdOutOfOrder, "card reader"))
	select {
	case s := <-h.states:
		t.Fatalf("the session left %v for %v on an out-of-order order", InSession, s)
	case <-time.After(100 * time.Millisecond):
	}
	h.sess.started()[0].Stop(time.Second) // the visitor leaves
	h.expect(Ending, Closed)
	// A broker that comes back says again what is set; until it does,
	// what was set before is forgotten.
	h.event(BrokerUp{})
	h.expect(Idle)
}

// TestOperatorMessage: a message shows on the slideshow for its time, and
// in a session's banner.
func TestOperatorMessage(t *testing.T) {
	h := newHarness(t)
	h.event(Command{kioskproto.Command{Action: kioskproto.CmdMessage, Text: "Back at 2 pm", Seconds: 1}})
	waitFor(t, "the message on the slideshow", func() bool { text, _, _ := h.d.get(); return text == "Back at 2 pm" })
	waitFor(t, "the message gone after its second", func() bool { text, _, _ := h.d.get(); return text == TextTouch })
	h.startSession()
	h.event(Command{kioskproto.Command{Action: kioskproto.CmdMessage, Text: "Closing in 10 minutes", Seconds: 60}})
	waitFor(t, "the message in the banner", func() bool { _, _, warn := h.d.get(); return warn == "Closing in 10 minutes" })
	time.Sleep(1500 * time.Millisecond) // idle ticks keep it
	if _, _, warn := h.d.get(); warn != "Closing in 10 minutes" {
		t.Errorf("banner after idle ticks = %q", warn)
	}
}

// TestScreenshotOnlyOfTheSlideshow: the kiosk captures its screen while
// idle or closed, and refuses while a visitor is at it.
func TestScreenshotOnlyOfTheSlideshow(t *testing.T) {
	var captures int
	h := newHarness(t, func(h *harness) {
		h.k.Capture = func() ([]byte, error) { captures++; return []byte{0xff, 0xd8, 0xff}, nil }
	})
	h.expect(Starting, Idle)
	shot := func(id string) {
		h.event(Command{kioskproto.Command{Action: kioskproto.CmdScreenshot, ID: id}})
		waitFor(t, "an answer to "+id, func() bool { return strings.HasPrefix(h.b.lastShot(), id+":") })
	}
	shot("s1")
	if got := h.b.lastShot(); got != "s1: 3 bytes" {
		t.Errorf("idle: %q", got)
	}
	h.startSession()
	shot("s2")
	if got := h.b.lastShot(); !strings.Contains(got, "in-session") {
		t.Errorf("in session: %q", got)
	}
	h.sess.started()[0].Stop(time.Second)
	h.expect(Ending, Idle)
	h.event(cmd(kioskproto.CmdOutOfOrder, "x"))
	h.expect(Closed)
	shot("s3")
	if got := h.b.lastShot(); got != "s3: 3 bytes" {
		t.Errorf("closed: %q", got)
	}
	if captures != 2 {
		t.Errorf("captured %d times, want 2 (never in the session)", captures)
	}
}

// TestOperatorReboot: a reboot waits for the visitor to leave; an idle
// kiosk reboots at once.
func TestOperatorReboot(t *testing.T) {
	reboots := make(chan string, 4)
	h := newHarness(t, func(h *harness) { h.k.Restart = func(why string) { reboots <- why } })
	h.expect(Starting, Idle)
	h.startSession()
	h.event(cmd(kioskproto.CmdReboot, "olga"))
	select {
	case <-reboots:
		t.Fatal("rebooted in the middle of a session")
	case <-time.After(100 * time.Millisecond):
	}
	h.sess.started()[0].Stop(time.Second)
	h.expect(Ending)
	select {
	case why := <-reboots:
		if !strings.Contains(why, "olga") {
			t.Errorf("reboot reason %q", why)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reboot after the session")
	}
	if n := h.sess.logoutCount(); n < 2 {
		t.Errorf("rebooted before the logout (logouts: %d)", n)
	}

	idle := newHarness(t, func(h *harness) { h.k.Restart = func(why string) { reboots <- why } })
	idle.expect(Starting, Idle)
	idle.event(cmd(kioskproto.CmdReboot, "vera"))
	select {
	case <-reboots:
	case <-time.After(10 * time.Second):
		t.Fatal("an idle kiosk did not reboot")
	}
}

// TestRefusedThenOrder: a kiosk the broker refused while its order was on
// the way (a drain begun) takes the order when it comes: closed, then
// open again.
func TestRefusedThenOrder(t *testing.T) {
	h := newHarness(t)
	h.touch()
	h.expect(Requesting)
	h.event(Refuse{Message: TextUnavailable})
	h.expect(Unreachable)
	h.event(cmd(kioskproto.CmdClosed, "Closed — opens at 8:00"))
	h.expect(Closed)
	h.event(cmd(kioskproto.CmdClosed, ""))
	h.expect(Idle)
	h.touch()
	h.expect(Requesting)
	h.event(Refuse{Message: TextUnavailable})
	h.expect(Unreachable)
	h.event(cmd(kioskproto.CmdClosed, "")) // the resume's, after a refusal in the drain's last moment
	h.expect(Idle)
}
