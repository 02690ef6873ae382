package main

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"undervdi/internal/xvfb"
)

// TestSampleAds: the demo's ads are pictures with text on them, not plain
// gradients: each has many colours, and white letters.
func TestSampleAds(t *testing.T) {
	dir := t.TempDir()
	if err := writeAds(dir); err != nil {
		t.Fatal(err)
	}
	for i := range sampleAds {
		f, err := os.Open(filepath.Join(dir, "ad-"+string(rune('1'+i))+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		white := 0
		b := img.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				if r, g, bl, _ := img.At(x, y).RGBA(); r == 0xffff && g == 0xffff && bl == 0xffff {
					white++
				}
			}
		}
		if white < 1000 || xvfb.Colors(img, 50) < 50 {
			t.Errorf("ad %d: %d white pixels, %d colours: no text on it", i+1, white, xvfb.Colors(img, 50))
		}
	}
}
