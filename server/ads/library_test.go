package ads

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func pngOf(w, h int) []byte {
	var b bytes.Buffer
	png.Encode(&b, image.NewGray(image.Rect(0, 0, w, h)))
	return b.Bytes()
}

// TestLibrary: an ad is stored whole under its name, listed with its size
// and pixels, replaced, removed; bad names, types, sizes and contents are
// refused with nothing written.
func TestLibrary(t *testing.T) {
	l := Library{Dir: t.TempDir()}
	ad, err := l.Put("spring-sale.png", bytes.NewReader(pngOf(320, 200)))
	if err != nil || ad.Width != 320 || ad.Height != 200 || ad.Type != "image/png" {
		t.Fatalf("Put = %+v, %v", ad, err)
	}
	for name, content := range map[string][]byte{
		"../escape.png":                   pngOf(1, 1),
		".hidden.png":                     pngOf(1, 1),
		"notes.txt":                       []byte("hello"),
		"fake.png":                        []byte("GIF89a not a png at all"),
		"photo.jpg":                       pngOf(10, 10), // a PNG named .jpg
		"broken.png":                      pngOf(10, 10)[:40],
		"huge.png":                        hugeHeader(),
		"tab\tname.png":                   pngOf(1, 1),
		"big.gif":                         append([]byte("GIF89a"), make([]byte, MaxUpload)...),
		strings.Repeat("a", 130) + ".png": pngOf(1, 1),
	} {
		if _, err := l.Put(name, bytes.NewReader(content)); !errors.Is(err, ErrBadAd) {
			t.Errorf("Put(%q) = %v, want ErrBadAd", name, err)
		}
	}
	ads, err := l.List()
	if err != nil || len(ads) != 1 || ads[0].Name != "spring-sale.png" || ads[0].Width != 320 {
		t.Errorf("List = %+v, %v", ads, err)
	}
	if left, _ := os.ReadDir(l.Dir); len(left) != 1 {
		t.Errorf("refused uploads left files: %v", left)
	}
	if _, err := l.Put("spring-sale.png", bytes.NewReader(pngOf(640, 400))); err != nil {
		t.Fatal(err)
	}
	f, typ, err := l.Open("spring-sale.png")
	if err != nil || typ != "image/png" {
		t.Fatal(err)
	}
	cfg, _ := png.DecodeConfig(f)
	f.Close()
	if cfg.Width != 640 {
		t.Errorf("the replaced ad is %d wide", cfg.Width)
	}
	if err := l.Remove("spring-sale.png"); err != nil {
		t.Fatal(err)
	}
	if err := l.Remove("spring-sale.png"); !errors.Is(err, ErrNoAd) {
		t.Errorf("Remove twice = %v", err)
	}
	if _, _, err := l.Open("../../etc/passwd"); !errors.Is(err, ErrNoAd) {
		t.Errorf("Open outside = %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.Dir, "spring-sale.png")); !os.IsNotExist(err) {
		t.Error("removed ad still there")
	}
}

// hugeHeader is a valid PNG header claiming 20000×20000 pixels.
func hugeHeader() []byte {
	b := pngOf(1, 1)
	// IHDR width and height at offsets 16 and 20, CRC at 29: rewrite them.
	for _, off := range []int{16, 20} {
		b[off], b[off+1], b[off+2], b[off+3] = 0, 0, 0x4e, 0x20
	}
	return b
}
