// Package kioskd is the kiosk's session manager: while idle it shows the
// slideshow; a touch asks the broker for a VM and runs remote-viewer on it;
// when the session ends, for whatever reason, it logs the visitor out by
// force and goes back to the slideshow. It replaces the original kiosk's
// lightdm, openbox, feh and remote.sh.
//
// Every state and every transition is in this file: State, the events
// that move it (handle), and what entering a state does (enter).
package kioskd

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jezek/xgb/xproto"

	"undervdi/kioskd/viewer"
	"undervdi/kioskproto"
)

// State is where the kiosk is.
type State int

// The kiosk's states.
const (
	Idle        State = iota // the slideshow: "Touch to start"
	Unreachable              // the slideshow with a notice; the broker is being retried
	Requesting               // a visitor touched; asking the broker
	Waiting                  // the broker queued us or prepares a VM
	Connecting               // the viewer is starting on the offered VM
	InSession                // the viewer is on screen
	Ending                   // logging the visitor out
	Starting                 // kioskd just started: wiping what a crash may have left
	OutOfOrder               // a logout did not complete: nobody is served until one does
	Closed                   // an operator put the kiosk out of order, or the site is closed: the slideshow says so
)

var stateNames = [...]string{"idle", "unreachable", "requesting", "waiting", "connecting", "in-session", "ending",
	"starting", "out-of-order", "closed"}

func (s State) String() string { return stateNames[s] }

// Texts shown on the slideshow and the banner.
const (
	TextTouch       = "Touch to start"
	TextPreparing   = "Preparing your workstation…"
	TextUnavailable = "Service temporarily unavailable"
	TextEnding      = "Thank you. Cleaning up…"
	TextStarting    = "Starting…"
	TextOutOfOrder  = "Out of order"
	textWarning     = "Session ends in %d s — touch to continue"
	textMaxWarning  = "Session ends in %d s: the longest a session may last"
)

// Display is what the kiosk shows while idle: the slideshow.
type Display interface {
	SetText(string)
	SetVisible(bool)
	Warn(string) // the banner over a session; "" hides it
	Touches() <-chan struct{}
}

// Screen is the X display's window manager side.
type Screen interface {
	Mapped() <-chan xproto.Window // an application window (the viewer's) appeared
	Idle() (time.Duration, error)
}

// Broker is the link to the broker: the kiosk protocol, or the original
// signal port for a kiosk configured the old way.
type Broker interface {
	// Run keeps the link up, delivering events until ctx ends.
	Run(ctx context.Context, events chan<- Event)
	// Request asks for a session for the visitor's touch at touched; the
	// answer comes as events.
	Request(touched time.Time) error
	// End ends the session (or a request) with a reason.
	End(reason string)
	// Fault tells the broker this kiosk is out of order, and why; ""
	// says it is in order again.
	Fault(reason string)
	// Screenshot answers the broker's screenshot id: a JPEG, or why not.
	Screenshot(id string, jpeg []byte, refused string)
}

// Session is one visitor's session on this kiosk: the viewer, and what the
// logout must undo.
type Session interface {
	// Prepare starts the next visitor's viewer ahead of time, with the
	// settings offers will carry, so a touch does not wait for it to start.
	Prepare(settings kioskproto.Viewer)
	// Start runs the viewer for an offer (the prepared one if it fits).
	Start(o kioskproto.Offer, sec *viewer.Secure) (*viewer.Viewer, error)
	// Logout forces the visitor out: it kills the viewer and every process
	// of the session, wipes the session's files, resets the USB devices.
	// An error means something of the visitor may be left. v is nil at
	// start and when a failed logout is retried.
	Logout(ctx context.Context, v *viewer.Viewer) error
}

// Event is something that happened: from the broker link, the viewer,
// the screen or a timer.
type Event interface{ event() }

