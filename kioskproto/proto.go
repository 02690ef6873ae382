// Package kioskproto is the protocol between a kiosk (kioskd) and the broker:
// length-prefixed JSON frames over TCP (optionally TLS), versioned, every
// frame bounded in size and every field in length. docs/protocol.md shows a
// whole session; the decoder is fuzzed and never panics on bad input.
package kioskproto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 1

// MaxFrame bounds every frame's payload; no message needs more.
const MaxFrame = 16 << 10

// Errors of the decoder.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrBadMessage    = errors.New("bad message")
)

// Type names a message.
type Type string

// Message types. Kiosk to broker: hello, request, heartbeat, end. Broker to
// kiosk: welcome, status, offer, heartbeat, end, error.
const (
	THello     Type = "hello"
	TWelcome   Type = "welcome"
	TRequest   Type = "request"
	TStatus    Type = "status"
	TOffer     Type = "offer"
	THeartbeat Type = "heartbeat"
	TEnd       Type = "end"
	TError     Type = "error"
	// An operator's command to a kiosk, and a kiosk's screenshot back.
	TCommand    Type = "command"
	TScreenshot Type = "screenshot"
)

// Message is one frame: its type and exactly the payload of that type.
type Message struct {
	Type       Type        `json:"type"`
	Hello      *Hello      `json:"hello,omitempty"`
	Welcome    *Welcome    `json:"welcome,omitempty"`
	Request    *Request    `json:"request,omitempty"`
	Status     *Status     `json:"status,omitempty"`
	Offer      *Offer      `json:"offer,omitempty"`
	Heartbeat  *Heartbeat  `json:"heartbeat,omitempty"`
	End        *End        `json:"end,omitempty"`
	Error      *Error      `json:"error,omitempty"`
	Command    *Command    `json:"command,omitempty"`
	Screenshot *Screenshot `json:"screenshot,omitempty"`
}

// Hello opens a connection: who the kiosk is and its secret token.
type Hello struct {
	Version  int    `json:"version"`
	Kiosk    string `json:"kiosk"`
	Token    string `json:"token"`
	Software string `json:"software,omitempty"` // e.g. "kioskd 0.1", for the broker's log
	// Commands says the kiosk takes command messages; the broker sends
	// none to a kiosk that does not (an older image).
	Commands bool `json:"commands,omitempty"`
	// Image is the kiosk image's version (its build stamp), "" where
	// kioskd does not run from an undervdi image.
	Image string `json:"image,omitempty"`
	// IdleBeats says the kiosk heartbeats at the welcome's
	// idle_heartbeat_seconds while it has no request and no session. A
	// kiosk that does not say so (an older image) is sent no idle rate,
	// and the broker expects its heartbeats at heartbeat_seconds.
	IdleBeats bool `json:"idle_beats,omitempty"`
}

// Welcome accepts a kiosk and tells it the broker's timings.
type Welcome struct {
	Version          int `json:"version"`
	HeartbeatSeconds int `json:"heartbeat_seconds"` // send a heartbeat at least this often
	// IdleHeartbeatSeconds, if more than HeartbeatSeconds, is how often a
	// kiosk that said idle_beats heartbeats while it has no request and no
	// session: an idle fleet costs the broker a wake-up per kiosk this
	// often, not every HeartbeatSeconds.
	IdleHeartbeatSeconds int     `json:"idle_heartbeat_seconds,omitempty"`
	IdleLimitSeconds     int     `json:"idle_limit_seconds"`
	Broker               string  `json:"broker,omitempty"`
	Viewer               *Viewer `json:"viewer,omitempty"` // what offers will say, so the viewer can start early
	// SpiceSubject is the subject of the certificate the SPICE gateway's
	// TLS port presents ("O=undervdi,CN=vdi-broker"): remote-viewer's
	// host-subject. It comes over the TLS connection the kiosk verified.
	SpiceSubject string `json:"spice_subject,omitempty"`
}

// Request asks for a session: a VM for the visitor at the kiosk.
type Request struct {
	// TouchAgoMS is how long ago the touch this request answers was, for
	// the broker's touch-to-link figure (0: just now).
	TouchAgoMS int `json:"touch_ago_ms,omitempty"`
}

// Status reports progress while a request waits.
type Status struct {
	State   string `json:"state"`             // StateQueued or StatePreparing
	Ahead   int    `json:"ahead,omitempty"`   // kiosks served before this one
	Message string `json:"message,omitempty"` // for the screen
}

