package imagebuild

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
)

// The Debian packages GRUB comes from, unpacked into the package cache.
const (
	grubCommonPackage = "grub-common"        // /usr/bin/grub-mkimage
	grubPCPackage     = "grub-pc-bin"        // /usr/lib/grub/i386-pc: BIOS modules, boot.img
	grubEFIPackage    = "grub-efi-amd64-bin" // /usr/lib/grub/x86_64-efi: UEFI modules
)

// grubConfigPath is where both GRUBs find their configuration on the EFI
// system partition.
const grubConfigPath = "/boot/grub/grub.cfg"

// GRUB modules built into the images. Nothing is loaded from disk at boot, so
// the list is all GRUB can do: find the partition by its label and boot Linux
// from FAT. grub-mkimage adds their dependencies.
var (
	grubModules = []string{
		"part_gpt", "fat", // read the boot partition
		"search",     // find it by label
		"configfile", // read grub.cfg...
		"normal",     // ...which needs the script engine
		"linux",      // boot the kernel
	}
	// biosdisk reads disks through the BIOS; vbe gives the kernel a VESA
	// framebuffer (gfxpayload in grub.cfg), so a kiosk whose GPU has no
	// kernel driver still gets a picture, through vesafb or simpledrm.
	grubBIOSModules = append([]string{"biosdisk", "vbe"}, grubModules...)
	// efi_gop passes the UEFI framebuffer on to the kernel.
	grubEFIModules = append([]string{"efi_gop"}, grubModules...)
)

// grubEarlyConfig is built into both GRUB images. $root starts out as the
// device GRUB was loaded from, which for BIOS is the whole disk, so look for
// the boot partition by its FAT volume ID, unique to this build (a label
// could be faked by any USB stick plugged into the kiosk). If that fails
// GRUB prints why and tries the default root anyway.
func grubEarlyConfig(volumeID string) string {
	return "search --no-floppy --set=root --fs-uuid " + volumeID + "\n" +
		"configfile " + grubConfigPath + "\n"
}

// grubImages are GRUB's boot programs, ready to be put on the disk.
type grubImages struct {
	bootImg  []byte // i386-pc boot.img: the MBR boot code, one sector
	coreImg  []byte // i386-pc core.img: diskboot.img, then GRUB and its modules
	efiImg   []byte // x86_64-efi image, /EFI/BOOT/BOOTX64.EFI
	packages []debpkg.Package
}

// buildGRUB fetches the GRUB packages and builds the BIOS and UEFI images,
// which look for the partition with volumeID.
func (b *Builder) buildGRUB(ctx context.Context, volumeID string) (*grubImages, error) {
	b.log().Info("fetching GRUB packages", "cache", b.Cache.Dir)
	roots, pkgs, err := b.unpack(ctx, grubCommonPackage, grubPCPackage, grubEFIPackage)
	if err != nil {
		return nil, err
	}
	b.log().Info("building GRUB images", "grub", pkgs[0].Version)
	mkimage := filepath.Join(roots[0], "usr/bin/grub-mkimage")
	pcDir := filepath.Join(roots[1], "usr/lib/grub/i386-pc")
	efiDir := filepath.Join(roots[2], "usr/lib/grub/x86_64-efi")

	tmp, err := os.MkdirTemp("", "image-build-grub-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	early := filepath.Join(tmp, "early.cfg")
	if err := os.WriteFile(early, []byte(grubEarlyConfig(volumeID)), 0o644); err != nil {
		return nil, err
	}
	img := &grubImages{packages: pkgs}
	if img.bootImg, err = os.ReadFile(filepath.Join(pcDir, "boot.img")); err != nil {
		return nil, fmt.Errorf("%s: %w", pkgs[1], err)
	}
	if img.coreImg, err = grubMkimage(ctx, mkimage, pcDir, "i386-pc", early, grubBIOSModules, tmp); err != nil {
		return nil, err
	}
	if img.efiImg, err = grubMkimage(ctx, mkimage, efiDir, "x86_64-efi", early, grubEFIModules, tmp); err != nil {
		return nil, err
	}
	return img, nil
}

// grubMkimage runs grub-mkimage for one platform and returns the image.
func grubMkimage(ctx context.Context, mkimage, modDir, format, early string, modules []string, tmp string) ([]byte, error) {
	out := filepath.Join(tmp, format+".img")
	args := append([]string{"-d", modDir, "-O", format, "-c", early, "-p", path.Dir(grubConfigPath), "-o", out}, modules...)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, mkimage, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		// A fresh host may lack one of grub-mkimage's shared libraries; the
		// loader says which on stderr.
		return nil, fmt.Errorf("grub-mkimage -O %s: %v: %s", format, err, strings.TrimSpace(stderr.String()))
	}
	return os.ReadFile(out)
}

