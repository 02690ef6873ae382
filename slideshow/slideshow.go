// Package slideshow shows the kiosk's advertising images on an X display
// while nobody uses it: full screen, each image scaled to fit and centred,
// with a line of status text, and a touch (key or button press) reported to
// the caller. Folders are watched, so images added, changed or removed show
// up within a second; between changes nothing is redrawn.
package slideshow

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
)

// Config says what to show.
type Config struct {
	// Dirs are the image folders, in order of preference: the first that
	// holds a readable image is shown (the ads mirror first, then the
	// fallback background folder, as the original's animation_folder and
	// background_folder).
	Dirs     []string
	Interval time.Duration // per image; the original ran feh -D1
	Log      *slog.Logger
	// What counts as a touch: key presses, button presses (a touch screen
	// sends these), or, by default, both.
	NoKeys, NoButtons bool
}

// Show is a full-screen slideshow window.
type Show struct {
	cfg     Config
	conn    *xgb.Conn
	screen  *xproto.ScreenInfo
	win     xproto.Window
	pix     xproto.Pixmap
	gc      xproto.Gcontext
	w, h    int
	touches chan struct{}
	kick    chan struct{}
	banner  *Banner
	drawMu  sync.Mutex // one frame at a time

	mu      sync.Mutex
	text    string
	visible bool
	current string            // file shown now
	picture image.Image       // current, scaled to the screen
	files   []string          // the rotation
	bad     map[string]string // unreadable files, logged once per (path, mtime)
	known   map[string]time.Time
}

// Open connects to the X display (e.g. ":0") and creates the slideshow's
// window, not yet shown.
func Open(display string, cfg Config) (*Show, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	conn, err := xgb.NewConnDisplay(display)
	if err != nil {
		return nil, fmt.Errorf("slideshow: X display %s: %w", display, err)
	}
	s := &Show{cfg: cfg, conn: conn, touches: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		bad: map[string]string{}, known: map[string]time.Time{}}
	s.screen = xproto.Setup(conn).DefaultScreen(conn)
	if s.screen.RootDepth != 24 && s.screen.RootDepth != 32 {
		conn.Close()
		return nil, fmt.Errorf("slideshow: screen depth %d: only 24 and 32 bit colour are supported", s.screen.RootDepth)
	}
	s.w, s.h = int(s.screen.WidthInPixels), int(s.screen.HeightInPixels)
	if s.win, err = newWindow(conn, s.screen, 0, 0, s.w, s.h); err != nil {
		conn.Close()
		return nil, err
	}
	if s.pix, err = xproto.NewPixmapId(conn); err != nil {
		conn.Close()
		return nil, err
	}
	xproto.CreatePixmap(conn, s.screen.RootDepth, s.pix, xproto.Drawable(s.screen.Root), uint16(s.w), uint16(s.h))
	if s.gc, err = xproto.NewGcontextId(conn); err != nil {
		conn.Close()
		return nil, err
	}
	xproto.CreateGC(conn, s.gc, xproto.Drawable(s.win), 0, nil)
	s.banner, err = newBanner(conn, s.screen)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// newWindow makes an override-redirect window: no window manager moves,
// decorates or hides it, so the kiosk needs none.
func newWindow(conn *xgb.Conn, screen *xproto.ScreenInfo, x, y, w, h int) (xproto.Window, error) {
	win, err := xproto.NewWindowId(conn)
	if err != nil {
		return 0, err
	}
	err = xproto.CreateWindowChecked(conn, screen.RootDepth, win, screen.Root, int16(x), int16(y), uint16(w), uint16(h), 0,
		xproto.WindowClassInputOutput, screen.RootVisual,
		xproto.CwBackPixel|xproto.CwOverrideRedirect|xproto.CwEventMask,
		[]uint32{0, 1, xproto.EventMaskExposure | xproto.EventMaskKeyPress | xproto.EventMaskButtonPress}).Check()
	if err != nil {
		return 0, fmt.Errorf("slideshow: creating a window: %w", err)
	}
	return win, nil
}

// Touches delivers a value for each touch (key or button press) on the
// slideshow or its banner; touches that come faster than they are read
// are merged.
func (s *Show) Touches() <-chan struct{} { return s.touches }

// Window is the slideshow's X window.
func (s *Show) Window() xproto.Window { return s.win }

// Close ends the X connection.
func (s *Show) Close() { s.conn.Close() }

// SetText sets the status line ("" for none).
func (s *Show) SetText(text string) {
	s.mu.Lock()
	changed := s.text != text
	s.text = text
	s.mu.Unlock()
	if changed {
		s.redraw()
	}
}

// SetVisible shows the slideshow above everything and gives it the
// keyboard, or hides it (during a session).
func (s *Show) SetVisible(v bool) {
	s.mu.Lock()
	s.visible = v
	s.mu.Unlock()
	if v {
		xproto.MapWindow(s.conn, s.win)
		xproto.ConfigureWindow(s.conn, s.win, xproto.ConfigWindowStackMode, []uint32{xproto.StackModeAbove})
		xproto.SetInputFocus(s.conn, xproto.InputFocusPointerRoot, s.win, xproto.TimeCurrentTime)
		s.redraw()
	} else {
		xproto.UnmapWindow(s.conn, s.win)
	}
	s.conn.Sync()
}

// Warn shows text in a banner above everything, the viewer included (the
// idle warning during a session); "" hides it.
func (s *Show) Warn(text string) { s.banner.set(text) }

// Run shows images until ctx ends: it watches the folders, turns the pages,
// and answers the X server.
func (s *Show) Run(ctx context.Context) error {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer watcher.Close()
	for _, d := range s.cfg.Dirs {
		if err := watcher.Add(d); err != nil {
			s.cfg.Log.Warn("slideshow: cannot watch an image folder", "dir", d, "err", err)
		}
	}
	events := make(chan xgb.Event, 16)
	go func() {
		defer close(events)
		for {
			ev, err := s.conn.WaitForEvent()
			if ev == nil && err == nil {
				return // connection closed
			}
			if ev != nil {
				events <- ev
			}
		}
	}()
	s.rescan(true)
	page := time.NewTimer(s.cfg.Interval)
	defer page.Stop()
	var settle <-chan time.Time // folder changes arrive in bursts: wait for quiet
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				return errors.New("slideshow: the X connection closed")
			}
			s.handle(ev)
		case <-watcher.Events:
			settle = time.After(100 * time.Millisecond)
		case err := <-watcher.Errors:
			s.cfg.Log.Warn("slideshow: watching the image folders", "err", err)
		case <-settle:
			settle = nil
			if s.rescan(false) {
				page.Reset(s.cfg.Interval)
			}
		case <-page.C:
			s.next()
			page.Reset(s.cfg.Interval)
		case <-s.kick:
			s.redraw()
		}
	}
}