// States of a waiting request.
const (
	StateQueued    = "queued"
	StatePreparing = "preparing"
)

// Offer hands the kiosk its VM: where the SPICE gateway is, and the
// one-time ticket that opens it, valid for this kiosk's address until the
// lease ends. The client must link before Expires.
type Offer struct {
	Lease   string    `json:"lease"`
	Host    string    `json:"host"`
	Port    int       `json:"port"`
	Ticket  string    `json:"ticket"`
	Expires time.Time `json:"expires"`
	Viewer  Viewer    `json:"viewer"`
	// TLSPort is the SPICE gateway's TLS port; 0 where the site runs
	// without TLS. Port is the plaintext one, for legacy kiosks.
	TLSPort int `json:"tls_port,omitempty"`
	// MaxSeconds, if not 0, is the longest the session may last, counted
	// from the offer: the broker ends it then, and the kiosk warns before.
	// A duration, not a time: the kiosk's clock may be off.
	MaxSeconds int `json:"max_seconds,omitempty"`
}

// Viewer carries remote-viewer settings chosen by the broker's operator.
type Viewer struct {
	Title              string `json:"title,omitempty"`
	DisableAudio       bool   `json:"disable_audio,omitempty"`
	DisableEffects     string `json:"disable_effects,omitempty"`      // e.g. "animation"
	Compression        string `json:"compression,omitempty"`          // e.g. "auto-glz"
	USBAutoRedirect    string `json:"usb_auto_redirect,omitempty"`    // spice-gtk filter for devices plugged in
	USBRedirectConnect string `json:"usb_redirect_connect,omitempty"` // filter for devices present at connect
}

// Heartbeat keeps a connection and its lease alive. From a kiosk it carries
// how long the visitor has not touched anything, and, while the kiosk is out
// of order (a logout it could not complete), why: the broker shows it in
// its status and serves that kiosk no session until a heartbeat without it.
type Heartbeat struct {
	IdleSeconds int    `json:"idle_seconds,omitempty"`
	Fault       string `json:"fault,omitempty"`
	// What the kiosk says of itself, for the broker's view of the fleet.
	State         string `json:"state,omitempty"` // kioskd's state: "idle", "in-session", "out-of-order", ...
	UptimeSeconds int    `json:"uptime_seconds,omitempty"`
	Screen        string `json:"screen,omitempty"`     // the display's size, "1920x1080"
	LastError     string `json:"last_error,omitempty"` // the latest thing that went wrong on the kiosk
}

// End closes a session, in either direction, with a reason for the log.
type End struct {
	Reason string `json:"reason"`
}

// Command is an operator's order to a kiosk, from the broker.
type Command struct {
	Action  string `json:"action"`            // one of the Cmd constants
	Text    string `json:"text,omitempty"`    // the message, or why (out of order, closed)
	Seconds int    `json:"seconds,omitempty"` // how long a message shows
	ID      string `json:"id,omitempty"`      // a screenshot's, which its parts carry back
}

// Commands' actions.
const (
	CmdReboot     = "reboot"       // restart: the appliance reboots, a systemd kiosk restarts kioskd
	CmdMessage    = "message"      // show Text for Seconds (over the slideshow, or in a session's banner)
	CmdOutOfOrder = "out-of-order" // serve nobody, saying Text, until in-order
	CmdInOrder    = "in-order"
	CmdRefreshAds = "refresh-ads" // mirror the ads now
	CmdScreenshot = "screenshot"  // send the slideshow's picture; refused during a session
	CmdClosed     = "closed"      // the site is closed (Text says until when); "" Text: open
)

// Screenshot is one part of a kiosk's screenshot (a JPEG), or its refusal.
type Screenshot struct {
	ID      string `json:"id"`
	Part    int    `json:"part"`
	Last    bool   `json:"last,omitempty"`
	Data    []byte `json:"data,omitempty"`
	Refused string `json:"refused,omitempty"` // why there is none: the kiosk is in a session
}

// ScreenshotPart is the most a screenshot part carries, so that a part
// fits a frame (base64 makes it a third larger).
const ScreenshotPart = 8 << 10

// Error reports a refused hello or request; the broker closes the
// connection after it for the codes that say so.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeBadMessage  = "bad-message"
	CodeBadVersion  = "bad-version"
	CodeUnknown     = "unknown-kiosk" // id, token or address not accepted
	CodeUnavailable = "unavailable"   // the pool cannot serve now; retry later
	CodeBusy        = "busy"          // a session is already open on this connection
	CodeInternal    = "internal"
)

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Limits on fields, so a peer cannot make the other keep or log much.
const (
	maxID     = 64
	maxSecret = 256
	MaxText   = 1024 // status messages, reasons, faults
)

