package screen_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"github.com/jezek/xgb/xtest"

	"undervdi/internal/xvfb"
	. "undervdi/kioskd/screen"
)

func setup(t *testing.T) (*xvfb.Server, *Screen) {
	t.Helper()
	x, err := xvfb.Start(context.Background(), 400, 300)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	s, err := Open(x.Display, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return x, s
}

// TestWindowsGoFullScreen plays an application that maps a small window:
// the window manager makes it full screen and says so in _NET_WM_STATE.
func TestWindowsGoFullScreen(t *testing.T) {
	x, s := setup(t)
	c, err := xgb.NewConnDisplay(x.Display)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := xproto.Setup(c).DefaultScreen(c)
	w, _ := xproto.NewWindowId(c)
	xproto.CreateWindow(c, info.RootDepth, w, info.Root, 10, 20, 120, 80, 0, xproto.WindowClassInputOutput, info.RootVisual, 0, nil)
	xproto.MapWindow(c, w)
	c.Sync()
	select {
	case got := <-s.Mapped():
		if got != w {
			t.Errorf("Mapped() = %v, want %v", got, w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the window manager did not map the window")
	}
	geo, err := xproto.GetGeometry(c, xproto.Drawable(w)).Reply()
	if err != nil {
		t.Fatal(err)
	}
	if geo.X != 0 || geo.Y != 0 || geo.Width != 400 || geo.Height != 300 {
		t.Errorf("window geometry = %d,%d %dx%d, want 0,0 400x300", geo.X, geo.Y, geo.Width, geo.Height)
	}
	state, _ := xproto.InternAtom(c, true, uint16(len("_NET_WM_STATE")), "_NET_WM_STATE").Reply()
	fs, _ := xproto.InternAtom(c, true, uint16(len("_NET_WM_STATE_FULLSCREEN")), "_NET_WM_STATE_FULLSCREEN").Reply()
	prop, err := xproto.GetProperty(c, false, w, state.Atom, xproto.GetPropertyTypeAny, 0, 8).Reply()
	if err != nil || prop.ValueLen != 1 || xgb.Get32(prop.Value) != uint32(fs.Atom) {
		t.Errorf("_NET_WM_STATE = %+v, %v; want [_NET_WM_STATE_FULLSCREEN]", prop, err)
	}
	// A window that asks for another size stays full screen.
	xproto.ConfigureWindow(c, w, xproto.ConfigWindowWidth|xproto.ConfigWindowHeight, []uint32{50, 50})
	c.Sync()
	time.Sleep(100 * time.Millisecond)
	if geo, _ := xproto.GetGeometry(c, xproto.Drawable(w)).Reply(); geo.Width != 400 {
		t.Errorf("after asking for 50x50 the window is %dx%d, want full screen", geo.Width, geo.Height)
	}
}

func TestOnlyOneWindowManager(t *testing.T) {
	x, _ := setup(t)
	if _, err := Open(x.Display, slog.New(slog.DiscardHandler)); !errors.Is(err, ErrOtherWM) {
		t.Errorf("a second Open = %v, want ErrOtherWM", err)
	}
}

func TestIdleAndCutBuffers(t *testing.T) {
	x, s := setup(t)
	c, _ := xgb.NewConnDisplay(x.Display)
	defer c.Close()
	UseExtension(c, "XTEST")
	root := xproto.Setup(c).DefaultScreen(c).Root
	time.Sleep(300 * time.Millisecond)
	if idle, err := s.Idle(); err != nil || idle < 250*time.Millisecond {
		t.Errorf("Idle() with no input = %v, %v; want at least 250ms", idle, err)
	}
	xtest.FakeInput(c, xproto.MotionNotify, 0, 0, root, 50, 50, 0)
	c.Sync()
	if idle, _ := s.Idle(); idle > 200*time.Millisecond {
		t.Errorf("Idle() right after input = %v", idle)
	}
	// The visitor copied something into a cut buffer.
	cb, _ := xproto.InternAtom(c, false, uint16(len("CUT_BUFFER0")), "CUT_BUFFER0").Reply()
	xproto.ChangeProperty(c, xproto.PropModeReplace, root, cb.Atom, xproto.AtomString, 8, 6, []byte("secret"))
	c.Sync()
	if err := s.ClearSession(); err != nil {
		t.Fatal(err)
	}
	prop, _ := xproto.GetProperty(c, false, root, cb.Atom, xproto.GetPropertyTypeAny, 0, 8).Reply()
	if prop.ValueLen != 0 {
		t.Errorf("CUT_BUFFER0 still holds %q after ClearSession", prop.Value)
	}
}

func TestXServerStops(t *testing.T) {
	x, err := StartX(context.Background(), "Xvfb :77 -screen 0 100x100x24 -nolisten tcp -noreset", ":77")
	if err != nil {
		t.Fatal(err)
	}
	x.Stop()
	select {
	case <-x.Done():
	default:
		t.Errorf("Done not closed after Stop")
	}
}
