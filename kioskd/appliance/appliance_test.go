package appliance

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// bootSector returns a FAT32 boot sector with volume ID id.
func bootSector(id uint32) []byte {
	b := make([]byte, 512)
	copy(b[82:], "FAT32   ")
	b[0x42] = 0x29
	binary.LittleEndian.PutUint32(b[0x43:], id)
	copy(b[71:], "UNDERVDI   ")
	b[510], b[511] = 0x55, 0xAA
	return b
}

func TestParseFATVolumeID(t *testing.T) {
	if id, ok := parseFATVolumeID(bootSector(0x1a2b3c4d)); !ok || id != "1A2B-3C4D" {
		t.Errorf("FAT32: %q, %v; want 1A2B-3C4D", id, ok)
	}
	fat16 := make([]byte, 512)
	copy(fat16[54:], "FAT16   ")
	fat16[0x26] = 0x29
	binary.LittleEndian.PutUint32(fat16[0x27:], 0xdeadbeef)
	fat16[510], fat16[511] = 0x55, 0xAA
	if id, ok := parseFATVolumeID(fat16); !ok || id != "DEAD-BEEF" {
		t.Errorf("FAT16: %q, %v; want DEAD-BEEF", id, ok)
	}
	noSig := bootSector(1)
	noSig[511] = 0
	noExt := bootSector(1)
	noExt[0x42] = 0
	for name, b := range map[string][]byte{"no boot signature": noSig, "no extended signature": noExt, "short": make([]byte, 100), "ext4": make([]byte, 512)} {
		if id, ok := parseFATVolumeID(b); ok {
			t.Errorf("%s: got %q, want no FAT", name, id)
		}
	}
}

func FuzzParseFATVolumeID(f *testing.F) {
	f.Add(bootSector(0x1a2b3c4d))
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		if id, ok := parseFATVolumeID(b); ok && len(id) != 9 {
			t.Errorf("volume ID %q is not XXXX-XXXX", id)
		}
	})
}

func TestUeventModalias(t *testing.T) {
	add := []byte("add@/devices/pci0000:00/0000:00:02.0\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:02.0\x00SUBSYSTEM=pci\x00MODALIAS=pci:v00001234d00001111sv*\x00SEQNUM=1\x00")
	if got := ueventModalias(add); got != "pci:v00001234d00001111sv*" {
		t.Errorf("add uevent: %q", got)
	}
	for _, msg := range [][]byte{
		[]byte("remove@/devices/x\x00ACTION=remove\x00MODALIAS=pci:v1\x00"),
		[]byte("add@/devices/x\x00ACTION=add\x00"),
		[]byte("libudev\x00\xfe\xed\xca\xfe"), // udevd's own broadcasts
		nil,
	} {
		if got := ueventModalias(msg); got != "" {
			t.Errorf("ueventModalias(%q) = %q, want none", msg, got)
		}
	}
}

func FuzzUeventModalias(f *testing.F) {
	f.Add([]byte("add@/devices/x\x00ACTION=add\x00MODALIAS=usb:v1D6Bp0003\x00"))
	f.Fuzz(func(t *testing.T, b []byte) { ueventModalias(b) })
}

func TestCmdline(t *testing.T) {
	cmdline := "BOOT_IMAGE=/undervdi/vmlinuz quiet undervdi.bootpart=1A2B-3C4D undervdi.kiosk=lobby-1 BOOTIF=01-52-54-00-12-34-56"
	if got := cmdlineValue(cmdline, "undervdi.bootpart"); got != "1A2B-3C4D" {
		t.Errorf("cmdlineValue = %q", got)
	}
	if got := kioskWords(cmdline); got != "BOOT_IMAGE=/undervdi/vmlinuz quiet undervdi.kiosk=lobby-1 BOOTIF=01-52-54-00-12-34-56" {
		t.Errorf("kioskWords = %q", got)
	}
	if got := bootif(cmdline); got != "52:54:00:12:34:56" {
		t.Errorf("bootif = %q", got)
	}
	if got := bootif("quiet"); got != "" {
		t.Errorf("bootif without BOOTIF = %q", got)
	}
}

// TestModulesIndex reads index files as the image builder writes them and
// resolves aliases and load order.
func TestModulesIndex(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("modules.alias", "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias usb:v*p*d*dc*dsc*dp*ic03isc*ip*in* usbhid\nalias pci:v00008086d*sv*sd*bc03sc*i* i915\n")
	write("modules.dep", "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n"+
		"kernel/drivers/gpu/drm/drm.ko:\n"+
		"kernel/drivers/gpu/drm/display/drm_display_helper.ko: kernel/drivers/gpu/drm/drm.ko\n"+
		"kernel/drivers/gpu/drm/i915/i915.ko: kernel/drivers/gpu/drm/display/drm_display_helper.ko kernel/drivers/gpu/drm/drm.ko\n"+
		"kernel/drivers/hid/hid.ko:\n"+
		"kernel/drivers/hid/usbhid/usbhid.ko: kernel/drivers/hid/hid.ko\n")
	m := &Modules{Dir: dir, Log: slog.New(slog.DiscardHandler)}
	if err := m.LoadIndex(); err != nil {
		t.Fatal(err)
	}
	if got := m.tree.Match("pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00"); !slices.Equal(got, []string{"e1000"}) {
		t.Errorf("NIC matches %v, want e1000", got)
	}
	if got := m.tree.Match("pci:v00008086d00003E92sv00001028sd0000085Abc03sc00i00"); !slices.Equal(got, []string{"i915"}) {
		t.Errorf("GPU matches %v, want i915", got)
	}
	if got := m.tree.Match("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"); len(got) != 0 {
		t.Errorf("a device without a module in the image matches %v", got)
	}
	order, err := m.order("i915")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/gpu/drm/drm.ko", "kernel/drivers/gpu/drm/display/drm_display_helper.ko", "kernel/drivers/gpu/drm/i915/i915.ko"}
	if !slices.Equal(order, want) {
		t.Errorf("load order %v, want %v", order, want)
	}
	if _, err := m.order("nosuch"); err == nil {
		t.Errorf("order(nosuch) gave no error")
	}
}
