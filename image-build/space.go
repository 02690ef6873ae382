package imagebuild

import (
	"errors"
	"fmt"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"
)

// ErrNoSpace is returned, before anything is written, when the output
// directory's file system has less room than the build needs.
var ErrNoSpace = errors.New("not enough free space")

// checkSpace fails with ErrNoSpace unless dir has need bytes free. The disk
// image counts at its full size: it is written sparse, but copying it or
// writing it to a file system without holes (a FAT USB stick) fills it in.
func (b *Builder) checkSpace(dir string, need int64) error {
	free := b.freeSpace
	if free == nil {
		free = freeSpace
	}
	avail, err := free(dir)
	if err != nil {
		return fmt.Errorf("checking free space in %s: %w", dir, err)
	}
	if avail < need {
		return fmt.Errorf("%w in %s: the build needs %s, %s is available",
			ErrNoSpace, dir, humanize.IBytes(uint64(need)), humanize.IBytes(uint64(avail)))
	}
	return nil
}

// freeSpace returns the bytes an unprivileged user may still write in dir.
func freeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}
