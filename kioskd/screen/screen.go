// Package screen is kioskd's hold on the X display. It is the display's
// window manager, a minimal one that makes every application window full
// screen (remote-viewer's kiosk mode only hides its toolbar under a window
// manager that grants full screen), reports how long the visitor has been
// idle (the XScreenSaver extension), and clears what the X server keeps of a
// session (cut buffers).
package screen

import (
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync"
	"time"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/screensaver"
	"github.com/jezek/xgb/xproto"
)

func init() {
	// xgb logs to stderr on its own: that there is no ~/.Xauthority (a
	// kiosk's X server needs none) and that a connection died (which the
	// caller learns and reports). kioskd says what matters itself.
	xgb.Logger = log.New(io.Discard, "", 0)
}

// Screen is a connection to the X display acting as its window manager.
type Screen struct {
	conn   *xgb.Conn
	root   xproto.Window
	w, h   uint16
	atoms  map[string]xproto.Atom
	log    *slog.Logger
	mapped chan xproto.Window
	done   chan struct{}

	mu      sync.Mutex
	clients map[xproto.Window]bool
}

// ErrOtherWM is returned when another window manager runs on the display.
var ErrOtherWM = errors.New("another window manager runs on this display")

// Open connects to the display and becomes its window manager.
func Open(display string, log *slog.Logger) (*Screen, error) {
	conn, err := xgb.NewConnDisplay(display)
	if err != nil {
		return nil, fmt.Errorf("X display %s: %w", display, err)
	}
	if err := UseExtension(conn, "MIT-SCREEN-SAVER"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("X display %s: %w (it gives the idle time)", display, err)
	}
	info := xproto.Setup(conn).DefaultScreen(conn)
	s := &Screen{conn: conn, root: info.Root, w: info.WidthInPixels, h: info.HeightInPixels, log: log,
		atoms: map[string]xproto.Atom{}, mapped: make(chan xproto.Window, 8), done: make(chan struct{}),
		clients: map[xproto.Window]bool{}}
	for _, name := range []string{"_NET_SUPPORTED", "_NET_SUPPORTING_WM_CHECK", "_NET_WM_NAME", "_NET_WM_STATE",
		"_NET_WM_STATE_FULLSCREEN", "_NET_ACTIVE_WINDOW", "UTF8_STRING", "WINDOW", "ATOM"} {
		r, err := xproto.InternAtom(conn, false, uint16(len(name)), name).Reply()
		if err != nil {
			conn.Close()
			return nil, err
		}
		s.atoms[name] = r.Atom
	}
	// Becoming the window manager: only one client may redirect the root's
	// substructure.
	err = xproto.ChangeWindowAttributesChecked(conn, s.root, xproto.CwEventMask,
		[]uint32{xproto.EventMaskSubstructureRedirect | xproto.EventMaskSubstructureNotify}).Check()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %v", ErrOtherWM, err)
	}
	if err := s.announce(); err != nil {
		conn.Close()
		return nil, err
	}
	go s.loop()
	return s, nil
}

// announce tells clients (GTK) that an EWMH window manager handles full
// screen: a check window, and the list of supported hints.
func (s *Screen) announce() error {
	check, err := xproto.NewWindowId(s.conn)
	if err != nil {
		return err
	}
	xproto.CreateWindow(s.conn, 0, check, s.root, -1, -1, 1, 1, 0, xproto.WindowClassInputOnly, 0, 0, nil)
	win := func(w xproto.Window) []byte {
		return []byte{byte(w), byte(w >> 8), byte(w >> 16), byte(w >> 24)}
	}
	a := s.atoms
	for _, target := range []xproto.Window{s.root, check} {
		xproto.ChangeProperty(s.conn, xproto.PropModeReplace, target, a["_NET_SUPPORTING_WM_CHECK"], a["WINDOW"], 32, 1, win(check))
	}
	name := "kioskd"
	xproto.ChangeProperty(s.conn, xproto.PropModeReplace, check, a["_NET_WM_NAME"], a["UTF8_STRING"], 8, uint32(len(name)), []byte(name))
	var supported []byte
	for _, n := range []string{"_NET_WM_STATE", "_NET_WM_STATE_FULLSCREEN", "_NET_ACTIVE_WINDOW"} {
		supported = append(supported, win(xproto.Window(a[n]))...)
	}
	return xproto.ChangePropertyChecked(s.conn, xproto.PropModeReplace, s.root, a["_NET_SUPPORTED"], a["ATOM"], 32,
		uint32(len(supported)/4), supported).Check()
}

