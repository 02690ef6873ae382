package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// header builds a qcow2 header by hand, the way qemu-img lays it out.
func header(version uint32, size uint64, snapshots uint32, backing string) []byte {
	b := make([]byte, 512)
	copy(b, Magic)
	be := binary.BigEndian
	be.PutUint32(b[4:], version)
	be.PutUint64(b[24:], size)
	be.PutUint32(b[60:], snapshots)
	if backing != "" {
		be.PutUint64(b[8:], 200)
		be.PutUint32(b[16:], uint32(len(backing)))
		copy(b[200:], backing)
	}
	return b
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Header
		err  bool
	}{
		{"plain", header(3, 1<<30, 0, ""), Header{Version: 3, Size: 1 << 30}, false},
		{"snapshots", header(2, 1<<20, 2, ""), Header{Version: 2, Size: 1 << 20, Snapshots: 2}, false},
		{"backing", header(3, 1<<20, 0, "/golden.qcow2"), Header{Version: 3, Size: 1 << 20, BackingFile: "/golden.qcow2"}, false},
		{"backing beyond buffer", header(3, 1, 0, "/g")[:150], Header{Version: 3, Size: 1, BackingFile: "(outside the header)"}, false},
		{"raw", make([]byte, 512), Header{}, true},
		{"short", header(3, 1, 0, "")[:40], Header{}, true},
		{"version 9", header(9, 1, 0, ""), Header{}, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: Parse() = %+v, %v; want %+v, error %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if _, err := Parse([]byte("hello")); !errors.Is(err, ErrNotQCOW2) {
		t.Errorf("Parse(hello) = %v, want ErrNotQCOW2", err)
	}
}

// TestRealImages checks the parser against images made by qemu-img itself.
func TestRealImages(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img not installed (make deps)")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	over := filepath.Join(dir, "over.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", base, "64M"},
		{"snapshot", "-c", "s1", base},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, over},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	read := func(p string) Header {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h, err := Parse(b[:65536])
		if err != nil {
			t.Fatalf("Parse(%s) = %v", p, err)
		}
		return h
	}
	if h := read(base); h.Snapshots != 1 || h.Size != 64<<20 || h.BackingFile != "" {
		t.Errorf("base = %+v, want 1 snapshot, 64 MiB, no backing file", h)
	}
	if h := read(over); h.Snapshots != 0 || h.BackingFile != base {
		t.Errorf("overlay = %+v, want backing file %s", h, base)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(header(3, 1<<30, 0, ""))
	f.Add(header(3, 1<<30, 1, "/x"))
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err != nil {
			return
		}
		if h.Version != 2 && h.Version != 3 {
			t.Errorf("accepted version %d", h.Version)
		}
		if len(h.BackingFile) > 1023 {
			t.Errorf("backing file name of %d bytes", len(h.BackingFile))
		}
	})
}
