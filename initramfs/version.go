package initramfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// ReadVersion reads the image version (VersionFile) out of a built
// initramfs (zstd-compressed newc cpio), reading it as a stream. An
// initramfs without one (not built by Builder) has version "".
func ReadVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	dec, err := zstd.NewReader(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	defer dec.Close()
	r := bufio.NewReaderSize(dec, 64<<10)
	want := strings.TrimPrefix(VersionFile, "/")
	var hdr [110]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return "", fmt.Errorf("%s: reading the cpio archive: %w", path, err)
		}
		if string(hdr[:6]) != "070701" {
			return "", fmt.Errorf("%s: not a newc cpio archive", path)
		}
		field := func(i int) (int64, error) { return strconv.ParseInt(string(hdr[6+8*i:14+8*i]), 16, 64) }
		size, err1 := field(6)
		nameLen, err2 := field(11)
		if err := errors.Join(err1, err2); err != nil || nameLen < 1 || nameLen > 4096 {
			return "", fmt.Errorf("%s: a bad cpio header", path)
		}
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(r, name); err != nil {
			return "", err
		}
		if _, err := r.Discard(int(pad4(110 + nameLen))); err != nil {
			return "", err
		}
		n := strings.TrimRight(string(name), "\x00")
		if n == "TRAILER!!!" {
			return "", nil
		}
		if n == want && size < 256 {
			data := make([]byte, size)
			if _, err := io.ReadFull(r, data); err != nil {
				return "", err
			}
			return strings.TrimSpace(string(data)), nil
		}
		if _, err := io.CopyN(io.Discard, r, size+pad4(size)); err != nil {
			return "", fmt.Errorf("%s: reading the cpio archive: %w", path, err)
		}
	}
}

// pad4 is how many bytes bring n to a multiple of 4.
func pad4(n int64) int64 { return (4 - n%4) % 4 }
