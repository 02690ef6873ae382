//go:build integration

package tinyvm

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"
)

// TestBuildFromScratch builds the image into an empty cache (so a cached
// image cannot hide a broken builder) and checks the archive holds what the
// guest needs.
func TestBuildFromScratch(t *testing.T) {
	dir := t.TempDir()
	// Reuse downloaded packages: the point is the build, not apt.
	if shared := os.Getenv("UNDERVDI_CACHE"); shared != "" {
		os.Symlink(shared+"/tinyvm/debs", dir+"/debs")
	} else {
		os.Symlink("/var/cache/undervdi/tinyvm/debs", dir+"/debs")
	}
	art, err := (&Builder{CacheDir: dir}).Build(context.Background())
	if err != nil {
		t.Fatalf("Build() = %v", err)
	}
	f, err := os.Open(art.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, err := cpio.ArchiveFromReader(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatalf("reading %s: %v", art.Initramfs, err)
	}
	mods := "lib/modules/" + art.KernelVersion + "/"
	for _, want := range []string{
		"init", "bin/uinit", "bin/guest", "bbin/sync",
		"usr/sbin/qemu-ga", "sbin/shutdown",
		mods + "modules.dep", mods + "kernel/drivers/virtio/virtio_pci.ko",
		mods + "kernel/drivers/char/virtio_console.ko", mods + "kernel/drivers/block/virtio_blk.ko",
		"lib/modules-load.d/tinyvm.conf",
	} {
		if _, ok := a.Get(want); !ok {
			t.Errorf("archive lacks %s", want)
		}
	}
	var libs []string
	for name := range a.Files {
		if strings.Contains(name, "libglib-2.0.so") {
			libs = append(libs, name)
		}
	}
	if len(libs) == 0 {
		t.Errorf("archive lacks qemu-ga's libglib: shared libraries were not resolved")
	}
	if st, err := os.Stat(art.Kernel); err != nil || st.Size() < 1<<20 {
		t.Errorf("kernel %s: %v", art.Kernel, err)
	}
}
