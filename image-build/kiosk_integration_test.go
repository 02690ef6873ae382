//go:build integration

package imagebuild

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"undervdi/initramfs"
	"undervdi/internal/kioskvm"
	"undervdi/internal/testbed"
)

// TestKioskBootsFromSDCard puts the real kiosk image on an SD-card image
// with the site's kioskd.conf and a background picture, and boots it
// read-only in QEMU, on legacy BIOS from a virtio disk and on UEFI from a
// USB stick. Each time kioskd must reach the slideshow with X running,
// having read its settings from the boot partition, and the card's bytes
// must be unchanged afterwards.
func TestKioskBootsFromSDCard(t *testing.T) {
	ctx := context.Background()
	kimg, err := (&initramfs.Builder{CacheDir: filepath.Join(testbed.CacheDir(), "kiosk")}).Build(ctx)
	if err != nil {
		t.Fatalf("building the kiosk image: %v", err)
	}
	src := t.TempDir()
	conf := filepath.Join(src, "kioskd.conf")
	if err := os.WriteFile(conf, []byte("# the site's settings\nserver = 10.0.2.2\nport = 1\nkiosk = from-sd\ntoken = t\nads_url = off\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bg := filepath.Join(src, "background")
	os.Mkdir(bg, 0o755)
	writeStripes(t, filepath.Join(bg, "welcome.png"))

	img := filepath.Join(t.TempDir(), DiskImageName)
	in := Inputs{Kernel: kimg.Kernel, Initramfs: kimg.Initramfs, Cmdline: "console=ttyS0 panic=-1", Config: conf, Background: bg}
	if err := testBuilder(t).Disk(ctx, in, img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	want, err := hashFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		uefi bool
		bus  string
	}{{"seabios-virtio", false, "virtio"}, {"ovmf-usb", true, "usb"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each QEMU reads the image read-only
			dir := t.TempDir()
			vm, err := kioskvm.Start(kioskvm.Options{Disk: img, DiskBus: tc.bus, UEFI: tc.uefi, Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Stop()
			line, err := vm.WaitFor(ctx, "slideshow shown", 5*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(line)
			for _, marker := range []string{
				"boot partition mounted read-only",
				"kiosk=from-sd",
				`from="image, boot partition"`,
			} {
				if _, err := vm.WaitFor(ctx, marker, time.Second); err != nil {
					t.Errorf("console lacks %q", marker)
				}
			}
			// The background picture is red and blue stripes.
			if err := vm.WaitScreen(dir, 30*time.Second, hasStripes); err != nil {
				t.Errorf("the kiosk does not show the boot partition's background image: %v", err)
			}
			vm.Stop()
			got, err := hashFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("the SD-card image changed during the boot")
			}
		})
	}
}

// writeStripes writes a picture of red and blue vertical stripes.
func writeStripes(t *testing.T, path string) {
	img := image.NewRGBA(image.Rect(0, 0, 320, 200))
	for y := 0; y < 200; y++ {
		for x := 0; x < 320; x++ {
			c := color.RGBA{220, 0, 0, 255}
			if (x/40)%2 == 1 {
				c = color.RGBA{0, 0, 220, 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

// hasStripes tells whether the screen's middle row shows both stripe colours.
func hasStripes(img image.Image) bool {
	b := img.Bounds()
	y := (b.Min.Y + b.Max.Y) / 3
	red, blue := false, false
	for x := b.Min.X; x < b.Max.X; x++ {
		r, g, bl, _ := img.At(x, y).RGBA()
		r, g, bl = r>>8, g>>8, bl>>8
		red = red || (r > 180 && g < 40 && bl < 40)
		blue = blue || (bl > 180 && r < 40 && g < 40)
	}
	return red && blue
}