// Mapped delivers each application window the window manager shows.
func (s *Screen) Mapped() <-chan xproto.Window { return s.mapped }

// Done is closed when the X connection is lost (the X server died).
func (s *Screen) Done() <-chan struct{} { return s.done }

// Close ends the connection.
func (s *Screen) Close() { s.conn.Close() }

// Size is the screen's size in pixels.
func (s *Screen) Size() (int, int) { return int(s.w), int(s.h) }

func (s *Screen) loop() {
	defer close(s.done)
	for {
		ev, err := s.conn.WaitForEvent()
		if ev == nil && err == nil {
			return
		}
		switch e := ev.(type) {
		case xproto.MapRequestEvent:
			s.manage(e.Window)
		case xproto.ConfigureRequestEvent:
			// Every application window is full screen, whatever it asks.
			s.fullscreen(e.Window)
		case xproto.ClientMessageEvent:
			if e.Type == s.atoms["_NET_WM_STATE"] || e.Type == s.atoms["_NET_ACTIVE_WINDOW"] {
				s.fullscreen(e.Window)
				xproto.SetInputFocus(s.conn, xproto.InputFocusPointerRoot, e.Window, xproto.TimeCurrentTime)
			}
		case xproto.DestroyNotifyEvent:
			s.mu.Lock()
			delete(s.clients, e.Window)
			s.mu.Unlock()
		}
	}
}

// manage shows a new application window full screen, on top, with the
// keyboard.
func (s *Screen) manage(w xproto.Window) {
	s.mu.Lock()
	s.clients[w] = true
	s.mu.Unlock()
	s.fullscreen(w)
	xproto.MapWindow(s.conn, w)
	xproto.ConfigureWindow(s.conn, w, xproto.ConfigWindowStackMode, []uint32{xproto.StackModeAbove})
	xproto.SetInputFocus(s.conn, xproto.InputFocusPointerRoot, w, xproto.TimeCurrentTime)
	s.conn.Sync()
	select {
	case s.mapped <- w:
	default:
	}
}

// fullscreen sizes w to the screen and records the full-screen state, which
// is what makes GTK consider the window full screen.
func (s *Screen) fullscreen(w xproto.Window) {
	xproto.ConfigureWindow(s.conn, w,
		xproto.ConfigWindowX|xproto.ConfigWindowY|xproto.ConfigWindowWidth|xproto.ConfigWindowHeight|xproto.ConfigWindowBorderWidth,
		[]uint32{0, 0, uint32(s.w), uint32(s.h), 0})
	fs := s.atoms["_NET_WM_STATE_FULLSCREEN"]
	xproto.ChangeProperty(s.conn, xproto.PropModeReplace, w, s.atoms["_NET_WM_STATE"], s.atoms["ATOM"], 32, 1,
		[]byte{byte(fs), byte(fs >> 8), byte(fs >> 16), byte(fs >> 24)})
}

// Idle is how long since the visitor last touched a key, the pointer or the
// screen, from the X server.
func (s *Screen) Idle() (time.Duration, error) {
	r, err := screensaver.QueryInfo(s.conn, xproto.Drawable(s.root)).Reply()
	if err != nil {
		return 0, err
	}
	return time.Duration(r.MsSinceUserInput) * time.Millisecond, nil
}

// ClearSession removes what the X server keeps from a session besides its
// windows: the cut buffers (an old clipboard) on the root window. Selections
// die with the client that owned them.
func (s *Screen) ClearSession() error {
	var errs []error
	for i := range 8 {
		name := fmt.Sprintf("CUT_BUFFER%d", i)
		r, err := xproto.InternAtom(s.conn, true, uint16(len(name)), name).Reply()
		if err != nil || r.Atom == 0 {
			continue
		}
		errs = append(errs, xproto.DeletePropertyChecked(s.conn, s.root, r.Atom).Check())
	}
	return errors.Join(errs...)
}

// UseExtension readies an X extension on one connection, like the
// extension package's Init, but without Init's writes to xgb's package-wide
// event and error tables, which race with every other connection's reader.
// It is for extensions used for requests only (XScreenSaver's QueryInfo,
// XTest's FakeInput), whose events and errors are never expected.
func UseExtension(c *xgb.Conn, name string) error {
	r, err := xproto.QueryExtension(c, uint16(len(name)), name).Reply()
	if err != nil {
		return err
	}
	if !r.Present {
		return fmt.Errorf("no %s extension", name)
	}
	c.ExtLock.Lock()
	c.Extensions[name] = r.MajorOpcode
	c.ExtLock.Unlock()
	return nil
}
