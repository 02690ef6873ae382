package slideshow

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/gif" // GIF: the first frame, shown still
	_ "image/jpeg"
	_ "image/png"
	"io"
	"os"
	"sync"

	xdraw "golang.org/x/image/draw"
	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
)

// MaxPixels is the most pixels an image may have to be shown (an 8K photo
// has 33 million). Decoding allocates 4 bytes a pixel before scaling: a
// 40000×40000 PNG of a few kilobytes would take 6 GiB of the kiosk's RAM.
const MaxPixels = 64 << 20

// CheckSize reads an image's header (nothing more is decoded) and refuses
// one larger than MaxPixels, or one of a format the slideshow cannot show.
func CheckSize(r io.Reader) (image.Config, error) {
	cfg, format, err := image.DecodeConfig(r)
	switch {
	case err != nil:
		return cfg, err
	case cfg.Width <= 0 || cfg.Height <= 0:
		return cfg, fmt.Errorf("a %s image of %d×%d pixels", format, cfg.Width, cfg.Height)
	case int64(cfg.Width)*int64(cfg.Height) > MaxPixels:
		return cfg, fmt.Errorf("a %s image of %d×%d pixels, more than the %d million shown", format, cfg.Width, cfg.Height, MaxPixels>>20)
	}
	return cfg, nil
}

// load decodes an image file, once its header says its size is sane, and
// scales it to fit the screen.
func (s *Show) load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := CheckSize(f); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	img, _, err := image.Decode(f)
	if err != nil {
		return err
	}
	pic := fit(img, s.w, s.h)
	s.mu.Lock()
	s.current, s.picture = path, pic
	s.mu.Unlock()
	return nil
}

// fit scales img to the largest size that fits w x h with its aspect kept.
func fit(img image.Image, w, h int) image.Image {
	b := img.Bounds()
	if b.Dx() == 0 || b.Dy() == 0 {
		return img
	}
	sw, sh := w, b.Dy()*w/b.Dx()
	if sh > h {
		sw, sh = b.Dx()*h/b.Dy(), h
	}
	dst := image.NewRGBA(image.Rect(0, 0, max(sw, 1), max(sh, 1)))
	xdraw.ApproxBiLinear.Scale(dst, dst.Bounds(), img, b, xdraw.Src, nil)
	return dst
}

// compose draws a frame: the picture centred on the background, and the
// status text in a band at the bottom.
func compose(w, h int, pic image.Image, text string) *image.RGBA {
	frame := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(frame, frame.Bounds(), image.NewUniform(Background), image.Point{}, draw.Src)
	if pic != nil {
		pb := pic.Bounds()
		at := image.Pt((w-pb.Dx())/2, (h-pb.Dy())/2)
		draw.Draw(frame, pb.Sub(pb.Min).Add(at), pic, pb.Min, draw.Src)
	}
	if text != "" {
		drawBand(frame, image.Rect(0, h-h/7, w, h), text)
	}
	return frame
}

// drawBand darkens r and writes text in it, as large as fits.
func drawBand(dst *image.RGBA, r image.Rectangle, text string) {
	draw.Draw(dst, r, image.NewUniform(color.RGBA{0, 0, 0, 0xc0}), image.Point{}, draw.Over)
	drawText(dst, r, text, float64(r.Dy())/3)
}

// Faces cache glyphs and are not safe for concurrent use: textMu is held
// while text is measured and drawn.
var (
	textMu sync.Mutex
	faces  = map[float64]font.Face{}
)

// face returns Go's own sans-serif font at size: the kiosk needs no X
// fonts. The caller holds textMu.
func face(size float64) font.Face {
	if f, ok := faces[size]; ok {
		return f
	}
	ttf, err := opentype.Parse(goregular.TTF)
	if err != nil {
		panic(err) // the embedded font is always valid
	}
	f, err := opentype.NewFace(ttf, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		panic(err)
	}
	faces[size] = f
	return f
}

// drawText centres white text in r, shrinking it until it fits.
func drawText(dst draw.Image, r image.Rectangle, text string, size float64) {
	textMu.Lock()
	defer textMu.Unlock()
	for ; size > 8; size *= 0.9 {
		f := face(size)
		d := &font.Drawer{Dst: dst, Src: image.White, Face: f}
		width := d.MeasureString(text).Ceil()
		if width > r.Dx()*9/10 {
			continue
		}
		m := f.Metrics()
		y := r.Min.Y + (r.Dy()+m.Ascent.Ceil()-m.Descent.Ceil())/2
		d.Dot = fixed.P(r.Min.X+(r.Dx()-width)/2, y)
		d.DrawString(text)
		return
	}
}
