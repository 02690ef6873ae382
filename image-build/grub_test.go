package imagebuild

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestGrubConfig(t *testing.T) {
	got := grubConfig(`console=ttyS0  quiet foo="a b" x=$y it's`)
	want := `# undervdi kiosk. GRUB reads this on BIOS and UEFI machines alike and boots
# straight away: there is no menu, so nothing to wait for.
set gfxpayload=auto
linux /undervdi/vmlinuz console=ttyS0 quiet 'foo="a' 'b"' 'x=$y' 'it'\''s' undervdi.bootpart=UNDERVDI
initrd /undervdi/initramfs.img
boot
`
	if got != want {
		t.Errorf("grubConfig() =\n%s\nwant\n%s", got, want)
	}
}

func TestKernelArgs(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"", "undervdi.bootpart=UNDERVDI"},
		{" console=ttyS0\n quiet ", "console=ttyS0 quiet undervdi.bootpart=UNDERVDI"},
		{"undervdi.bootpart=UNDERVDI quiet", "undervdi.bootpart=UNDERVDI quiet"},
	} {
		if got := strings.Join(kernelArgs(tc.cmdline), " "); got != tc.want {
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
	img, err := b.buildGRUB(t.Context())
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
	if !bytes.Contains(img.efiImg, []byte(grubEarlyConfig)) {
		t.Errorf("EFI image lacks the early configuration %q", grubEarlyConfig)
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
