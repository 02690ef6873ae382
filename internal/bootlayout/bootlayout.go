// Package bootlayout names where things are on the kiosk's boot media, so
// that the image builder that writes them and kioskd that reads them at boot
// agree.
//
// The SD-card (or USB stick) image is GPT with a FAT32 EFI system partition
// whose GPT name and FAT volume label are both Label:
//
//	/EFI/BOOT/BOOTX64.EFI   GRUB for UEFI firmware
//	/boot/grub/grub.cfg     the boot menu both GRUBs read (the kernel command line lives here)
//	/undervdi/vmlinuz       Debian's kernel
//	/undervdi/initramfs.img the u-root initramfs (zstd-compressed newc cpio), kioskd its uinit
//	/undervdi/kioskd.conf   optional: the site's kiosk settings
//	/undervdi/background/   optional: images shown when there are no ads
//
// Legacy BIOS boots GRUB's core image from a BIOS boot partition. Network
// boot serves Kernel, Initramfs and IPXEScript from one directory.
package bootlayout

const (
	// Label is the boot partition's GPT name and FAT volume label.
	Label = "UNDERVDI"
	// Dir is the directory on the boot partition holding the kiosk's files.
	Dir = "undervdi"
	// Kernel, Initramfs and Config are file names inside Dir (and in the
	// network-boot directory).
	Kernel    = "vmlinuz"
	Initramfs = "initramfs.img"
	Config    = "kioskd.conf"
	// Background is the directory inside Dir with fallback images.
	Background = "background"
	// IPXEScript is the network-boot script's name.
	IPXEScript = "boot.ipxe"
	// CmdlineBootPart is the kernel command-line word that tells kioskd the
	// kiosk booted from media carrying the boot partition, so it waits for
	// it to appear (USB and SD controllers enumerate late).
	CmdlineBootPart = "undervdi.bootpart=" + Label
)

// DHCPOption is the site-specific DHCP option (RFC 2132 private range) that
// carries kiosk settings on a kiosk network. Its value is text in the same
// form as the kernel command line's overrides, for example
// `undervdi.server=169.254.24.1 undervdi.kiosk=lobby-2`, so kioskd reads both
// the same way.
const DHCPOption = 224