// Broker link events.
type (
	BrokerUp struct {
		IdleLimit time.Duration      // the broker's idle limit (0: unchanged)
		Viewer    *kioskproto.Viewer // the viewer settings offers will carry, if known
	}
	BrokerDown struct{ Err error }
	Status     struct {
		Ahead   int
		Message string
	}
	// Offer is a VM for the visitor. Secure, when set, is how the viewer
	// verifies the gateway's TLS; a kiosk on TLS gets no offer without it.
	Offer struct {
		Offer  kioskproto.Offer
		Secure *viewer.Secure
	}
	End    struct{ Reason string }
	Refuse struct{ Message string } // the broker refused a request
	// Command is an operator's, through the broker.
	Command struct{ kioskproto.Command }
)

type (
	touch        struct{ at time.Time }
	viewerMapped struct{}
	viewerExited struct {
		v   *viewer.Viewer
		err error
	}
	idleTick    struct{}
	logoutDone  struct{ err error }
	timeout     struct{ state State }
	messageOver struct{ until time.Time }
)

func (BrokerUp) event()     {}
func (BrokerDown) event()   {}
func (Status) event()       {}
func (Offer) event()        {}
func (End) event()          {}
func (Refuse) event()       {}
func (touch) event()        {}
func (viewerMapped) event() {}
func (viewerExited) event() {}
func (idleTick) event()     {}
func (logoutDone) event()   {}
func (timeout) event()      {}
func (Command) event()      {}
func (messageOver) event()  {}

// Kiosk runs the kiosk.
type Kiosk struct {
	Display Display
	Screen  Screen
	Broker  Broker
	Session Session
	Log     *slog.Logger
	// IdleLimit ends a session after this long without input. Unless
	// IdleLimitFixed, the broker's welcome sets it. IdleWarning is how long
	// before the end the banner shows.
	IdleLimit      time.Duration
	IdleLimitFixed bool
	IdleWarning    time.Duration
	// ConnectTimeout bounds the wait for the viewer's window.
	ConnectTimeout time.Duration
	// FaultRetry is how often an out-of-order kiosk retries its logout
	// (0: 10 s). After RebootAfter failed retries (0: 3) it calls Reboot,
	// if set: the appliance restarts from its read-only image.
	FaultRetry  time.Duration
	RebootAfter int
	Reboot      func(reason string)
	// ScreenSize is the display's size ("1920x1080"), for heartbeats.
	ScreenSize string
	// Capture takes a picture of the screen as JPEG, for an operator's
	// screenshot; it is only called while the slideshow shows and no
	// visitor is at the kiosk. Nil: screenshots are refused.
	Capture func() ([]byte, error)
	// RefreshAds mirrors the ads now (an operator's refresh); nil: none.
	RefreshAds func()
	// Restart is an operator's reboot, done once no visitor is at the
	// kiosk: the appliance reboots, a systemd kiosk restarts kioskd. Nil:
	// refused.
	Restart func(reason string)

	state     State
	down      bool              // the broker link said it is down, and has not come back
	settings  kioskproto.Viewer // the viewer settings the broker's offers carry
	notice    string
	viewer    *viewer.Viewer
	ends      time.Time            // the broker ends the session then, at the latest (zero: no limit)
	idle      atomic.Int64         // latest idle time, for heartbeats
	said      atomic.Pointer[said] // state and lastError, for heartbeats from another goroutine
	lastError string               // why the kiosk last became unreachable or out of order
	touched   time.Time            // the touch the current request answers
	events    chan Event
	idleTick  *time.Ticker
	timer     *time.Timer
	failures  int    // logouts failed in a row
	fault     string // why the kiosk is out of order; "": it is not
	disabled  string // why an operator put the kiosk out of order; "": they did not
	closed    string // what the slideshow says while the site is closed; "": open
	message   string // an operator's message, shown until messageUntil
	messageAt time.Time
	restart   string // an operator's reboot waiting for the visitor to leave
	ctx       context.Context
	onState   func(State) // tests observe transitions
}

