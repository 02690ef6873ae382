//go:build integration

package virt_test

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/remotehost"
	"undervdi/internal/testbed"
	"undervdi/server/domxml"
)

// TestReplicateDisk copies a published version's volume from this
// machine's libvirtd to a second host (a libvirtd in its own network and
// mount namespaces, over TLS), through libvirt's storage streams: the
// bytes arrive whole in the second host's own versions pool, read-only,
// with progress on the way; a cancelled copy leaves nothing there.
func TestReplicateDisk(t *testing.T) {
	bed := testbed.New(t)
	if err := bed.GrowGolden(256<<20, 40<<20); err != nil { // several chunks
		t.Fatal(err)
	}
	ctx := context.Background()
	src := remotehost.OpenHost(t, testbed.URI)
	if err := src.PrepareStorage(ctx, bed.Prefix, bed.OverlayDir, bed.VersionDir); err != nil {
		t.Fatal(err)
	}
	g, err := src.Golden(ctx, bed.Golden.Name)
	if err != nil {
		t.Fatal(err)
	}
	disk := g.WritableDisks()[0]
	published, err := src.CopyDisk(ctx, disk, bed.Prefix+"-v1-vda.qcow2", func(uint64) {})
	if err != nil {
		t.Fatal(err)
	}

	h2 := remotehost.Start(t)
	dst := remotehost.OpenHost(t, h2.URI)
	const dir = "/var/lib/libvirt/undervdi-h2" // inside the second host
	if err := dst.PrepareStorage(ctx, "h2test", dir+"/overlays", dir+"/versions"); err != nil {
		t.Fatal(err)
	}
	// Where the second host's /var/lib/libvirt is, seen from this machine.
	seen := func(path string) string {
		return filepath.Join(h2.Dir, "lib-libvirt", strings.TrimPrefix(path, "/var/lib/libvirt/"))
	}

	var calls int
	var last, total uint64
	from := domxml.Disk{Target: "vda", Path: published, Capacity: disk.Capacity}
	start := time.Now()
	path, err := dst.ReplicateDisk(ctx, src, from, "v1-vda.qcow2", func(w, n uint64) { calls, last, total = calls+1, w, n })
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(published)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MiB copied to the second host in %v", st.Size()>>20, time.Since(start).Round(time.Millisecond))
	if want := dir + "/versions/v1-vda.qcow2"; path != want {
		t.Errorf("the copy is at %s on the second host, want %s", path, want)
	}
	if err := dst.CheckCopy(ctx, path, disk.Capacity); err != nil {
		t.Errorf("the copy: %v", err)
	}
	if a, b := sum(t, published), sum(t, seen(path)); a != b {
		t.Errorf("the copy's bytes differ from the source's")
	}
	if calls < 3 || last != total || total != uint64(st.Size()) {
		t.Errorf("progress: %d calls, last %d of %d; the file has %d bytes", calls, last, total, st.Size())
	}
	if st, err := os.Stat(seen(path)); err != nil {
		t.Error(err)
	} else if st.Mode().Perm()&0o222 != 0 {
		t.Errorf("the copy's mode is %v; want it read-only", st.Mode())
	}

	t.Run("a cancelled copy leaves nothing", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		// Cancelled once the first chunk is written: the volume exists by then.
		_, err := dst.ReplicateDisk(cctx, src, from, "v2-vda.qcow2", func(w, n uint64) {
			if w > 0 {
				cancel()
			}
		})
		if err == nil {
			t.Fatal("a cancelled copy succeeded")
		}
		if _, err := os.Stat(seen(dir + "/versions/v2-vda.qcow2")); !os.IsNotExist(err) {
			t.Errorf("the cancelled copy's volume: %v, want it gone", err)
		}
		// The connection is still good.
		if err := dst.CheckCopy(ctx, path, disk.Capacity); err != nil {
			t.Errorf("after a cancelled copy: %v", err)
		}
	})
}

func sum(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}
