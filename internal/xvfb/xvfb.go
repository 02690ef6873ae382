// Package xvfb runs a private X server (Xvfb) for tests and the demo, and
// takes screenshots of it through the X protocol (jezek/xgb), so tests can
// check what a real program put on the screen.
package xvfb

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"

	"undervdi/kioskd/screen"
)

// Server is a running Xvfb.
type Server struct {
	Display string // e.g. ":93"
	Width   int
	Height  int
	cmd     *exec.Cmd
	done    chan struct{}
}

// Start runs Xvfb on a free display with a screen of w x h at 24 bits, and
// waits until it accepts clients. Xvfb picks the display itself and says
// which (-displayfd), so parallel test processes never race for one.
func Start(ctx context.Context, w, h int) (*Server, error) {
	if _, err := exec.LookPath("Xvfb"); err != nil {
		return nil, fmt.Errorf("Xvfb not installed (make deps): %w", err)
	}
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	s := &Server{Width: w, Height: h, done: make(chan struct{})}
	// -ac: tests run clients as other users (a kiosk user) too.
	// -noreset: Xvfb would otherwise reset whenever its last client leaves,
	// and a client connecting at that moment is thrown out.
	s.cmd = exec.Command("Xvfb", "-displayfd", "3", "-screen", "0", fmt.Sprintf("%dx%dx24", w, h), "-nolisten", "tcp", "-ac", "-noreset")
	s.cmd.ExtraFiles = []*os.File{wr}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		wr.Close()
		return nil, err
	}
	wr.Close()
	go func() { s.cmd.Wait(); close(s.done) }()
	num := make(chan string, 1)
	go func() {
		b := make([]byte, 16)
		n, _ := r.Read(b)
		num <- strings.TrimSpace(string(b[:n]))
	}()
	select {
	case n := <-num:
		if n == "" {
			s.Stop()
			return nil, errors.New("Xvfb exited without a display")
		}
		s.Display = ":" + n
	case <-time.After(time.Minute): // a hang guard: a busy machine took over 15 s
		s.Stop()
		return nil, errors.New("Xvfb did not start within a minute")
	case <-ctx.Done():
		s.Stop()
		return nil, ctx.Err()
	}
	if err := screen.WaitDisplay(ctx, s.Display, s.done, 15*time.Second); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Env returns the environment for X clients of this server.
func (s *Server) Env() []string { return append(os.Environ(), "DISPLAY="+s.Display) }

// Stop ends Xvfb (by its PID).
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
}

// Screenshot returns the root window's pixels.
func (s *Server) Screenshot() (*image.RGBA, error) {
	c, err := xgb.NewConnDisplay(s.Display)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return Capture(c, xproto.Drawable(xproto.Setup(c).DefaultScreen(c).Root))
}

// Capture reads a drawable's pixels over an X connection (what kioskd's
// screenshots read).
func Capture(c *xgb.Conn, d xproto.Drawable) (*image.RGBA, error) { return screen.Pixels(c, d) }

// Colors counts the distinct colors in img, up to max (a blank screen has 1).
func Colors(img image.Image, max int) int {
	seen := map[color.RGBA]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), 0xff}] = true
			if len(seen) >= max {
				return max
			}
		}
	}
	return len(seen)
}

// SavePNG writes img to path (for a person looking at a failed test).
func SavePNG(img image.Image, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

// ShowsConsole reports whether img shows a VM's text console, as the tiny
// golden VM has: a large black area (the VGA text screen) with light text
// in it, which no viewer or slideshow window has by itself. It returns the
// shares of black and light pixels too.
func ShowsConsole(img *image.RGBA) (ok bool, black, light float64) {
	for i := 0; i < len(img.Pix); i += 4 {
		r, g, b := img.Pix[i], img.Pix[i+1], img.Pix[i+2]
		switch {
		case r < 8 && g < 8 && b < 8:
			black++
		case r > 0x90 && g > 0x90 && b > 0x90: // VGA text is 0xaaaaaa
			light++
		}
	}
	n := float64(len(img.Pix) / 4)
	black, light = black/n, light/n
	return black > 0.2 && light > 0.005, black, light
}

// ConsoleFullScreen reports whether img shows a VM's text console as a
// full-screen viewer shows it: the console (ShowsConsole) spans the screen's
// width or height, as a viewer that scales it to fit does, and everything
// outside the console is one plain colour: no menu, toolbar or window frame.
// It does not depend on how much text the console holds (a slow guest's
// kernel prints more). When it is false, why says what was seen.
func ConsoleFullScreen(img *image.RGBA) (ok bool, why string) {
	shows, black, light := ShowsConsole(img)
	if !shows {
		return false, fmt.Sprintf("no text console (%.1f%% black, %.2f%% light)", 100*black, 100*light)
	}
	b := img.Bounds()
	box := image.Rectangle{Min: b.Max, Max: b.Min} // of the black pixels
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if c := img.RGBAAt(x, y); c.R < 8 && c.G < 8 && c.B < 8 {
				box = box.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	if box.Dx()*100 < b.Dx()*97 && box.Dy()*100 < b.Dy()*97 {
		return false, fmt.Sprintf("the console is %dx%d of a %dx%d screen", box.Dx(), box.Dy(), b.Dx(), b.Dy())
	}
	// The console's own edges are its black background: dark pixels of
	// something else (a toolbar's icon) do not stretch the box over it.
	for _, edge := range []image.Rectangle{
		image.Rect(box.Min.X, box.Min.Y, box.Max.X, box.Min.Y+1), image.Rect(box.Min.X, box.Max.Y-1, box.Max.X, box.Max.Y),
		image.Rect(box.Min.X, box.Min.Y, box.Min.X+1, box.Max.Y), image.Rect(box.Max.X-1, box.Min.Y, box.Max.X, box.Max.Y),
	} {
		dark, n := 0, 0
		for y := edge.Min.Y; y < edge.Max.Y; y++ {
			for x := edge.Min.X; x < edge.Max.X; x++ {
				if c := img.RGBAAt(x, y); c.R < 8 && c.G < 8 && c.B < 8 {
					dark++
				}
				n++
			}
		}
		if dark*4 < n*3 {
			return false, fmt.Sprintf("the dark area %v is not one console: its edge %v is %d%% dark", box, edge, 100*dark/n)
		}
	}
	var plain color.RGBA
	seen := false
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if (image.Point{x, y}).In(box) {
				continue
			}
			c := img.RGBAAt(x, y)
			if !seen {
				plain, seen = c, true
			} else if absDiff(c.R, plain.R) > 8 || absDiff(c.G, plain.G) > 8 || absDiff(c.B, plain.B) > 8 {
				return false, fmt.Sprintf("something besides the console at (%d,%d): %v, around it %v", x, y, c, plain)
			}
		}
	}
	return true, ""
}

func absDiff(a, b uint8) uint8 {
	if a > b {
		return a - b
	}
	return b - a
}