// said is what heartbeats say of the kiosk: its state and the latest
// thing that went wrong.
type said struct {
	state     State
	lastError string
}

// Said is the kiosk's state and latest error, as heartbeats report them
// (safe from any goroutine).
func (k *Kiosk) Said() (state State, lastError string) {
	if s := k.said.Load(); s != nil {
		return s.state, s.lastError
	}
	return Starting, ""
}

// IdleTime is the visitor's latest idle time, as heartbeats report it.
func (k *Kiosk) IdleTime() time.Duration { return time.Duration(k.idle.Load()) }

// State is the kiosk's current state (for status and tests).
func (k *Kiosk) State() State { return k.state }

// OnState registers f to hear every transition (tests).
func (k *Kiosk) OnState(f func(State)) { k.onState = f }

// Run runs the kiosk until ctx ends.
func (k *Kiosk) Run(ctx context.Context) error {
	k.ctx = ctx
	k.events = make(chan Event, 32)
	if k.ConnectTimeout == 0 {
		k.ConnectTimeout = 30 * time.Second
	}
	if k.FaultRetry == 0 {
		k.FaultRetry = 10 * time.Second
	}
	if k.RebootAfter == 0 {
		k.RebootAfter = 3
	}
	go k.Broker.Run(ctx, k.events)
	// A kioskd that crashed or was killed may have left a visitor's files
	// and processes: nobody is served before they are gone.
	k.enter(Starting)
	for {
		select {
		case <-ctx.Done():
			if k.viewer != nil {
				k.Session.Logout(context.Background(), k.viewer)
			}
			return ctx.Err()
		case <-k.Display.Touches():
			k.handle(touch{at: time.Now()})
		case <-k.Screen.Mapped():
			k.handle(viewerMapped{})
		case ev := <-k.events:
			k.handle(ev)
		case <-k.tick():
			k.handle(idleTick{})
		}
	}
}

func (k *Kiosk) tick() <-chan time.Time {
	if k.idleTick == nil {
		return nil
	}
	return k.idleTick.C
}

