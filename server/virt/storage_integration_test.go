//go:build integration

package virt

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/testbed"
)

// TestReadHeadEveryTime reads a qcow2 volume's header through libvirt's
// storage stream many times on one connection. libvirtd sometimes sends a
// download's data before the call's reply; upstream go-libvirt then
// returned an empty download (a golden "not qcow2") and, at the stream's
// end marker, hung the connection for good (a CI run's check-host waited
// 29 minutes). third_party/go-libvirt carries the fix.
func TestReadHeadEveryTime(t *testing.T) {
	l, err := testbed.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want = want[:min(len(want), headerBytes)]
	const reads = 500
	short := 0
	done := make(chan error, 1)
	go func() {
		done <- withVolume(l, path, func(vol libvirt.StorageVol) error {
			for range reads {
				got, err := readHead(l, vol, uint64(len(want)))
				if err != nil {
					return err
				}
				if !bytes.Equal(got, want) {
					short++
				}
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute): // about a second when it works
		t.Fatal("the header reads hung: the libvirt connection is wedged")
	}
	if short > 0 {
		t.Fatalf("%d of %d header reads came back different from the file (empty or cut short)", short, reads)
	}
}