// ReadMessage reads and validates one frame.
func ReadMessage(r io.Reader) (*Message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooLarge, n, MaxFrame)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return Decode(buf)
}

// Decode parses and validates one frame's payload.
func Decode(payload []byte) (*Message, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var m Message
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrBadMessage)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// WriteMessage validates m and writes it as one frame.
//
// The frame goes out in one Write: the broker relies on it to write from
// two goroutines on one connection without interleaving.
func WriteMessage(w io.Writer, m *Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(b))
	}
	frame := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(frame, uint32(len(b)))
	copy(frame[4:], b)
	_, err = w.Write(frame)
	return err
}

// Validate checks that m carries exactly the payload its type names, and
// that every field is within bounds.
func (m *Message) Validate() error {
	// Every message passes here twice (written, read): no allocation.
	payloads := [...]struct {
		t   Type
		has bool
	}{
		{THello, m.Hello != nil}, {TWelcome, m.Welcome != nil}, {TRequest, m.Request != nil},
		{TStatus, m.Status != nil}, {TOffer, m.Offer != nil}, {THeartbeat, m.Heartbeat != nil},
		{TEnd, m.End != nil}, {TError, m.Error != nil}, {TCommand, m.Command != nil}, {TScreenshot, m.Screenshot != nil},
	}
	has, known, n := false, false, 0
	for _, p := range payloads {
		if p.t == m.Type {
			has, known = p.has, true
		}
		if p.has {
			n++
		}
	}
	if !known {
		return fmt.Errorf("%w: unknown type %q", ErrBadMessage, clip(string(m.Type)))
	}
	if !has || n != 1 {
		return fmt.Errorf("%w: a %s message must carry exactly its %s payload", ErrBadMessage, m.Type, m.Type)
	}
	var errs []error
	text := func(field, s string, max int, required bool) {
		switch {
		case required && s == "":
			errs = append(errs, fmt.Errorf("%s is required", field))
		case len(s) > max:
			errs = append(errs, fmt.Errorf("%s is %d bytes, at most %d", field, len(s), max))
		case !utf8.ValidString(s):
			errs = append(errs, fmt.Errorf("%s is not UTF-8", field))
		}
	}
	num := func(field string, v, max int) {
		if v < 0 || v > max {
			errs = append(errs, fmt.Errorf("%s = %d, want 0 to %d", field, v, max))
		}
	}
	switch m.Type {
	case THello:
		num("version", m.Hello.Version, 1<<16)
		text("kiosk", m.Hello.Kiosk, maxID, true)
		text("token", m.Hello.Token, maxSecret, false)
		text("software", m.Hello.Software, maxID, false)
		text("image", m.Hello.Image, maxID, false)
	case TWelcome:
		num("version", m.Welcome.Version, 1<<16)
		num("heartbeat_seconds", m.Welcome.HeartbeatSeconds, 3600)
		num("idle_heartbeat_seconds", m.Welcome.IdleHeartbeatSeconds, 3600)
		num("idle_limit_seconds", m.Welcome.IdleLimitSeconds, 7*24*3600)
		text("broker", m.Welcome.Broker, maxID, false)
		if v := m.Welcome.Viewer; v != nil {
			checkViewer(text, *v)
		}
	case TStatus:
		if s := m.Status.State; s != StateQueued && s != StatePreparing {
			errs = append(errs, fmt.Errorf("state %q unknown", clip(s)))
		}
		num("ahead", m.Status.Ahead, 1<<20)
		text("message", m.Status.Message, MaxText, false)
	case TOffer:
		o := m.Offer
		text("lease", o.Lease, maxID, true)
		text("host", o.Host, 255, true)
		num("port", o.Port, 65535)
		text("ticket", o.Ticket, 60, true) // SPICE passwords are at most 60 bytes
		checkViewer(text, o.Viewer)
		if o.Port == 0 || o.Expires.IsZero() {
			errs = append(errs, errors.New("port and expires are required"))
		}
	case TRequest:
		num("touch_ago_ms", m.Request.TouchAgoMS, 3600*1000)
	case THeartbeat:
		num("idle_seconds", m.Heartbeat.IdleSeconds, 1<<30)
		text("fault", m.Heartbeat.Fault, MaxText, false)
		text("state", m.Heartbeat.State, maxID, false)
		text("screen", m.Heartbeat.Screen, maxID, false)
		num("uptime_seconds", m.Heartbeat.UptimeSeconds, 1<<40)
		text("last_error", m.Heartbeat.LastError, MaxText, false)
	case TEnd:
		text("reason", m.End.Reason, MaxText, false)
	case TError:
		text("code", m.Error.Code, maxID, true)
		text("message", m.Error.Message, MaxText, false)
	case TCommand:
		switch a := m.Command.Action; a {
		case CmdReboot, CmdMessage, CmdOutOfOrder, CmdInOrder, CmdRefreshAds, CmdScreenshot, CmdClosed:
		default:
			errs = append(errs, fmt.Errorf("action %q unknown", clip(a)))
		}
		text("text", m.Command.Text, MaxText, m.Command.Action == CmdMessage)
		num("seconds", m.Command.Seconds, 24*3600)
		text("id", m.Command.ID, maxID, m.Command.Action == CmdScreenshot)
	case TScreenshot:
		text("id", m.Screenshot.ID, maxID, true)
		num("part", m.Screenshot.Part, 1024)
		if len(m.Screenshot.Data) > ScreenshotPart {
			errs = append(errs, fmt.Errorf("data is %d bytes, at most %d", len(m.Screenshot.Data), ScreenshotPart))
		}
		text("refused", m.Screenshot.Refused, MaxText, false)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s: %w", ErrBadMessage, m.Type, errors.Join(errs...))
	}
	return nil
}

