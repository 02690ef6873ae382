package slideshow

import (
	"fmt"
	"image"
	"sync"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
)

// putImage uploads an RGBA image to a drawable in strips that fit the X
// server's request size (an image is megabytes; a request is at most 256 KiB
// without the BIG-REQUESTS extension).
func putImage(conn *xgb.Conn, d xproto.Drawable, gc xproto.Gcontext, img *image.RGBA) error {
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	rows := max(1, (256<<10-64)/(4*w))
	buf := make([]byte, 4*w*rows)
	for y := 0; y < h; y += rows {
		n := min(rows, h-y)
		out := buf[:4*w*n]
		for i := 0; i < w*n; i++ {
			px := img.Pix[img.PixOffset(i%w, y+i/w):]
			out[4*i], out[4*i+1], out[4*i+2], out[4*i+3] = px[2], px[1], px[0], 0 // BGRX
		}
		err := xproto.PutImageChecked(conn, xproto.ImageFormatZPixmap, d, gc, uint16(w), uint16(n), 0, int16(y), 0, 24, out).Check()
		if err != nil {
			return fmt.Errorf("uploading the image: %w", err)
		}
	}
	return nil
}

// Banner is a band of text above every other window: the idle warning
// shown over the visitor's session.
type Banner struct {
	conn   *xgb.Conn
	win    xproto.Window
	gc     xproto.Gcontext
	w, h   int
	mu     sync.Mutex
	text   string
	frame  *image.RGBA
	mapped bool
}

func newBanner(conn *xgb.Conn, screen *xproto.ScreenInfo) (*Banner, error) {
	b := &Banner{conn: conn, w: int(screen.WidthInPixels), h: int(screen.HeightInPixels) / 7}
	var err error
	if b.win, err = newWindow(conn, screen, 0, int(screen.HeightInPixels)-b.h, b.w, b.h); err != nil {
		return nil, err
	}
	if b.gc, err = xproto.NewGcontextId(conn); err != nil {
		return nil, err
	}
	xproto.CreateGC(conn, b.gc, xproto.Drawable(b.win), 0, nil)
	return b, nil
}

func (b *Banner) set(text string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if text == b.text {
		return
	}
	b.text = text
	if text == "" {
		xproto.UnmapWindow(b.conn, b.win)
		b.mapped = false
		b.conn.Sync()
		return
	}
	b.frame = compose(b.w, b.h, nil, "")
	drawBand(b.frame, b.frame.Bounds(), text)
	if !b.mapped {
		xproto.MapWindow(b.conn, b.win)
		b.mapped = true
	}
	xproto.ConfigureWindow(b.conn, b.win, xproto.ConfigWindowStackMode, []uint32{xproto.StackModeAbove})
	b.drawLocked()
}

func (b *Banner) expose() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mapped {
		b.drawLocked()
	}
}

func (b *Banner) drawLocked() {
	putImage(b.conn, xproto.Drawable(b.win), b.gc, b.frame)
	b.conn.Sync()
}
