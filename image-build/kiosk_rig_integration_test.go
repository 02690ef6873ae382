//go:build integration

package imagebuild

import (
	"context"
	"fmt"
	"image"
	"image/draw"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/initramfs"
	"undervdi/internal/brokertest"
	"undervdi/internal/kioskvm"
	"undervdi/internal/testbed"
	"undervdi/internal/xvfb"
)

// kioskRig is the real kiosk image on an SD-card image, booted in QEMU,
// configured for broker rb: QEMU's user-mode network, where the host is
// 10.0.2.2 and sees the kiosk at 127.0.0.1.
type kioskRig struct {
	vm   *kioskvm.VM
	dir  string
	img  string
	hash ManifestFile // the card before the boot
}

// bootKiosk builds the card (the site's kioskd.conf for rb, plus extra
// lines) and boots it to the slideshow.
func bootKiosk(t *testing.T, rb *brokertest.Broker, extra string) *kioskRig {
	t.Helper()
	ctx := context.Background()
	kimg, err := (&initramfs.Builder{CacheDir: filepath.Join(testbed.CacheDir(), "kiosk")}).Build(ctx)
	if err != nil {
		t.Fatalf("building the kiosk image: %v", err)
	}
	conf := filepath.Join(t.TempDir(), "kioskd.conf")
	site := fmt.Sprintf("server = 10.0.2.2\nport = %s\nkiosk = k1\ntoken = %s\nads_url = off\n%s",
		strings.TrimPrefix(rb.KioskAddr(), "127.0.0.1:"), brokertest.Token, extra)
	if err := os.WriteFile(conf, []byte(site), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &kioskRig{dir: t.TempDir(), img: filepath.Join(t.TempDir(), DiskImageName)}
	// The card carries the broker's site CA: the kiosk speaks TLS to it.
	in := Inputs{Kernel: kimg.Kernel, Initramfs: kimg.Initramfs, Cmdline: "console=ttyS0 panic=-1", Config: conf, CA: rb.CAFile()}
	if err := testBuilder(t).Disk(ctx, in, r.img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	if r.hash, err = hashFile(r.img); err != nil {
		t.Fatal(err)
	}
	if r.vm, err = kioskvm.Start(kioskvm.Options{Disk: r.img, Dir: r.dir}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.vm.Stop)
	if _, err := r.vm.WaitFor(ctx, "slideshow shown", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	return r
}

// session touches the screen until the kiosk asks for a session (the first
// touch may come before the broker link is up), and waits until the viewer
// is on screen.
func (r *kioskRig) session(t *testing.T) {
	t.Helper()
	sessions := r.vm.Count("to=in-session")
	r.touched(t)
	deadline := time.Now().Add(4 * time.Minute)
	for r.vm.Count("to=in-session") == sessions {
		if time.Now().After(deadline) {
			t.Fatalf("the viewer never came on screen; console:\n%s", r.vm.Tail(40))
		}
		time.Sleep(time.Second)
	}
}

// touched touches the screen until the kiosk asks the broker for a session.
func (r *kioskRig) touched(t *testing.T) {
	t.Helper()
	requests := r.vm.Count("to=requesting")
	deadline := time.Now().Add(2 * time.Minute)
	for r.vm.Count("to=requesting") == requests {
		if time.Now().After(deadline) {
			t.Fatalf("touches did not start a session; console:\n%s", r.vm.Tail(40))
		}
		if err := r.vm.Touch(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
	}
}

// guestShown waits until the kiosk's screen shows the guest's console: the
// viewer's display is up (and has the keyboard focus, which spice-gtk
// wants before it redirects a device plugged in).
func (r *kioskRig) guestShown(t *testing.T) {
	t.Helper()
	err := r.vm.WaitScreen(r.dir, 2*time.Minute, func(img image.Image) bool {
		rgba := image.NewRGBA(img.Bounds())
		draw.Draw(rgba, rgba.Bounds(), img, img.Bounds().Min, draw.Src)
		ok, _, _ := xvfb.ShowsConsole(rgba)
		return ok
	})
	if err != nil {
		t.Fatalf("the kiosk never showed the guest: %v", err)
	}
}

// stop switches the kiosk off and checks the card's bytes are what they
// were.
func (r *kioskRig) stop(t *testing.T) {
	t.Helper()
	r.vm.Stop()
	got, err := hashFile(r.img)
	if err != nil {
		t.Fatal(err)
	}
	if got != r.hash {
		t.Errorf("the SD-card image changed while the kiosk ran")
	}
}