// handle moves the kiosk on an event. What each event means depends on
// the state; everything not listed is ignored.
func (k *Kiosk) handle(ev Event) {
	switch e := ev.(type) {
	case BrokerUp:
		k.down = false
		if e.IdleLimit > 0 && !k.IdleLimitFixed {
			k.IdleLimit = e.IdleLimit
		}
		if e.Viewer != nil {
			k.settings = *e.Viewer
		}
		// The broker says again at once what operators set: out of
		// order, closed. What was set before may have been undone meanwhile.
		k.disabled, k.closed = "", ""
		switch k.state {
		case Closed:
			k.rest("the broker is back")
		case Unreachable:
			k.rest("the broker is back")
		case Idle:
			k.Session.Prepare(k.settings)
		}
	case BrokerDown:
		k.down = true
		k.Log.Warn("lost the broker", "err", e.Err)
		switch k.state {
		case Idle, Requesting, Waiting, Closed:
			k.to(Unreachable, "broker unreachable")
		case Connecting, InSession:
			k.notice = TextUnavailable
			k.to(Ending, "the broker went away")
		}
	case touch:
		switch k.state {
		case Idle:
			k.touched = e.at
			k.to(Requesting, "touch")
		case Unreachable:
			// Nothing to ask yet; the notice stays until the broker is back.
		}
	case Status:
		if k.state == Requesting || k.state == Waiting {
			k.notice = e.Message
			if k.notice == "" {
				k.notice = queueText(e.Ahead)
			}
			k.to(Waiting, fmt.Sprintf("queued, %d ahead", e.Ahead))
		}
	case Refuse:
		if k.state == Requesting || k.state == Waiting {
			k.notice = e.Message
			k.to(Unreachable, "the broker refused: "+e.Message)
		}
	case Offer:
		if k.state != Requesting && k.state != Waiting {
			k.Broker.End("the kiosk no longer waits for a VM")
			return
		}
		v, err := k.Session.Start(e.Offer, e.Secure)
		if err != nil {
			k.Log.Error("cannot start the viewer", "err", err)
			k.Broker.End("the kiosk could not start its viewer")
			k.notice = TextUnavailable
			k.to(Ending, "viewer failed to start")
			return
		}
		k.viewer = v
		k.ends = time.Time{}
		if e.Offer.MaxSeconds > 0 {
			k.ends = time.Now().Add(time.Duration(e.Offer.MaxSeconds) * time.Second)
		}
		go func() { <-v.Done(); k.events <- viewerExited{v: v, err: v.Err()} }()
		k.to(Connecting, "offer for lease "+e.Offer.Lease)
	case viewerMapped:
		if k.state == Connecting {
			k.to(InSession, "the viewer is on screen")
		}
	case viewerExited:
		if e.v == k.viewer && (k.state == Connecting || k.state == InSession) {
			k.Broker.End("the viewer exited")
			k.to(Ending, fmt.Sprintf("the viewer exited (%v)", e.err))
		}
	case End:
		switch k.state {
		case Requesting, Waiting:
			k.rest("the broker ended the request: " + e.Reason)
		case Connecting, InSession:
			k.to(Ending, "the broker ended the session: "+e.Reason)
		}
	case idleTick:
		if k.state == InSession {
			k.checkIdle()
		}
	case timeout:
		if e.state == k.state && k.state == Connecting {
			k.Broker.End("the viewer did not show up")
			k.to(Ending, fmt.Sprintf("no viewer window within %v", k.ConnectTimeout))
		}
	case Command:
		k.command(e.Command)
	case messageOver:
		if e.until.Equal(k.messageAt) {
			k.message = ""
			k.showLine()
		}
	case logoutDone:
		if k.state != Ending && k.state != Starting && k.state != OutOfOrder {
			return
		}
		if k.restart != "" {
			// An operator's reboot waited for the visitor to leave; a
			// reboot also undoes what a failed logout left.
			k.Log.Warn("rebooting, as an operator asked, now that the visitor has left", "logout_err", e.err)
			k.Restart(k.restart)
			return
		}
		if e.err != nil {
			k.failures++
			k.fault = kioskproto.Clip("logout incomplete: " + e.err.Error())
			if k.state != OutOfOrder {
				k.Broker.Fault(k.fault)
				k.to(OutOfOrder, k.fault)
				return
			}
			k.Log.Error("the logout failed again; the kiosk stays out of order", "failures", k.failures, "err", e.err)
			if k.Reboot != nil && k.failures > k.RebootAfter {
				k.Log.Error("rebooting: the logout keeps failing", "failures", k.failures)
				k.Reboot(k.fault)
			}
			k.enter(OutOfOrder) // retry again later
			return
		}
		if k.state == OutOfOrder {
			k.Log.Info("the logout completed at last; the kiosk is back in order", "failures", k.failures)
			k.Broker.Fault("")
		}
		k.failures, k.fault = 0, ""
		if k.notice == TextStarting {
			k.notice = ""
		}
		k.rest("logged out")
	}
}

// rest is where the kiosk goes when no visitor is at it: the slideshow,
// which says the broker is unreachable, or the kiosk closed, or invites a
// touch.
func (k *Kiosk) rest(why string) {
	switch {
	case k.down:
		k.to(Unreachable, why+"; the broker is unreachable")
	case k.disabled != "" || k.closed != "":
		k.to(Closed, why)
	default:
		k.to(Idle, why)
	}
}