// unpack fetches and unpacks Debian packages (asking apt about all of them
// at once), returning their trees and versions in the order asked.
func (b *Builder) unpack(ctx context.Context, names ...string) ([]string, []debpkg.Package, error) {
	var roots []string
	var pkgs []debpkg.Package
	err := b.withCacheLock(func() error {
		var err error
		if pkgs, err = b.Cache.FetchAll(ctx, names); err != nil {
			return err
		}
		for _, p := range pkgs {
			root, err := b.Cache.UnpackFetched(ctx, p)
			if err != nil {
				return err
			}
			roots = append(roots, root)
		}
		return nil
	})
	return roots, pkgs, err
}

// withCacheLock runs f holding a lock file in the package cache. The cache
// may be shared with other processes (a CLI run beside the tests), and
// debpkg only serialises callers of one Cache value.
func (b *Builder) withCacheLock(f func() error) error {
	if err := os.MkdirAll(b.Cache.Dir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(b.Cache.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	return f()
}

// grubConfig returns grub.cfg: boot the kiosk at once, with cmdline and the
// word that tells kioskd it booted from the partition with volumeID, and the
// kiosk image followed by more initramfs files (bootlayout.SiteInitrd).
func grubConfig(cmdline, volumeID string, more ...string) string {
	words := kernelArgs(cmdline, volumeID)
	for i, w := range words {
		words[i] = grubQuote(w)
	}
	var b strings.Builder
	b.WriteString("# undervdi kiosk. GRUB reads this on BIOS and UEFI machines alike and boots\n")
	b.WriteString("# straight away: there is no menu, so nothing to wait for.\n")
	// On BIOS, ask for a VESA framebuffer (the best mode the monitor reports)
	// instead of text mode; GRUB falls back to text if there is none. UEFI
	// GRUB does the same with the firmware's framebuffer by default.
	b.WriteString("set gfxpayload=auto\n")
	fmt.Fprintf(&b, "linux %s %s\n", path.Join("/", bootlayout.Dir, bootlayout.Kernel), strings.Join(words, " "))
	initrds := []string{path.Join("/", bootlayout.Dir, bootlayout.Initramfs)}
	for _, m := range more {
		initrds = append(initrds, path.Join("/", bootlayout.Dir, m))
	}
	fmt.Fprintf(&b, "initrd %s\n", strings.Join(initrds, " "))
	b.WriteString("boot\n")
	return b.String()
}

// kernelArgs splits cmdline into words and appends bootlayout.BootPartKey
// with volumeID, replacing any the caller gave.
func kernelArgs(cmdline, volumeID string) []string {
	var words []string
	for _, w := range strings.Fields(cmdline) {
		if !strings.HasPrefix(w, bootlayout.BootPartKey+"=") {
			words = append(words, w)
		}
	}
	return append(words, bootlayout.BootPartKey+"="+volumeID)
}

// grubQuote quotes one word for GRUB's script parser, which would otherwise
// expand $variables and strip quotes the kernel should see. Plain words stay
// as they are, so grub.cfg stays readable.
func grubQuote(w string) string {
	plain := w != ""
	for _, r := range w {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._,:/=+@%-", r)) {
			plain = false
			break
		}
	}
	if plain {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}
