package slideshow

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/renameio/v2"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"github.com/jezek/xgb/xtest"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testimg"
	"undervdi/internal/xvfb"
	"undervdi/kioskd/screen"
)

var (
	red   = color.RGBA{0xe0, 0x10, 0x10, 0xff}
	green = color.RGBA{0x10, 0xc0, 0x20, 0xff}
	blue  = color.RGBA{0x10, 0x20, 0xd0, 0xff}
)

func writePNG(t *testing.T, path string, w, h int, c color.RGBA) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, c.A
	}
	var b bytes.Buffer
	png.Encode(&b, img)
	// Written atomically, as the ads mirror does: the watcher never sees
	// half a file.
	if err := renameio.WriteFile(path, b.Bytes(), 0o644, renameio.WithTempDir(filepath.Dir(path))); err != nil {
		t.Fatal(err)
	}
}

type rig struct {
	t    *testing.T
	x    *xvfb.Server
	show *Show
	log  *syncbuf.Buffer
}

func start(t *testing.T, dirs ...string) *rig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	x, err := xvfb.Start(ctx, 320, 240)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	r := &rig{t: t, x: x, log: &syncbuf.Buffer{}}
	r.show, err = Open(x.Display, Config{Dirs: dirs, Interval: time.Hour, Log: slog.New(slog.NewTextHandler(r.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.show.Close)
	r.show.SetVisible(true)
	go r.show.Run(ctx)
	return r
}

func near(a, b color.RGBA) bool {
	d := func(x, y uint8) int {
		if x > y {
			return int(x - y)
		}
		return int(y - x)
	}
	return d(a.R, b.R) < 8 && d(a.G, b.G) < 8 && d(a.B, b.B) < 8
}

// waitPixel waits until the screen's pixel at (x, y) is c; the deadline is
// the promise: changes show up within a second.
func (r *rig) waitPixel(x, y int, c color.RGBA, within time.Duration, what string) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	var got color.RGBA
	for {
		img, err := r.x.Screenshot()
		if err != nil {
			r.t.Fatal(err)
		}
		got = img.RGBAAt(x, y)
		if near(got, c) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: pixel (%d,%d) = %v after %v, want %v", what, x, y, got, within, c)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFollowsTheFolder(t *testing.T) {
	dir := t.TempDir()
	writePNG(t, filepath.Join(dir, "a-red.png"), 64, 48, red)
	r := start(t, dir)
	r.waitPixel(160, 120, red, 5*time.Second, "the first image")

	writePNG(t, filepath.Join(dir, "b-green.png"), 64, 48, green)
	r.waitPixel(160, 120, green, time.Second, "a new image")
	os.Remove(filepath.Join(dir, "b-green.png"))
	r.waitPixel(160, 120, red, time.Second, "after the image on screen was removed")
	writePNG(t, filepath.Join(dir, "a-red.png"), 64, 48, blue) // changed in place
	r.waitPixel(160, 120, blue, time.Second, "a changed image")

	os.WriteFile(filepath.Join(dir, "c-broken.png"), []byte("not a png at all"), 0o644)
	time.Sleep(500 * time.Millisecond)
	r.waitPixel(160, 120, blue, time.Second, "after an unreadable file arrived")
	if n := strings.Count(r.log.String(), "skipping an unreadable image"); n != 1 {
		t.Errorf("%d log lines about the unreadable file, want 1", n)
	}
	r.show.next() // turning pages skips it too, silently
	r.show.next()
	r.waitPixel(160, 120, blue, time.Second, "after turning pages")
	if n := strings.Count(r.log.String(), "skipping an unreadable image"); n != 1 {
		t.Errorf("%d log lines about the unreadable file after turning pages, want 1", n)
	}
}

// TestHugeImageNeverDecoded: an image whose header claims 40000×40000
// pixels is skipped on its header, with one log line, and the show goes
// on.
func TestHugeImageNeverDecoded(t *testing.T) {
	dir := t.TempDir()
	writePNG(t, filepath.Join(dir, "a-red.png"), 64, 48, red)
	if err := os.WriteFile(filepath.Join(dir, "b-huge.png"), testimg.HugePNG(40000, 40000), 0o644); err != nil {
		t.Fatal(err)
	}
	r := start(t, dir)
	r.waitPixel(160, 120, red, 5*time.Second, "the first image")
	r.show.next()
	r.show.next()
	r.waitPixel(160, 120, red, time.Second, "after turning pages past the huge image")
	log := r.log.String()
	if n := strings.Count(log, "skipping an unreadable image"); n != 1 || !strings.Contains(log, "40000×40000 pixels, more than the 64 million") {
		t.Errorf("log = %s\nwant one line skipping the 40000×40000 image on its size", log)
	}
	if _, err := CheckSize(bytes.NewReader(testimg.HugePNG(8000, 8000))); err != nil {
		t.Errorf("an 8000×8000 image refused: %v", err)
	}
}

func TestFallbackFolderAndAspect(t *testing.T) {
	ads, fallback := t.TempDir(), t.TempDir()
	writePNG(t, filepath.Join(fallback, "wide.png"), 200, 50, green) // 4:1 on a 4:3 screen
	r := start(t, ads, fallback)
	r.waitPixel(160, 120, green, 5*time.Second, "the fallback folder's image")
	r.waitPixel(160, 20, Background, time.Second, "above a wide image (aspect kept)")
	r.waitPixel(5, 120, green, time.Second, "the wide image's left edge (scaled to the width)")

	writePNG(t, filepath.Join(ads, "ad.png"), 64, 48, red)
	r.waitPixel(160, 120, red, time.Second, "an ad, which comes before the fallback")
	os.Remove(filepath.Join(ads, "ad.png"))
	r.waitPixel(160, 120, green, time.Second, "the fallback again once the ads are gone")
}

func TestEmptyFoldersAndText(t *testing.T) {
	r := start(t, t.TempDir())
	r.waitPixel(160, 120, Background, 5*time.Second, "no images: the background")
	r.show.SetText("Touch to start")
	deadline := time.Now().Add(time.Second)
	for {
		img, _ := r.x.Screenshot()
		white := 0
		for y := 240 - 240/7; y < 240; y++ {
			for x := 0; x < 320; x++ {
				if c := img.RGBAAt(x, y); c.R > 0xc0 && c.G > 0xc0 && c.B > 0xc0 {
					white++
				}
			}
		}
		if white > 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status text is not on screen (%d white pixels in the band)", white)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.waitPixel(160, 60, Background, time.Second, "above the text band")
}

func TestTouchAndBanner(t *testing.T) {
	r := start(t, t.TempDir())
	conn, err := xgb.NewConnDisplay(r.x.Display)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := screen.UseExtension(conn, "XTEST"); err != nil {
		t.Fatal(err)
	}
	root := xproto.Setup(conn).DefaultScreen(conn).Root
	time.Sleep(200 * time.Millisecond)
	xtest.FakeInput(conn, xproto.KeyPress, 38, 0, root, 0, 0, 0) // a key, as a visitor
	xtest.FakeInput(conn, xproto.KeyRelease, 38, 0, root, 0, 0, 0)
	conn.Sync()
	select {
	case <-r.show.Touches():
	case <-time.After(5 * time.Second):
		t.Fatal("a key press was not reported as a touch")
	}
	xtest.FakeInput(conn, xproto.ButtonPress, 1, 0, root, 100, 100, 0) // a finger on the screen
	xtest.FakeInput(conn, xproto.ButtonRelease, 1, 0, root, 100, 100, 0)
	conn.Sync()
	select {
	case <-r.show.Touches():
	case <-time.After(5 * time.Second):
		t.Fatal("a button press was not reported as a touch")
	}

	// The banner shows above a hidden slideshow (as over a session).
	r.show.SetVisible(false)
	r.show.Warn("Session ends in 30 s - touch to continue")
	img, _ := r.x.Screenshot()
	if xvfb.Colors(img.SubImage(image.Rect(0, 240-240/7, 320, 240)), 4) < 2 {
		t.Errorf("the banner is not on screen")
	}
	r.show.Warn("")
	time.Sleep(100 * time.Millisecond)
	img, _ = r.x.Screenshot()
	if xvfb.Colors(img, 4) != 1 {
		t.Errorf("the screen is not empty after the banner went away")
	}
}
