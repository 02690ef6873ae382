//go:build integration

package imagebuild

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/server/pool"

	"undervdi/initramfs"
	"undervdi/internal/brokertest"
	"undervdi/internal/kioskvm"
	"undervdi/internal/testbed"
	"undervdi/server/config"
)

// TestKioskSession is the whole system once, on real parts: a broker with a
// pool VM on libvirt on this host, and the kiosk image booted from an
// SD-card image in QEMU, its network QEMU's user mode (the host is
// 10.0.2.2 and sees the kiosk at 127.0.0.1). A touch on the kiosk's screen
// gets a session: remote-viewer inside the kiosk links to the pool VM
// through the gateway. When the kiosk goes away, the VM is wiped, and the
// card's bytes are what they were.
func TestKioskSession(t *testing.T) {
	ctx := context.Background()
	bed := testbed.New(t)
	rb := brokertest.Start(t, bed, 1, func(c *config.Config) {
		c.Gateway.PublicHost = "10.0.2.2" // the host, as the kiosk inside QEMU reaches it
	})
	kimg, err := (&initramfs.Builder{CacheDir: filepath.Join(testbed.CacheDir(), "kiosk")}).Build(ctx)
	if err != nil {
		t.Fatalf("building the kiosk image: %v", err)
	}
	conf := filepath.Join(t.TempDir(), "kioskd.conf")
	site := fmt.Sprintf("server = 10.0.2.2\nport = %s\nkiosk = k1\ntoken = %s\nads_url = off\n",
		strings.TrimPrefix(rb.KioskAddr(), "127.0.0.1:"), brokertest.Token)
	if err := os.WriteFile(conf, []byte(site), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), DiskImageName)
	// The card carries the broker's site CA: the kiosk speaks TLS to it.
	in := Inputs{Kernel: kimg.Kernel, Initramfs: kimg.Initramfs, Cmdline: "console=ttyS0 panic=-1", Config: conf, CA: rb.CAFile()}
	if err := testBuilder(t).Disk(ctx, in, img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	want, err := hashFile(img)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	vm, err := kioskvm.Start(kioskvm.Options{Disk: img, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	if _, err := vm.WaitFor(ctx, "slideshow shown", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Touch until the kiosk asks for a session (the first touch may come
	// before the broker link is up).
	deadline := time.Now().Add(2 * time.Minute)
	for !vm.Seen("to=requesting") {
		if time.Now().After(deadline) {
			t.Fatalf("touches did not start a session; console:\n%s", vm.Tail(40))
		}
		if err := vm.Touch(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
	}
	poll.Until(t, 4*time.Minute, "the kiosk's viewer linked to the pool VM", func() bool {
		return rb.Pool.Status().Counts[pool.InUse] == 1
	})
	if line, err := vm.WaitFor(ctx, "to=in-session", time.Minute); err != nil {
		t.Error(err)
	} else {
		t.Log(line)
	}

	// The kiosk is switched off: the broker ends the session and wipes the VM.
	vm.Stop()
	poll.Until(t, 2*time.Minute, "the session's VM wiped", func() bool {
		b, _ := os.ReadFile(rb.Config.Sessions.AuditLog)
		return bytes.Contains(b, []byte(`"kiosk":"k1"`)) && bytes.Contains(b, []byte(`"wiped":true`))
	})
	got, err := hashFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("the SD-card image changed during the boot and the session")
	}
}