// command carries out an operator's command.
func (k *Kiosk) command(c kioskproto.Command) {
	k.Log.Info("operator's command", "action", c.Action, "text", c.Text, "state", k.state)
	switch c.Action {
	case kioskproto.CmdReboot:
		if k.Restart == nil {
			k.Log.Error("an operator asked for a reboot, which this kiosk cannot do")
			return
		}
		k.restart = "an operator asked (" + c.Text + ")"
		switch k.state {
		case Requesting, Waiting:
			k.Broker.End("the kiosk reboots")
			k.Restart(k.restart)
		case Connecting, InSession, Ending, Starting:
			// After the visitor: the logout's end reboots.
		default:
			k.Restart(k.restart)
		}
	case kioskproto.CmdMessage:
		k.message = c.Text
		k.messageAt = time.Now().Add(time.Duration(max(c.Seconds, 1)) * time.Second)
		until := k.messageAt
		time.AfterFunc(time.Until(until), func() { k.events <- messageOver{until: until} })
		k.showLine()
	case kioskproto.CmdOutOfOrder, kioskproto.CmdInOrder, kioskproto.CmdClosed:
		switch c.Action {
		case kioskproto.CmdOutOfOrder:
			k.disabled = cmp.Or(c.Text, "out of order")
		case kioskproto.CmdInOrder:
			k.disabled = ""
		default:
			k.closed = c.Text
		}
		held := k.disabled != "" || k.closed != ""
		switch {
		case k.state == Unreachable && !k.down:
			// Refused while the broker's order was on its way (a drain
			// begun, a greeting not yet heard): the order settles it.
			k.rest("an operator's order")
		case held && (k.state == Requesting || k.state == Waiting):
			k.Broker.End("the kiosk is " + k.holdText())
			k.to(Closed, k.holdText())
		case held && k.state == Idle:
			k.to(Closed, k.holdText())
		case k.state == Closed && !held:
			k.rest("open again")
		case k.state == Closed:
			k.showLine()
		}
	case kioskproto.CmdRefreshAds:
		if k.RefreshAds != nil {
			go k.RefreshAds()
		}
	case kioskproto.CmdScreenshot:
		switch {
		case k.state != Idle && k.state != Closed:
			// Only ever the slideshow: never a visitor's screen, nor a
			// kiosk whose last visitor may not be gone.
			k.Broker.Screenshot(c.ID, nil, "the kiosk is "+k.state.String()+": it shows no screenshot but of its slideshow")
		case k.Capture == nil:
			k.Broker.Screenshot(c.ID, nil, "this kiosk takes no screenshots")
		default:
			pic, err := k.Capture()
			if err != nil {
				k.Log.Warn("cannot take the screenshot an operator asked for", "err", err)
				k.Broker.Screenshot(c.ID, nil, "the kiosk could not take it: "+err.Error())
				return
			}
			k.Broker.Screenshot(c.ID, pic, "")
		}
	}
}

// holdText is what a closed kiosk's slideshow says.
func (k *Kiosk) holdText() string {
	if k.disabled != "" {
		return TextOutOfOrder
	}
	return k.closed
}

// showLine sets the slideshow's line for the state, or an operator's
// message over it while one lasts; in a session, the message is the banner.
func (k *Kiosk) showLine() {
	msg := ""
	if k.message != "" && time.Now().Before(k.messageAt) {
		msg = k.message
	}
	line := ""
	switch k.state {
	case Idle:
		line = TextTouch
	case Closed:
		line = k.holdText()
	case Unreachable:
		line = k.notice
	case OutOfOrder:
		line = TextOutOfOrder
	case InSession:
		k.Display.Warn(msg)
		return
	default:
		return
	}
	k.Display.SetText(cmp.Or(msg, line))
}

