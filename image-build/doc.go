// Package imagebuild turns a kiosk kernel and initramfs into the media kiosks
// boot from: a disk image for a write-protected SD card or USB stick, and the
// files a network-boot server hands out. Both are reproducible: the same
// inputs and SOURCE_DATE_EPOCH give byte-identical output, listed with its
// checksums and package versions in a manifest.
//
// # What the builder writes
//
//	out/kiosk.img            disk image (dd it to the card)
//	out/pxe/vmlinuz          network boot: the kernel,
//	out/pxe/initramfs.img      the initramfs,
//	out/pxe/boot.ipxe          the iPXE script that boots them,
//	out/pxe/undionly.kpxe      iPXE for BIOS PXE ROMs,
//	out/pxe/ipxe.efi           iPXE for UEFI,
//	out/manifest.json        every file above with size and SHA-256
//
// The site's kioskd.conf goes on the disk image only: everything in the
// network-boot directory is served to anyone on the kiosk network, and the
// file may hold kiosk tokens. Network-booted kiosks take their settings from
// DHCP and the kernel command line.
//
// # The disk image
//
// The image is GPT-partitioned, with partitions on MiB boundaries:
//
//	LBA 0          protective MBR; its boot code is GRUB's boot.img
//	LBA 1-33       primary GPT
//	from 1 MiB     partition 1: BIOS boot partition (1 MiB), holds GRUB's core.img
//	from 2 MiB     partition 2: EFI system partition, FAT32, GPT name and label
//	               UNDERVDI, sized to its content with room to spare (at least 64 MiB)
//	last MiB       free, then the backup GPT in the last 33 sectors
//
// The EFI system partition carries the layout described in
// undervdi/internal/bootlayout: GRUB for UEFI in /EFI/BOOT/BOOTX64.EFI, the
// one GRUB configuration both firmware types use in /boot/grub/grub.cfg, and
// the kiosk's files under /undervdi. The rest of the partition is free, so a
// technician can add background images on a PC later. The image is written
// sparse: unused space takes no room on the build host.
//
// # How a kiosk boots it
//
// Legacy BIOS: the BIOS loads the first sector (GRUB's boot.img) and jumps
// to it. boot.img knows one number, patched in by this package: the LBA of
// the BIOS boot partition. It loads that sector, diskboot.img, the first
// sector of core.img, whose block list (also patched in) says where the rest
// of core.img lies. core.img holds GRUB's kernel, the few modules the kiosk
// needs (disk, GPT, FAT, search, configuration, Linux loader, VESA video) and
// a small embedded configuration: find the file system labelled UNDERVDI,
// read /boot/grub/grub.cfg from it.
//
// UEFI: the firmware finds the EFI system partition and runs the removable-
// media default /EFI/BOOT/BOOTX64.EFI, a standalone GRUB image with the same
// embedded configuration; no NVRAM boot entry is needed, so a blank machine
// boots the card.
//
// From there both are the same: grub.cfg loads /undervdi/vmlinuz with the
// kiosk's kernel command line plus undervdi.bootpart=UNDERVDI (so kioskd
// waits for the boot partition to appear), loads /undervdi/initramfs.img and
// boots. There is no menu and no timeout. The kernel unpacks the u-root
// initramfs and runs kioskd, which may read /undervdi/kioskd.conf and the
// background images from the same partition.
//
// GRUB comes from Debian's grub-common, grub-pc-bin and grub-efi-amd64-bin
// packages, fetched and unpacked into a cache by undervdi/internal/debpkg;
// nothing is installed on the build host. The network-boot files use
// Debian's iPXE the same way (undervdi/pxe).
package imagebuild