func checkViewer(text func(field, s string, max int, required bool), v Viewer) {
	text("viewer.title", v.Title, MaxText, false)
	text("viewer.disable_effects", v.DisableEffects, maxID, false)
	text("viewer.compression", v.Compression, maxID, false)
	text("viewer.usb_auto_redirect", v.USBAutoRedirect, MaxText, false)
	text("viewer.usb_redirect_connect", v.USBRedirectConnect, MaxText, false)
}

// Clip shortens s to what a text field may carry (MaxText bytes), on a
// character boundary, marking the cut.
func Clip(s string) string {
	if len(s) <= MaxText {
		return s
	}
	cut := MaxText - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// Constructors for the messages, so callers write kioskproto.Offer(...)
// rather than build envelopes by hand.

// NewHello returns a hello for kiosk id with its token.
func NewHello(id, token, software string) *Message {
	return &Message{Type: THello, Hello: &Hello{Version: Version, Kiosk: id, Token: token, Software: software}}
}

// NewWelcome returns a welcome with the broker's timings and viewer
// settings.
func NewWelcome(heartbeat, idleLimit time.Duration, broker string, viewer Viewer) *Message {
	return &Message{Type: TWelcome, Welcome: &Welcome{Version: Version,
		HeartbeatSeconds: int(heartbeat / time.Second), IdleLimitSeconds: int(idleLimit / time.Second), Broker: broker,
		Viewer: &viewer}}
}

// WithSpiceSubject sets a welcome's SpiceSubject.
func (m *Message) WithSpiceSubject(s string) *Message {
	m.Welcome.SpiceSubject = s
	return m
}

// WithIdleHeartbeat sets a welcome's IdleHeartbeatSeconds.
func (m *Message) WithIdleHeartbeat(d time.Duration) *Message {
	m.Welcome.IdleHeartbeatSeconds = int(d / time.Second)
	return m
}

// NewRequest returns a session request.
func NewRequest() *Message { return &Message{Type: TRequest, Request: &Request{}} }

// NewStatus returns a progress report.
func NewStatus(state string, ahead int, msg string) *Message {
	return &Message{Type: TStatus, Status: &Status{State: state, Ahead: ahead, Message: msg}}
}

// NewOffer wraps an offer.
func NewOffer(o Offer) *Message { return &Message{Type: TOffer, Offer: &o} }

// NewHeartbeat returns a heartbeat carrying the visitor's idle time and the
// kiosk's fault ("" when in order).
func NewHeartbeat(idle time.Duration, fault string) *Message {
	return &Message{Type: THeartbeat, Heartbeat: &Heartbeat{IdleSeconds: int(idle / time.Second), Fault: fault}}
}

// NewEnd returns an end with a reason.
func NewEnd(reason string) *Message { return &Message{Type: TEnd, End: &End{Reason: reason}} }

// NewCommand wraps a command.
func NewCommand(c Command) *Message { return &Message{Type: TCommand, Command: &c} }

// NewError returns an error message.
func NewError(code, msg string) *Message {
	return &Message{Type: TError, Error: &Error{Code: code, Message: msg}}
}
