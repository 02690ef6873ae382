//go:build integration

package imagebuild

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"undervdi/internal/bootlayout"
)

// TestMatchesGrubBiosSetup checks the BIOS boot code against GRUB's own
// installer: Debian's grub-bios-setup --no-rs-codes, run on a copy of the
// image whose boot code is wiped, must put back the very same bytes.
//
// grub-bios-setup only works on block devices, and insists on finding the
// block device under its -d directory too, so the copy and a scratch ext4
// file system for that directory are attached to loop devices.
func TestMatchesGrubBiosSetup(t *testing.T) {
	if out, err := exec.Command("losetup", "-f").CombinedOutput(); err != nil {
		t.Skipf("no loop devices (%v: %s)", err, out)
	}
	b := testBuilder(t)
	in := testInputs(t)
	vol, err := volumeID(in, b.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	grub, err := b.buildGRUB(t.Context(), bootlayout.VolumeID(vol))
	if err != nil {
		t.Fatal(err)
	}
	roots, _, err := b.unpack(t.Context(), grubPCPackage)
	if err != nil {
		t.Fatal(err)
	}
	setup := filepath.Join(roots[0], "usr/lib/grub/i386-pc/grub-bios-setup")

	dir := t.TempDir()
	img := filepath.Join(dir, "kiosk.img")
	if err := b.Disk(t.Context(), in, img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	want := mustRead(t, img)

	// The reference: the same image without boot code.
	ref := filepath.Join(dir, "ref.img")
	wiped := bytes.Clone(want)
	clear(wiped[:mbrKeepStart])
	clear(wiped[biosBootStart : biosBootStart+biosBootSize])
	if err := os.WriteFile(ref, wiped, 0o644); err != nil {
		t.Fatal(err)
	}
	aux := filepath.Join(dir, "aux.img")
	if err := os.WriteFile(aux, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(aux, 8*mib); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mkfs.ext4", "-q", aux)
	refDev := attachLoop(t, ref)
	auxDev := attachLoop(t, aux)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mount", auxDev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	grubDir := filepath.Join(mnt, "grub")
	os.Mkdir(grubDir, 0o755)
	for name, data := range map[string][]byte{"boot.img": grub.bootImg, "core.img": grub.coreImg} {
		if err := os.WriteFile(filepath.Join(grubDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deviceMap := filepath.Join(dir, "device.map")
	if err := os.WriteFile(deviceMap, []byte("(hd0) "+refDev+"\n(hd1) "+auxDev+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, setup, "--no-rs-codes", "-d", grubDir, "-m", deviceMap, refDev)
	mustRun(t, "sync")

	got := mustRead(t, ref)
	for _, r := range []struct {
		name     string
		from, to int
	}{{"MBR", 0, sectorSize}, {"BIOS boot partition", biosBootStart, biosBootStart + biosBootSize}} {
		if i := firstDifference(got[r.from:r.to], want[r.from:r.to]); i < r.to-r.from {
			t.Errorf("%s differs from grub-bios-setup's at byte %#x: %x, grub-bios-setup wrote %x",
				r.name, i, want[r.from+i:min(r.from+i+8, r.to)], got[r.from+i:min(r.from+i+8, r.to)])
		}
	}
}

// attachLoop attaches file to a free loop device until the test ends.
func attachLoop(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--show", "-f", file).Output()
	if err != nil {
		t.Fatalf("losetup %s: %v", file, err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