// checkIdle warns the visitor before the idle limit and ends the session
// at it; the broker enforces the same limit from the heartbeats. It also
// warns before the longest session ends, which the broker does by itself.
func (k *Kiosk) checkIdle() {
	idle, err := k.Screen.Idle()
	if err != nil {
		k.Log.Warn("cannot read the idle time", "err", err)
		return
	}
	k.idle.Store(int64(idle))
	switch left := k.IdleLimit - idle; {
	case k.IdleLimit <= 0:
	case left <= 0:
		k.Display.Warn("")
		k.Broker.End(fmt.Sprintf("idle for %v", idle.Round(time.Second)))
		k.to(Ending, fmt.Sprintf("idle for %v", idle.Round(time.Second)))
	case left <= k.IdleWarning && (k.ends.IsZero() || left <= time.Until(k.ends)):
		k.Display.Warn(fmt.Sprintf(textWarning, seconds(left)))
	case !k.ends.IsZero() && time.Until(k.ends) <= max(k.IdleWarning, time.Minute):
		k.Display.Warn(fmt.Sprintf(textMaxWarning, seconds(max(time.Until(k.ends), 0))))
	default:
		k.showLine() // an operator's message, or no banner
	}
}

// seconds rounds d up to whole seconds, for the visitor.
func seconds(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// to moves to state s and runs what entering it does.
func (k *Kiosk) to(s State, why string) {
	k.Log.Info("kiosk", "from", k.state, "to", s, "why", why)
	if s == Unreachable || s == OutOfOrder {
		k.lastError = why
	}
	k.enter(s)
}

// enter is what the kiosk does on entering a state.
func (k *Kiosk) enter(s State) {
	k.state = s
	k.said.Store(&said{state: s, lastError: k.lastError})
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	if s != InSession && k.idleTick != nil {
		k.idleTick.Stop()
		k.idleTick = nil
		k.Display.Warn("")
	}
	switch s {
	case Idle:
		k.notice = ""
		k.showLine()
		k.Display.SetVisible(true)
		k.Session.Prepare(k.settings)
	case Closed:
		k.notice = ""
		k.showLine()
		k.Display.SetVisible(true)
	case Unreachable:
		if k.notice == "" {
			k.notice = TextUnavailable
		}
		k.showLine()
		k.Display.SetVisible(true)
	case Requesting:
		k.Display.SetText(TextPreparing)
		if err := k.Broker.Request(k.touched); err != nil {
			k.notice = TextUnavailable
			k.to(Unreachable, "cannot ask the broker: "+err.Error())
		}
	case Waiting:
		k.Display.SetText(k.notice)
	case Connecting:
		// The slideshow stays until the viewer's window is there: no
		// flash of an empty screen.
		k.timer = time.AfterFunc(k.ConnectTimeout, func() { k.events <- timeout{state: Connecting} })
	case InSession:
		k.Display.SetVisible(false)
		k.idle.Store(0)
		k.idleTick = time.NewTicker(time.Second)
	case Ending:
		msg := TextEnding
		if k.notice != "" {
			msg = k.notice
		}
		k.Display.SetText(msg)
		k.Display.SetVisible(true)
		v := k.viewer
		k.viewer = nil
		k.logout(v)
	case Starting:
		k.notice = TextStarting
		k.Display.SetText(TextStarting)
		k.Display.SetVisible(true)
		k.logout(nil)
	case OutOfOrder:
		// The slideshow may run (it shows nothing of a visitor), but it
		// says the kiosk is out of order and a touch does nothing.
		k.showLine()
		k.Display.SetVisible(true)
		k.timer = time.AfterFunc(k.FaultRetry, func() { k.logout(nil) })
	}
	if k.onState != nil {
		k.onState(s)
	}
}

// logout runs the session's logout in the background (it may take
// seconds) and reports how it went as logoutDone. It runs to its end even
// if kioskd is stopping.
func (k *Kiosk) logout(v *viewer.Viewer) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		k.events <- logoutDone{err: k.Session.Logout(ctx, v)}
	}()
}

// queueText is the slideshow's line for a queue position, when the broker
// sends none.
func queueText(ahead int) string {
	if ahead <= 0 {
		return TextPreparing
	}
	return fmt.Sprintf("%s (%d ahead of you)", TextPreparing, ahead)
}
