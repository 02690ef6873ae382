package imagebuild

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"undervdi/internal/bootlayout"
)

// testInputs writes stand-in boot files into a temporary directory: GRUB
// does not look inside them, and the boot test uses real ones.
func testInputs(t *testing.T) Inputs {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	random := func(n int, seed uint64) []byte {
		b := make([]byte, n)
		r := rand.New(rand.NewPCG(seed, seed))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	in := Inputs{
		Kernel:    write("in/bzImage", random(3<<20+123, 1)),
		Initramfs: write("in/initramfs.cpio.zst", random(9<<20+77, 2)), // more than one 8 MiB write
		Cmdline:   "console=ttyS0 quiet",
		Config:    write("in/kioskd.conf", []byte("server = \"169.254.24.1\"\n")),
		Packages:  []string{"linux-image-6.1.0-56-amd64=6.1.192-2"},
	}
	write("bg/lobby.png", random(20000, 3))
	write("bg/A Long Name With Spaces.jpg", random(5000, 4))
	write("bg/winter/snow.png", random(700, 5))
	if err := os.Mkdir(filepath.Join(dir, "bg/empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	in.Background = filepath.Join(dir, "bg")
	return in
}

// TestDisk builds an image and reads it back: partition table, boot code,
// and every file on the EFI system partition.
func TestDisk(t *testing.T) {
	b := testBuilder(t)
	in := testInputs(t)
	vol, err := volumeID(in, b.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "out", "kiosk.img")
	if err := b.Disk(t.Context(), in, img); err != nil {
		t.Fatalf("Disk() = %v", err)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size()%mib != 0 || st.Size() < espStart+minESPSize+diskTail {
		t.Errorf("image size %d: want whole MiB, at least %d", st.Size(), espStart+minESPSize+diskTail)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > st.Size()/2 {
		t.Errorf("image takes %d of its %d bytes on disk: not sparse", used, st.Size())
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("image mode %v, want 0644", st.Mode().Perm())
	}

	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	table, ok := d.Table.(*gpt.Table)
	if !ok {
		t.Fatalf("partition table is %T, want GPT", d.Table)
	}
	if !table.ProtectiveMBR {
		t.Errorf("no protective MBR")
	}
	var parts []*gpt.Partition
	for _, p := range table.Partitions {
		if p.Type != gpt.Unused {
			parts = append(parts, p)
		}
	}
	if len(parts) != 2 {
		t.Fatalf("%d partitions, want 2: %+v", len(parts), parts)
	}
	bios, esp := parts[0], parts[1]
	if bios.Type != gpt.BIOSBoot || bios.Start != 2048 || bios.Size != biosBootSize {
		t.Errorf("partition 1 = %s at LBA %d, %d bytes; want BIOS boot at 2048, %d", bios.Type, bios.Start, bios.Size, biosBootSize)
	}
	if esp.Type != gpt.EFISystemPartition || esp.Name != "UNDERVDI" || esp.Start != 4096 ||
		int64(esp.Size) < minESPSize || int64(esp.Start*sectorSize+esp.Size) > st.Size()-33*sectorSize {
		t.Errorf("partition 2 = %s %q at LBA %d, %d bytes; want ESP \"UNDERVDI\" at 4096, at least %d, before the backup GPT",
			esp.Type, esp.Name, esp.Start, esp.Size, minESPSize)
	}

	// Boot code: boot.img in the MBR pointing at core.img in partition 1,
	// whose block list covers the rest of it.
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	mbr := raw[:sectorSize]
	if got := binary.LittleEndian.Uint64(mbr[bootKernelSector:]); got != 2048 {
		t.Errorf("MBR kernel sector = %d, want 2048", got)
	}
	if !bytes.Equal(mbr[bootDriveCheck:bootDriveCheck+2], []byte{0x90, 0x90}) {
		t.Errorf("MBR drive check = %x, want 9090", mbr[bootDriveCheck:bootDriveCheck+2])
	}
	if mbr[0x1c2] != 0xee || !bytes.Equal(mbr[510:], []byte{0x55, 0xaa}) {
		t.Errorf("MBR lost its protective partition (type %#x) or signature (%x)", mbr[0x1c2], mbr[510:])
	}
	core := raw[biosBootStart : biosBootStart+sectorSize]
	if start, n := binary.LittleEndian.Uint64(core[blocklistStart:]), binary.LittleEndian.Uint16(core[blocklistLen:]); start != 2049 || n < 100 {
		t.Errorf("core.img block list = %d sectors at %d, want the rest of core.img at 2049", n, start)
	}

	fat, err := d.GetFilesystem(2)
	if err != nil {
		t.Fatalf("reading the EFI system partition: %v", err)
	}
	if fat.Type() != filesystem.TypeFat32 {
		t.Errorf("ESP file system is %v, want FAT32", fat.Type())
	}
	if label := strings.TrimSpace(fat.Label()); label != "UNDERVDI" {
		t.Errorf("FAT label = %q, want UNDERVDI", label)
	}
	want := map[string][]byte{
		"/boot/grub/grub.cfg":                              []byte(grubConfig(in.Cmdline, bootlayout.VolumeID(vol))),
		"/undervdi/vmlinuz":                                mustRead(t, in.Kernel),
		"/undervdi/initramfs.img":                          mustRead(t, in.Initramfs),
		"/undervdi/kioskd.conf":                            mustRead(t, in.Config),
		"/undervdi/background/lobby.png":                   mustRead(t, filepath.Join(in.Background, "lobby.png")),
		"/undervdi/background/A Long Name With Spaces.jpg": mustRead(t, filepath.Join(in.Background, "A Long Name With Spaces.jpg")),
		"/undervdi/background/winter/snow.png":             mustRead(t, filepath.Join(in.Background, "winter/snow.png")),
	}
	for p, data := range want {
		if got := readFAT(t, fat, p); !bytes.Equal(got, data) {
			t.Errorf("%s on the ESP: %d bytes differing from the %d written", p, len(got), len(data))
		}
	}
	if efi := readFAT(t, fat, "/EFI/BOOT/BOOTX64.EFI"); !bytes.HasPrefix(efi, []byte("MZ")) {
		t.Errorf("/EFI/BOOT/BOOTX64.EFI is not a PE executable")
	}
	if _, err := fat.ReadDir("undervdi/background/empty"); err != nil {
		t.Errorf("empty background directory: %v", err)
	}
	// Every entry carries the build time. (ReadDir takes io/fs paths.)
	for _, dir := range []string{".", "EFI/BOOT", "undervdi", "undervdi/background"} {
		entries, err := fat.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			if !info.ModTime().Equal(testEpoch) {
				t.Errorf("%s/%s modified %v, want the epoch %v", dir, e.Name(), info.ModTime(), testEpoch)
			}
		}
	}

	// The FAT volume ID is the one grub.cfg names, the same in the boot
	// sector and its backup.
	id := raw[espStart+fatVolumeID : espStart+fatVolumeID+4]
	backup := raw[espStart+6*sectorSize+fatVolumeID : espStart+6*sectorSize+fatVolumeID+4]
	if binary.LittleEndian.Uint32(id) != vol || !bytes.Equal(id, backup) {
		t.Errorf("FAT volume ID %x, backup %x: want %08x in both", id, backup, vol)
	}
	// Other inputs, another volume ID: a stick made from another build is
	// not this kiosk's boot partition.
	other := in
	other.Cmdline += " quiet"
	if vol2, err := volumeID(other, b.Epoch); err != nil || vol2 == vol {
		t.Errorf("volumeID of other inputs = %08x, %v; want one other than %08x", vol2, err, vol)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readFAT(t *testing.T, fat filesystem.FileSystem, path string) []byte {
	t.Helper()
	f, err := fat.OpenFile(path, os.O_RDONLY)
	if err != nil {
		t.Errorf("%s on the ESP: %v", path, err)
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Errorf("reading %s on the ESP: %v", path, err)
	}
	return b
}

// TestDiskReproducible builds the same image twice, and once with another
// epoch.
func TestDiskReproducible(t *testing.T) {
	b := testBuilder(t)
	in := testInputs(t)
	dir := t.TempDir()
	build := func(name string, epoch time.Time) []byte {
		bb := *b
		bb.Epoch = epoch
		p := filepath.Join(dir, name)
		if err := bb.Disk(t.Context(), in, p); err != nil {
			t.Fatalf("Disk() = %v", err)
		}
		return mustRead(t, p)
	}
	first := build("a.img", testEpoch)
	second := build("b.img", testEpoch)
	if !bytes.Equal(first, second) {
		t.Errorf("two builds with the same inputs and epoch differ at byte %d", firstDifference(first, second))
	}
	later := build("c.img", testEpoch.Add(24*time.Hour))
	if bytes.Equal(first, later) {
		t.Errorf("builds with different epochs are identical")
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestNoSpace(t *testing.T) {
	b := testBuilder(t)
	b.freeSpace = func(string) (int64, error) { return 10 * mib, nil }
	out := t.TempDir()
	err := b.Disk(t.Context(), testInputs(t), filepath.Join(out, "kiosk.img"))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Disk() with 10 MiB free = %v, want ErrNoSpace", err)
	}
	for _, want := range []string{out, "needs 67 MiB", "10 MiB is available"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Disk() error %q does not say %q", err, want)
		}
	}
	if left, _ := os.ReadDir(out); len(left) != 0 {
		t.Errorf("Disk() without space left %v behind", left)
	}
}

func TestFreeSpace(t *testing.T) {
	n, err := freeSpace(t.TempDir())
	if err != nil || n <= 0 {
		t.Errorf("freeSpace(temp dir) = %d, %v; want some bytes", n, err)
	}
	if _, err := freeSpace(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("freeSpace(missing dir) = nil error, want one")
	}
}

// TestBadInputs checks that wrong inputs are all reported, before anything
// is fetched.
func TestBadInputs(t *testing.T) {
	cache := t.TempDir()
	b := &Builder{Cache: testCacheAt(cache), Epoch: testEpoch}
	good := testInputs(t)
	for _, tc := range []struct {
		name     string
		in       Inputs
		epoch    time.Time
		want     []string
		notExist bool
	}{
		{"missing kernel", Inputs{Kernel: "/nonexistent/vmlinuz", Initramfs: good.Initramfs}, testEpoch,
			[]string{"kernel: stat /nonexistent/vmlinuz: no such file or directory"}, true},
		{"nothing given", Inputs{}, testEpoch, []string{"no kernel given", "no initramfs given"}, false},
		{"directory as initramfs", Inputs{Kernel: good.Kernel, Initramfs: good.Background}, testEpoch,
			[]string{"initramfs: " + good.Background + " is not a regular file"}, false},
		{"missing config", Inputs{Kernel: good.Kernel, Initramfs: good.Initramfs, Config: "/nonexistent/kioskd.conf"}, testEpoch,
			[]string{"kioskd.conf: stat /nonexistent/kioskd.conf"}, true},
		{"file as background", Inputs{Kernel: good.Kernel, Initramfs: good.Initramfs, Background: good.Kernel}, testEpoch,
			[]string{"background images: " + good.Kernel + " is not a directory"}, false},
		{"epoch before FAT", good, time.Unix(0, 0), []string{"SOURCE_DATE_EPOCH) 0 is outside"}, false},
	} {
		bb := *b
		bb.Epoch = tc.epoch
		err := bb.Disk(t.Context(), tc.in, filepath.Join(t.TempDir(), "kiosk.img"))
		if err == nil {
			t.Errorf("%s: Disk() = nil error", tc.name)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: Disk() error %q does not say %q", tc.name, err, want)
			}
		}
		if got := errors.Is(err, fs.ErrNotExist); got != tc.notExist {
			t.Errorf("%s: errors.Is(%v, fs.ErrNotExist) = %v, want %v", tc.name, err, got, tc.notExist)
		}
	}
	if left, _ := os.ReadDir(cache); len(left) != 0 {
		t.Errorf("bad inputs still fetched packages into the cache: %v", left)
	}
}
