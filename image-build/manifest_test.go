package imagebuild

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"undervdi/pxe"
)

// TestAll builds everything into one directory and checks the network-boot
// files and the manifest against what is on disk.
func TestAll(t *testing.T) {
	b := testBuilder(t)
	in := testInputs(t)
	out := filepath.Join(t.TempDir(), "out")
	m, err := b.All(t.Context(), in, out)
	if err != nil {
		t.Fatalf("All() = %v", err)
	}

	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
		got, err := hashFile(filepath.Join(out, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		if got.Size != f.Size || got.SHA256 != f.SHA256 {
			t.Errorf("manifest says %s is %d bytes, sha256 %s; it is %d, %s", f.Path, f.Size, f.SHA256, got.Size, got.SHA256)
		}
	}
	// No kioskd.conf among the network-boot files: they are served to
	// anyone on the kiosk network, and it may hold tokens.
	wantPaths := []string{"kiosk.img", "pxe/boot.ipxe", "pxe/initramfs.img", "pxe/ipxe.efi", "pxe/undionly.kpxe", "pxe/vmlinuz"}
	if !slices.Equal(paths, wantPaths) {
		t.Errorf("manifest files = %v, want %v", paths, wantPaths)
	}
	if m.SourceDateEpoch != testEpoch.Unix() || m.Cmdline != in.Cmdline {
		t.Errorf("manifest epoch, cmdline = %d, %q; want %d, %q", m.SourceDateEpoch, m.Cmdline, testEpoch.Unix(), in.Cmdline)
	}
	if !slices.IsSorted(m.Packages) {
		t.Errorf("manifest packages are not sorted: %v", m.Packages)
	}
	for _, want := range []string{"linux-image-6.1.0-56-amd64=6.1.192-2", "grub-common=", "grub-pc-bin=", "grub-efi-amd64-bin=", "ipxe="} {
		if !slices.ContainsFunc(m.Packages, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("manifest packages %v lack %s", m.Packages, want)
		}
	}
	var onDisk Manifest
	if err := json.Unmarshal(mustRead(t, filepath.Join(out, ManifestName)), &onDisk); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if !reflect.DeepEqual(&onDisk, m) {
		t.Errorf("manifest.json = %+v, All() returned %+v", onDisk, m)
	}

	// The network-boot files are the inputs, the boot script and Debian's iPXE.
	for name, want := range map[string][]byte{
		"vmlinuz":       mustRead(t, in.Kernel),
		"initramfs.img": mustRead(t, in.Initramfs),
		"boot.ipxe":     []byte(pxe.IPXEScript(in.Cmdline)),
	} {
		if got := mustRead(t, filepath.Join(out, "pxe", name)); !bytes.Equal(got, want) {
			t.Errorf("pxe/%s differs from what was given", name)
		}
	}
	if err := pxe.CheckBootDir(filepath.Join(out, "pxe"), true); err != nil {
		t.Errorf("pxe.CheckBootDir() = %v", err)
	}

	// A kioskd.conf an older build left among the network-boot files is
	// removed.
	if err := os.WriteFile(filepath.Join(out, "pxe/kioskd.conf"), []byte("token = secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err = b.All(t.Context(), in, out); err != nil {
		t.Fatalf("All() again = %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "pxe/kioskd.conf")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pxe/kioskd.conf after a rebuild: %v, want it gone", err)
	}
	if left, _ := filepath.Glob(filepath.Join(out, "*", ".*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// TestAllReproducible builds everything twice, compares every file, then
// builds with another epoch.
func TestAllReproducible(t *testing.T) {
	b := testBuilder(t)
	in := testInputs(t)
	first, second := t.TempDir(), t.TempDir()
	for _, dir := range []string{first, second} {
		if _, err := b.All(t.Context(), in, dir); err != nil {
			t.Fatalf("All() = %v", err)
		}
	}
	names := []string{DiskImageName, ManifestName, "pxe/boot.ipxe", "pxe/vmlinuz", "pxe/initramfs.img", "pxe/ipxe.efi", "pxe/undionly.kpxe"}
	for _, name := range names {
		if !bytes.Equal(mustRead(t, filepath.Join(first, name)), mustRead(t, filepath.Join(second, name))) {
			t.Errorf("%s differs between two builds of the same inputs", name)
		}
	}

	bb := *b
	bb.Epoch = testEpoch.Add(time.Hour)
	later := t.TempDir()
	if _, err := bb.All(t.Context(), in, later); err != nil {
		t.Fatalf("All() = %v", err)
	}
	for _, name := range []string{DiskImageName, ManifestName} {
		if bytes.Equal(mustRead(t, filepath.Join(first, name)), mustRead(t, filepath.Join(later, name))) {
			t.Errorf("%s is the same for different epochs", name)
		}
	}
}

func TestAllNoSpace(t *testing.T) {
	b := testBuilder(t)
	in := testInputs(t)
	// Room for the disk image alone is not enough for everything.
	b.freeSpace = func(string) (int64, error) { return 67 * mib, nil }
	out := t.TempDir()
	_, err := b.All(t.Context(), in, out)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("All() = %v, want ErrNoSpace", err)
	}
	if left, _ := os.ReadDir(out); len(left) != 0 {
		t.Errorf("All() without space wrote %v", left)
	}
}

func TestNewManifest(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"b": "bee", "a/c": "sea"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := newManifest(dir, []string{"b", "a/c"}, []string{"z=1", "a=2", "z=1"}, time.Unix(1700000000, 0), " quiet  splash ")
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "source_date_epoch": 1700000000,
  "cmdline": "quiet splash",
  "files": [
    {
      "path": "a/c",
      "size": 3,
      "sha256": "4a69f19c8c264850d0f0fca1d7cd8ac0d07771cb9aaf5923c2c621a3e0f74475"
    },
    {
      "path": "b",
      "size": 3,
      "sha256": "62cb81b5904a262ffaeed02abef36bfc540b09f964b8b0b636662f77ffce6714"
    }
  ],
  "packages": [
    "a=2",
    "z=1"
  ]
}`
	if string(got) != want {
		t.Errorf("manifest =\n%s\nwant\n%s", got, want)
	}
	if _, err := newManifest(dir, []string{"missing"}, nil, time.Unix(0, 0), ""); err == nil {
		t.Errorf("newManifest(missing file) = nil error, want one")
	}
}