func (s *Show) handle(ev xgb.Event) {
	switch e := ev.(type) {
	case xproto.ExposeEvent:
		if e.Window == s.win && e.Count == 0 {
			xproto.CopyArea(s.conn, xproto.Drawable(s.pix), xproto.Drawable(s.win), s.gc, 0, 0, 0, 0, uint16(s.w), uint16(s.h))
		} else if e.Window == s.banner.win {
			s.banner.expose()
		}
	case xproto.KeyPressEvent:
		if !s.cfg.NoKeys {
			s.touch()
		}
	case xproto.ButtonPressEvent:
		if !s.cfg.NoButtons {
			s.touch()
		}
	}
}

func (s *Show) touch() {
	select {
	case s.touches <- struct{}{}:
	default:
	}
}

// images lists the readable-looking images of the first folder that has
// any: JPEG, PNG and GIF by name, sorted.
func (s *Show) images() []string {
	for _, d := range s.cfg.Dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		var out []string
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue // hidden, or a mirror's file being written
			}
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".jpg", ".jpeg", ".png", ".gif":
				if e.Type().IsRegular() && s.bad[filepath.Join(d, e.Name())] == "" {
					out = append(out, filepath.Join(d, e.Name()))
				}
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// rescan reads the folders again. A new or changed image is shown at once
// (that is how an operator sees a new ad arrive); if the image on screen
// went away, the next one is. It reports whether the screen changed.
func (s *Show) rescan(first bool) bool {
	files := s.images()
	mtimes := map[string]time.Time{}
	var fresh string
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			continue
		}
		mtimes[f] = st.ModTime()
		if old, ok := s.known[f]; !first && (!ok || !old.Equal(st.ModTime())) {
			fresh = f
		}
	}
	// A file that changed is worth another try even if it was unreadable.
	for f, why := range s.bad {
		if st, err := os.Stat(f); err != nil || st.ModTime().String() != why {
			delete(s.bad, f)
		}
	}
	s.mu.Lock()
	s.known, s.files = mtimes, files
	cur := s.current
	s.mu.Unlock()
	switch {
	case fresh != "":
		s.showFile(fresh)
	case first || !slices.Contains(files, cur):
		s.next()
	default:
		return false
	}
	return true
}

// next shows the image after the current one.
func (s *Show) next() {
	s.mu.Lock()
	files, cur := s.files, s.current
	s.mu.Unlock()
	if len(files) == 0 {
		s.showFile("")
		return
	}
	i := slices.Index(files, cur)
	s.showFile(files[(i+1)%len(files)])
}

// showFile makes path the current image and draws it; an unreadable image
// is skipped with one log line.
func (s *Show) showFile(path string) {
	for path != "" {
		err := s.load(path)
		if err == nil {
			break
		}
		st, _ := os.Stat(path)
		why := ""
		if st != nil {
			why = st.ModTime().String()
		}
		s.bad[path] = why
		s.cfg.Log.Warn("slideshow: skipping an unreadable image", "file", path, "err", err)
		s.mu.Lock()
		s.files = slices.DeleteFunc(s.files, func(f string) bool { return f == path })
		files := s.files
		s.mu.Unlock()
		path = ""
		if len(files) > 0 {
			path = files[0]
		}
	}
	if path == "" {
		s.mu.Lock()
		s.current, s.picture = "", nil
		s.mu.Unlock()
	}
	s.redraw()
}

// redraw draws the current picture and text, one frame at a time (state
// changes and page turns come from different goroutines).
func (s *Show) redraw() {
	s.drawMu.Lock()
	defer s.drawMu.Unlock()
	s.mu.Lock()
	pic, text := s.picture, s.text
	s.mu.Unlock()
	frame := compose(s.w, s.h, pic, text)
	if err := putImage(s.conn, xproto.Drawable(s.pix), s.gc, frame); err != nil {
		s.cfg.Log.Warn("slideshow: drawing", "err", err)
		return
	}
	// One copy from the finished pixmap: the window never shows a half-drawn frame.
	xproto.CopyArea(s.conn, xproto.Drawable(s.pix), xproto.Drawable(s.win), s.gc, 0, 0, 0, 0, uint16(s.w), uint16(s.h))
	s.conn.Sync()
}

// Background is shown around images and when there are none.
var Background = color.RGBA{0x10, 0x18, 0x28, 0xff}
