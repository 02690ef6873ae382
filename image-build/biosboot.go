package imagebuild

import (
	"encoding/binary"
	"fmt"
)

// Where grub-bios-setup patches GRUB's i386-pc boot.img and diskboot.img
// (GRUB's include/grub/i386/pc/boot.h and grub-core/boot/i386/pc/boot.S,
// diskboot.S; util/setup.c does the patching). This package does the same
// for a core.img embedded in a GPT BIOS boot partition, without reed-solomon
// codes (grub-bios-setup --no-rs-codes): nothing but the firmware touches a
// write-protected card, so there is nothing to repair.
const (
	// BIOS parameter block: boot.img jumps over it. grub-bios-setup keeps
	// whatever the disk has there (zeros under a protective MBR).
	bootBPBStart = 0x03
	bootBPBEnd   = 0x5a
	// KERNEL_SECTOR, u64 LE: the LBA of core.img's first sector.
	bootKernelSector = 0x5c
	// BOOT_DRIVE: 0xff means "the drive the BIOS booted from" (DL).
	bootDrive = 0x64
	// DRIVE_CHECK: a two-byte jmp over code that replaces a DL that does
	// not look like a hard disk with 0x80. grub-bios-setup turns it into
	// two NOPs for hard disks, because some BIOSes pass 0x00 or 0x01.
	bootDriveCheck = 0x66
	// From the Windows NT disk signature to the end of the partition table,
	// the MBR stays as the partitioner wrote it.
	mbrKeepStart = 0x1b8
	mbrKeepEnd   = 0x1fe

	// diskboot.img ends with a block list of 12-byte entries growing down:
	// start LBA (u64), sector count (u16), load segment (u16). Core.img is
	// contiguous, so one entry describes all of it after diskboot itself,
	// and the entry below it, all zeros, ends the list.
	blocklistEntry   = 12
	blocklistStart   = sectorSize - blocklistEntry
	blocklistLen     = sectorSize - 4
	blocklistSegment = sectorSize - 2
	// coreLoadSegment is where diskboot loads the rest of core.img:
	// 0x8200, right behind itself at 0x8000.
	coreLoadSegment = 0x820
	// maxCoreSectors is the most grub-bios-setup embeds: core.img must fit
	// below 0x78000, counting from GRUB's kernel link address 0x9000.
	maxCoreSectors = (0x78000 - 0x9000) / sectorSize
)

// mbrBootCode returns the disk's first sector with GRUB's boot.img as its
// boot code: mbr is the sector the partitioner wrote (its partition table and
// signature are kept), coreLBA the first sector of core.img.
func mbrBootCode(bootImg, mbr []byte, coreLBA uint64) ([]byte, error) {
	if len(bootImg) != sectorSize || len(mbr) != sectorSize {
		return nil, fmt.Errorf("boot.img and MBR must be one sector each, are %d and %d bytes", len(bootImg), len(mbr))
	}
	if bootImg[510] != 0x55 || bootImg[511] != 0xaa {
		return nil, fmt.Errorf("boot.img has no boot signature: not GRUB's i386-pc boot.img")
	}
	if bootImg[bootDriveCheck] != 0xeb && bootImg[bootDriveCheck] != 0x90 {
		return nil, fmt.Errorf("boot.img has %#x at the drive check, want a jmp (0xeb): unknown GRUB version", bootImg[bootDriveCheck])
	}
	s := append([]byte(nil), bootImg...)
	copy(s[bootBPBStart:bootBPBEnd], mbr[bootBPBStart:bootBPBEnd])
	copy(s[mbrKeepStart:mbrKeepEnd], mbr[mbrKeepStart:mbrKeepEnd])
	binary.LittleEndian.PutUint64(s[bootKernelSector:], coreLBA)
	s[bootDrive] = 0xff
	s[bootDriveCheck], s[bootDriveCheck+1] = 0x90, 0x90
	return s, nil
}

// placeCore returns core.img padded to whole sectors, with diskboot's block
// list pointing at the sectors after coreLBA, where the rest of it goes.
func placeCore(coreImg []byte, coreLBA uint64) ([]byte, error) {
	sectors := (len(coreImg) + sectorSize - 1) / sectorSize
	switch {
	case sectors < 2:
		return nil, fmt.Errorf("core.img is %d bytes: too small to be GRUB's", len(coreImg))
	case sectors > maxCoreSectors:
		return nil, fmt.Errorf("core.img is %d sectors, BIOS GRUB can load at most %d: too many modules", sectors, maxCoreSectors)
	}
	c := make([]byte, sectors*sectorSize)
	copy(c, coreImg)
	binary.LittleEndian.PutUint64(c[blocklistStart:], coreLBA+1)
	binary.LittleEndian.PutUint16(c[blocklistLen:], uint16(sectors-1))
	binary.LittleEndian.PutUint16(c[blocklistSegment:], coreLoadSegment)
	clear(c[blocklistStart-blocklistEntry : blocklistStart])
	return c, nil
}
