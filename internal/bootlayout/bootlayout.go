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
//	/undervdi/site.img      optional: a second initramfs with the site's CA (CAPath)
//	/undervdi/kioskd.conf   optional: the site's kiosk settings
//	/undervdi/background/   optional: images shown when there are no ads
//
// Legacy BIOS boots GRUB's core image from a BIOS boot partition. Both GRUBs
// find the partition by its FAT volume ID and pass it to kioskd as
// BootPartKey. Network boot serves Kernel, Initramfs and IPXEScript from one
// directory.
package bootlayout

import "fmt"

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
	// SiteInitrd is a second initramfs, loaded after Initramfs on both
	// kinds of boot media, holding what is the site's and not secret: the
	// broker's CA, at CAPath, which kioskd verifies the broker with.
	SiteInitrd = "site.img"
	CAPath     = "etc/undervdi/ca.pem"
	// BootPartKey is the kernel command-line key naming the partition the
	// kiosk booted from by its FAT volume ID (VolumeID), as in
	// undervdi.bootpart=1A2B-3C4D. GRUB finds the partition by the same ID.
	// The ID is unique to each image build, so a visitor's USB stick that
	// carries the label is never taken for the boot partition; without the
	// key (network boot) kioskd looks for no boot partition at all.
	BootPartKey = "undervdi.bootpart"
)

// VolumeID formats a FAT volume ID the way GRUB (search --fs-uuid), blkid
// and the kernel command line write it: "1A2B-3C4D".
func VolumeID(id uint32) string { return fmt.Sprintf("%04X-%04X", id>>16, id&0xffff) }

// DHCPOption is the site-specific DHCP option (RFC 2132 private range) that
// carries kiosk settings on a kiosk network. Its value is text in the same
// form as the kernel command line's overrides, for example
// `undervdi.server=169.254.24.1 undervdi.kiosk=lobby-2`, so kioskd reads both
// the same way.
const DHCPOption = 224
