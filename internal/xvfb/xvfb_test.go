package xvfb

import (
	"image"
	"image/color"
	"image/draw"
	"strings"
	"testing"
)

var (
	grey  = color.RGBA{0x3c, 0x3c, 0x3c, 0xff}
	black = color.RGBA{0, 0, 0, 0xff}
	text  = color.RGBA{0xaa, 0xaa, 0xaa, 0xff}
)

// console draws a text console into r of img: black with lines of text,
// lines of them if busy.
func console(img *image.RGBA, r image.Rectangle, lines int) {
	draw.Draw(img, r, image.NewUniform(black), image.Point{}, draw.Src)
	for l := 0; l < lines; l++ {
		y := r.Min.Y + 4 + l*18
		if y+10 > r.Max.Y {
			break
		}
		for x := r.Min.X + 2; x < r.Min.X+r.Dx()*2/3; x += 3 {
			draw.Draw(img, image.Rect(x, y, x+2, y+10), image.NewUniform(text), image.Point{}, draw.Src)
		}
	}
}

func blank(fill color.RGBA) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, 800, 600))
	draw.Draw(img, img.Bounds(), image.NewUniform(fill), image.Point{}, draw.Src)
	return img
}

func TestConsoleFullScreen(t *testing.T) {
	// A 720x400 console scaled to fit 800x600: grey bars above and below.
	letterboxed := blank(grey)
	console(letterboxed, image.Rect(0, 78, 800, 523), 12)

	// The same with a console full of text, as a slow guest's kernel
	// prints: more light, less black, still full screen.
	busy := blank(grey)
	console(busy, image.Rect(0, 78, 800, 523), 24)

	// A window: a toolbar above the console, which does not fill the width.
	windowed := blank(grey)
	draw.Draw(windowed, image.Rect(0, 0, 800, 40), image.NewUniform(color.RGBA{0xf0, 0xf0, 0xf0, 0xff}), image.Point{}, draw.Src)
	console(windowed, image.Rect(40, 60, 760, 460), 12)

	// A window as wide as the screen, with its toolbar.
	wideWindow := blank(grey)
	console(wideWindow, image.Rect(0, 78, 800, 523), 12)
	draw.Draw(wideWindow, image.Rect(10, 10, 60, 40), image.NewUniform(color.RGBA{0x20, 0x60, 0xd0, 0xff}), image.Point{}, draw.Src)

	// A window with a dark icon in its toolbar, above the console.
	darkIcon := blank(grey)
	console(darkIcon, image.Rect(0, 78, 800, 523), 12)
	draw.Draw(darkIcon, image.Rect(0, 0, 800, 40), image.NewUniform(color.RGBA{0xf0, 0xf0, 0xf0, 0xff}), image.Point{}, draw.Src)
	draw.Draw(darkIcon, image.Rect(10, 10, 30, 30), image.NewUniform(black), image.Point{}, draw.Src)

	for _, tc := range []struct {
		name string
		img  *image.RGBA
		ok   bool
		why  string
	}{
		{"letterboxed", letterboxed, true, ""},
		{"busy console", busy, true, ""},
		{"windowed", windowed, false, "the console is 720x400"},
		{"wide window", wideWindow, false, "something besides the console"},
		{"a dark icon in a toolbar", darkIcon, false, "is not one console"},
		{"the viewer's grey alone", blank(grey), false, "no text console"},
	} {
		ok, why := ConsoleFullScreen(tc.img)
		if ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("%s: %v, %q; want %v, %q", tc.name, ok, why, tc.ok, tc.why)
		}
		if tc.ok {
			if _, black, _ := ShowsConsole(tc.img); tc.name == "busy console" && black > 0.6 {
				t.Errorf("the busy console is %.0f%% black: it does not test a console below the old 60%% mark", 100*black)
			}
		}
	}
}
