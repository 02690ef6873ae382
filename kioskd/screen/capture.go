package screen

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"golang.org/x/image/draw"
)

// Pixels reads a drawable's pixels over an X connection (24/32-bit
// TrueColor, as Xvfb and real kiosk screens run).
func Pixels(c *xgb.Conn, d xproto.Drawable) (*image.RGBA, error) {
	geo, err := xproto.GetGeometry(c, d).Reply()
	if err != nil {
		return nil, err
	}
	w, h := int(geo.Width), int(geo.Height)
	img, err := xproto.GetImage(c, xproto.ImageFormatZPixmap, d, 0, 0, geo.Width, geo.Height, 0xffffffff).Reply()
	if err != nil {
		return nil, err
	}
	if len(img.Data) < w*h*4 {
		return nil, fmt.Errorf("screenshot: %d bytes for %dx%d at depth %d", len(img.Data), w, h, img.Depth)
	}
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < w*h; i++ {
		b, g, r := img.Data[4*i], img.Data[4*i+1], img.Data[4*i+2]
		out.Pix[4*i], out.Pix[4*i+1], out.Pix[4*i+2], out.Pix[4*i+3] = r, g, b, 0xff
	}
	return out, nil
}

// ScreenshotWidth is how wide an operator's screenshot is: enough to see
// the slideshow, small enough to cross the kiosk protocol in a few parts.
const ScreenshotWidth = 640

// Screenshot is the screen, scaled to ScreenshotWidth, as JPEG.
func (s *Screen) Screenshot() ([]byte, error) {
	full, err := Pixels(s.conn, xproto.Drawable(s.root))
	if err != nil {
		return nil, fmt.Errorf("reading the screen: %w", err)
	}
	b := full.Bounds()
	w := min(ScreenshotWidth, b.Dx())
	small := image.NewRGBA(image.Rect(0, 0, w, max(1, b.Dy()*w/max(b.Dx(), 1))))
	draw.ApproxBiLinear.Scale(small, small.Bounds(), full, b, draw.Src, nil)
	var out bytes.Buffer
	if err := jpeg.Encode(&out, small, &jpeg.Options{Quality: 75}); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
