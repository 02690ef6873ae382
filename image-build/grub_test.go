package imagebuild

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestGrubConfig(t *testing.T) {
	got := grubConfig(`console=ttyS0  quiet foo="a b" x=$y it's`, "1A2B-3C4D")
	want := `# undervdi kiosk. GRUB reads this on BIOS and UEFI machines alike and boots
# straight away: there is no menu, so nothing to wait for.
set gfxpayload=auto
linux /undervdi/vmlinuz console=ttyS0 quiet 'foo="a' 'b"' 'x=$y' 'it'\''s' undervdi.bootpart=1A2B-3C4D
initrd /undervdi/initramfs.img
boot
`
	if got != want {
		t.Errorf("grubConfig() =\n%s\nwant\n%s", got, want)
	}
}

func TestKernelArgs(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"", "undervdi.bootpart=1A2B-3C4D"},
		{" console=ttyS0\n quiet ", "console=ttyS0 quiet undervdi.bootpart=1A2B-3C4D"},
		{"undervdi.bootpart=UNDERVDI quiet", "quiet undervdi.bootpart=1A2B-3C4D"}, // the build's own ID wins
	} {
		if got := strings.Join(kernelArgs(tc.cmdline, "1A2B-3C4D"), " "); got != tc.want {
			t.Errorf("kernelArgs(%q) = %q, want %q", tc.cmdline, got, tc.want)
		}
	}
}

func TestGrubQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"console=ttyS0,115200n8", "console=ttyS0,115200n8"},
		{"root=/dev/sda1", "root=/dev/sda1"},
		{"a;b", "'a;b'"},
		{"${x}", "'${x}'"},
		{`"`, `'"'`},
		{"'", `''\'''`},
		{"#c", "'#c'"},
		{"", "''"},
	} {
		if got := grubQuote(tc.in); got != tc.want {
			t.Errorf("grubQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestBuildGRUB checks the images grub-mkimage made from Debian's packages.
func TestBuildGRUB(t *testing.T) {
	b := testBuilder(t)
	img, err := b.buildGRUB(t.Context(), "1A2B-3C4D")
	if err != nil {
		t.Fatalf("buildGRUB() = %v", err)
	}
	if len(img.bootImg) != sectorSize || !bytes.HasSuffix(img.bootImg, []byte{0x55, 0xaa}) {
		t.Errorf("boot.img is %d bytes, ends %x: want one sector with the boot signature", len(img.bootImg), img.bootImg[len(img.bootImg)-2:])
	}
	// grub-mkimage leaves diskboot's block list pointing right behind it,
	// covering the rest of core.img.
	sectors := (len(img.coreImg) + sectorSize - 1) / sectorSize
	if n := binary.LittleEndian.Uint16(img.coreImg[blocklistLen:]); int(n) != sectors-1 {
		t.Errorf("core.img's block list covers %d sectors, want %d", n, sectors-1)
	}
	if seg := binary.LittleEndian.Uint16(img.coreImg[blocklistSegment:]); seg != coreLoadSegment {
		t.Errorf("core.img's block list loads at segment %#x, want %#x", seg, coreLoadSegment)
	}
	if sectors > biosBootSize/sectorSize {
		t.Errorf("core.img is %d sectors, more than the BIOS boot partition", sectors)
	}
	if !bytes.HasPrefix(img.efiImg, []byte("MZ")) {
		t.Errorf("EFI image starts %q, want a PE executable (MZ)", img.efiImg[:2])
	}
	// The EFI image keeps its modules and early configuration uncompressed.
	if early := grubEarlyConfig("1A2B-3C4D"); !bytes.Contains(img.efiImg, []byte(early)) {
		t.Errorf("EFI image lacks the early configuration %q", early)
	}
	want := map[string]bool{grubCommonPackage: true, grubPCPackage: true, grubEFIPackage: true}
	for _, p := range img.packages {
		if !want[p.Name] || p.Version == "" {
			t.Errorf("unexpected package %v", p)
		}
		delete(want, p.Name)
	}
	if len(want) > 0 {
		t.Errorf("packages %v missing from %v", want, img.packages)
	}
}
