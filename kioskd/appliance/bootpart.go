package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"undervdi/internal/bootlayout"
)

// errNoBootPart is returned when no block device carries the boot partition.
var errNoBootPart = errors.New("no boot partition labelled " + bootlayout.Label)

// findBootPart returns the /dev path of the FAT file system labelled
// bootlayout.Label, looking until wait is over (USB and SD readers
// enumerate late).
func findBootPart(ctx context.Context, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		names, _ := filepath.Glob("/sys/class/block/*")
		for _, n := range names {
			dev := "/dev/" + filepath.Base(n)
			if label, ok := fatLabel(dev); ok && label == bootlayout.Label {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", errNoBootPart
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fatLabel reads the volume label from a FAT boot sector (FAT32 or FAT12/16).
func fatLabel(dev string) (string, bool) {
	f, err := os.Open(dev)
	if err != nil {
		return "", false
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := f.ReadAt(b, 0); err != nil || b[510] != 0x55 || b[511] != 0xAA {
		return "", false
	}
	return parseFATLabel(b)
}

func parseFATLabel(b []byte) (string, bool) {
	switch {
	case bytes.Equal(b[82:90], []byte("FAT32   ")):
		return strings.TrimRight(string(b[71:82]), " "), true
	case bytes.HasPrefix(b[54:62], []byte("FAT")):
		return strings.TrimRight(string(b[43:54]), " "), true
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
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	if err := unix.Mount(dev, dir, "vfat", flags, "shortname=mixed,iocharset=iso8859-1,codepage=437"); err != nil {
		return fmt.Errorf("mounting %s read-only at %s: %w", dev, dir, err)
	}
	return nil
}
