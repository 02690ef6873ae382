//go:build integration

package initramfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/mkuimage/cpio"

	"undervdi/internal/kioskvm"
	"undervdi/internal/testbed"
)

var (
	imageOnce sync.Once
	image     *Image
	imageErr  error
)

// kioskImage builds the kiosk image once per test binary (cached across
// runs in the test cache directory).
func kioskImage(t *testing.T) *Image {
	t.Helper()
	imageOnce.Do(buildImage)
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return image
}

func buildImage() {
	b := &Builder{CacheDir: filepath.Join(testbed.CacheDir(), "kiosk")}
	image, imageErr = b.Build(context.Background())
}

// archive reads the initramfs back: path -> record.
func archive(t *testing.T, img *Image) map[string]cpio.Record {
	f, err := os.Open(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	data, err := io.ReadAll(dec)
	if err != nil {
		t.Fatalf("the initramfs is not zstd: %v", err)
	}
	rr, err := cpio.Format("newc")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(rr.Reader(strings.NewReader(string(data))))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		m[r.Name] = r
	}
	return m
}

func TestArchiveContents(t *testing.T) {
	img := kioskImage(t)
	recs := archive(t, img)
	mods := "usr/lib/modules/" + img.KernelVersion + "/"
	must := []string{
		"init", "bin/kioskd", "bin/sh", "bin/uinit",
		"usr/lib/xorg/Xorg", "usr/bin/xkbcomp",
		"usr/lib/xorg/modules/drivers/modesetting_drv.so", "usr/lib/xorg/modules/drivers/fbdev_drv.so",
		"usr/lib/xorg/modules/input/libinput_drv.so",
		"usr/bin/remote-viewer", "usr/lib/x86_64-linux-gnu/libspice-client-gtk-3.0.so.5",
		"usr/lib/x86_64-linux-gnu/libusbredirhost.so.1", "usr/lib/x86_64-linux-gnu/libgtk-3.so.0",
		"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "usr/lib64/ld-linux-x86-64.so.2",
		"usr/lib/systemd/systemd-udevd", "usr/share/X11/xkb/symbols/us",
		"usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "etc/ssl/certs/ca-certificates.crt",
		"etc/undervdi/kioskd.conf", "etc/passwd",
		mods + "modules.dep", mods + "modules.alias",
	}
	for _, m := range []string{"bochs", "virtio-gpu", "i915", "amdgpu", "radeon", "usbhid", "hid-generic", "hid-multitouch",
		"xhci-pci", "ehci-pci", "e1000", "e1000e", "r8169", "virtio_net", "usb-storage", "vfat"} {
		found := false
		for name := range recs {
			if strings.HasPrefix(name, mods) && strings.HasSuffix(name, "/"+m+".ko") {
				found = true
			}
		}
		if !found {
			t.Errorf("kernel module %s is not in the image", m)
		}
	}
	for _, p := range must {
		if _, ok := recs[p]; !ok {
			t.Errorf("%s is not in the image", p)
		}
	}
	// No shell, no GL stack.
	for name := range recs {
		base := filepath.Base(name)
		if base == "gosh" || base == "bash" || base == "dash" || base == "busybox" ||
			base == "libglx.so" || strings.HasPrefix(base, "libLLVM") {
			t.Errorf("%s must not be in the image", name)
		}
	}
	if r := recs["etc/passwd"]; !strings.Contains(readAll(t, r), "kiosk:x:1000:1000:") {
		t.Errorf("etc/passwd has no kiosk user")
	}
}

func readAll(t *testing.T, r cpio.Record) string {
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestProgramsRun unpacks the image and runs its programs in a chroot: every
// library they need is there and loads.
func TestProgramsRun(t *testing.T) {
	img := kioskImage(t)
	root := t.TempDir()
	cmd := exec.Command("sh", "-c", "zstd -dc "+img.Initramfs+" | cpio -idm --quiet")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpacking: %v: %s", err, out)
	}
	for _, c := range [][]string{
		{"/usr/bin/remote-viewer", "--version"},
		{"/usr/lib/xorg/Xorg", "-version"},
		{"/usr/bin/udevadm", "--version"},
		{"/usr/bin/xkbcomp", "-version"},
	} {
		out, err := exec.Command("chroot", append([]string{root}, c...)...).CombinedOutput()
		if err != nil {
			t.Errorf("%s in the image: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	// The not-a-shell: only xkbcomp, only with -c.
	if out, err := exec.Command("chroot", root, "/bin/sh", "-c", "/usr/bin/xkbcomp -version").CombinedOutput(); err != nil {
		t.Errorf("/bin/sh -c xkbcomp: %v: %s", err, out)
	}
	if err := exec.Command("chroot", root, "/bin/sh", "-c", "/usr/bin/remote-viewer --version").Run(); err == nil {
		t.Errorf("/bin/sh ran something other than xkbcomp")
	}
}

// TestBootsToSlideshow boots the image in QEMU (SeaBIOS, direct kernel
// boot) with no broker: kioskd must still reach the slideshow with X
// running, and say so on the console.
func TestBootsToSlideshow(t *testing.T) {
	img := kioskImage(t)
	dir := t.TempDir()
	vm, err := kioskvm.Start(kioskvm.Options{
		Kernel: img.Kernel, Initramfs: img.Initramfs, Dir: dir,
		Cmdline: "console=ttyS0 panic=-1 undervdi.server=10.0.2.2 undervdi.port=1 undervdi.kiosk=k1 undervdi.token=t undervdi.ads_url=off",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	line, err := vm.WaitFor(context.Background(), "slideshow shown", 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(line)
	if err := vm.WaitScreen(dir, 30*time.Second, kioskvm.ShowsSlideshow); err != nil {
		t.Errorf("the slideshow is not showing: %v", err)
	}
	for _, bad := range []string{"Kernel panic", "cannot start the X server"} {
		if strings.Contains(vm.Tail(200), bad) {
			t.Errorf("console shows %q:\n%s", bad, vm.Tail(40))
		}
	}
}

// TestReproducible builds the image again in a fresh cache (sharing only
// the downloaded packages) and expects the same bytes.
func TestReproducible(t *testing.T) {
	img := kioskImage(t)
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(testbed.CacheDir(), "kiosk", "debs"), filepath.Join(dir, "debs")); err != nil {
		t.Fatal(err)
	}
	again, err := (&Builder{CacheDir: dir}).Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range [][2]string{{img.Initramfs, again.Initramfs}, {img.Kernel, again.Kernel}} {
		a, _ := os.ReadFile(f[0])
		b, _ := os.ReadFile(f[1])
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s and %s differ: the build is not reproducible", f[0], f[1])
		}
	}
}
