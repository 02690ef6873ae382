package appliance

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"undervdi/internal/bootlayout"
)

// errNoBootPart is returned when no block device carries the boot partition.
var errNoBootPart = errors.New("no boot partition with the volume ID the kernel command line names")

// findBootPart returns the /dev path of the FAT file system with volumeID
// (bootlayout.VolumeID's form), looking until wait is over (USB and SD
// readers enumerate late). The ID, unique to the image build, is what
// tells the boot medium from a visitor's USB stick, whatever its label.
func findBootPart(ctx context.Context, volumeID string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		names, _ := filepath.Glob("/sys/class/block/*")
		for _, n := range names {
			dev := "/dev/" + filepath.Base(n)
			if id, ok := fatVolumeID(dev); ok && id == volumeID {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w (%s)", errNoBootPart, volumeID)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fatVolumeID reads the volume ID from a FAT boot sector (FAT32 or
// FAT12/16), formatted as bootlayout.VolumeID does.
func fatVolumeID(dev string) (string, bool) {
	f, err := os.Open(dev)
	if err != nil {
		return "", false
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := f.ReadAt(b, 0); err != nil {
		return "", false
	}
	return parseFATVolumeID(b)
}

// parseFATVolumeID reads a boot sector: FAT32 keeps the extended boot
// signature (0x29) at 0x42 and the ID at 0x43, FAT12/16 at 0x26 and 0x27.
func parseFATVolumeID(b []byte) (string, bool) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xAA {
		return "", false
	}
	switch {
	case bytes.Equal(b[82:90], []byte("FAT32   ")) && b[0x42] == 0x29:
		return bootlayout.VolumeID(binary.LittleEndian.Uint32(b[0x43:])), true
	case bytes.HasPrefix(b[54:62], []byte("FAT")) && b[0x26] == 0x29:
		return bootlayout.VolumeID(binary.LittleEndian.Uint32(b[0x27:])), true
	}
	return "", false
}

// mountReadOnly marks the block device read-only in the kernel (BLKROSET:
// no write reaches the medium, whatever mounts it) and mounts it read-only
// at dir.
func mountReadOnly(dev, dir string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, 1)
	f.Close()
	if err != nil {
		return fmt.Errorf("setting %s read-only: %w", dev, err)
	}
	// And the whole card, so no other partition of it is written either.
	if disk, err := filepath.EvalSymlinks("/sys/class/block/" + filepath.Base(dev) + "/.."); err == nil {
		if d, err := os.OpenFile("/dev/"+filepath.Base(disk), os.O_RDONLY, 0); err == nil {
			unix.IoctlSetPointerInt(int(d.Fd()), unix.BLKROSET, 1)
			d.Close()
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if err := unix.Mount(dev, dir, "vfat", flags, "shortname=mixed,iocharset=iso8859-1,codepage=437,uid=0,gid=0,fmask=0177,dmask=0077"); err != nil {
		return fmt.Errorf("mounting %s read-only at %s: %w", dev, dir, err)
	}
	return nil
}
