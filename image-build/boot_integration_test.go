//go:build integration

package imagebuild

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"undervdi/internal/testbed"
	"undervdi/tinyvm"
)

// banner is what the tiny VM's u-root init prints once the kernel has
// unpacked the initramfs and started it.
const banner = "Welcome to u-root!"

// TestBoot builds a disk image from the tiny VM's kernel and
// initramfs, and boots it read-only in QEMU (software emulation) under both
// firmware types and from both a virtio disk and a USB stick, waiting for
// the u-root banner on the serial console. That proves the whole chain:
// firmware, GRUB, grub.cfg, kernel, initramfs.
func TestBoot(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	art, err := (&tinyvm.Builder{CacheDir: filepath.Join(testbed.CacheDir(), "tinyvm")}).Build(ctx)
	if err != nil {
		t.Fatalf("building the tiny VM: %v", err)
	}
	t.Logf("tiny VM artifacts ready in %v", time.Since(start).Round(time.Millisecond))

	b := testBuilder(t)
	img := filepath.Join(t.TempDir(), DiskImageName)
	start = time.Now()
	if err := b.Disk(ctx, Inputs{Kernel: art.Kernel, Initramfs: art.Initramfs, Cmdline: "console=ttyS0"}, img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	want, err := hashFile(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image built in %v: %d MiB", time.Since(start).Round(time.Millisecond), want.Size>>20)

	for _, fw := range []string{"seabios", "ovmf"} {
		for _, dev := range []string{"virtio", "usb"} {
			t.Run(fw+"-"+dev, func(t *testing.T) {
				t.Parallel() // each QEMU reads the image read-only
				took, console := bootToBanner(t, img, fw, dev)
				t.Logf("%s, %s: banner after %v", fw, dev, took.Round(100*time.Millisecond))
				// The kernel prints the command line grub.cfg gave it.
				if want := "/undervdi/vmlinuz console=ttyS0 undervdi.bootpart="; !strings.Contains(console, want) {
					t.Errorf("kernel command line lacks %q; console:\n%s", want, console)
				}
				got, err := hashFile(img)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("image changed by booting: sha256 %s, want %s", got.SHA256, want.SHA256)
				}
			})
		}
	}
}

// bootToBanner boots img in QEMU and returns how long the banner took, and
// the serial console up to it.
func bootToBanner(t *testing.T, img, firmware, device string) (time.Duration, string) {
	t.Helper()
	args := []string{
		"-machine", "q35", "-m", "512", "-smp", "1",
		"-display", "none", "-monitor", "none", "-serial", "stdio",
		"-nic", "none", "-no-reboot",
		"-drive", "file=" + img + ",format=raw,if=none,id=sd,readonly=on",
	}
	switch device {
	case "virtio":
		args = append(args, "-device", "virtio-blk-pci,drive=sd,bootindex=0")
	case "usb":
		args = append(args, "-device", "qemu-xhci", "-device", "usb-storage,drive=sd,bootindex=0,removable=on")
	}
	if firmware == "ovmf" {
		vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
		b, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS.fd")
		if err != nil {
			t.Fatalf("OVMF (apt-get install ovmf): %v", err)
		}
		if err := os.WriteFile(vars, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}

	console := &consoleLog{found: make(chan struct{})}
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout = console
	cmd.Stderr = console
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waited := false
	defer func() {
		if !waited { // kill our own QEMU, by its PID
			cmd.Process.Kill()
			<-exited
		}
	}()

	const limit = 150 * time.Second
	select {
	case <-console.found:
		took := time.Since(start)
		cmd.Process.Kill()
		<-exited
		waited = true
		return took, console.tail(1 << 20)
	case err := <-exited:
		waited = true
		t.Fatalf("QEMU exited (%v) before the banner; console:\n%s", err, console.tail(3000))
	case <-time.After(limit):
		t.Fatalf("no %q on the serial console after %v; console:\n%s", banner, limit, console.tail(3000))
	}
	return 0, ""
}

// consoleLog collects QEMU's output and signals when the banner shows up.
type consoleLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	found chan struct{}
	once  sync.Once
}

func (c *consoleLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if bytes.Contains(c.buf.Bytes(), []byte(banner)) {
		c.once.Do(func() { close(c.found) })
	}
	return len(p), nil
}

func (c *consoleLog) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.buf.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return strings.ToValidUTF8(s, "?")
}
