package initramfs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// TestReadVersion finds the version file among others in a compressed
// archive, and says "" for an archive without one.
func TestReadVersion(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, recs ...cpio.Record) string {
		path := filepath.Join(dir, name)
		f, _ := os.Create(path)
		z, _ := zstd.NewWriter(f)
		w := cpio.Newc.Writer(z)
		if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
			t.Fatal(err)
		}
		if err := cpio.WriteTrailer(w); err != nil {
			t.Fatal(err)
		}
		z.Close()
		f.Close()
		return path
	}
	with := write("with.img", cpio.StaticFile("bin/kioskd", string(make([]byte, 12345)), 0o755),
		cpio.StaticFile("etc/undervdi-image", "kiosk-0123456789abcdef\n", 0o644),
		cpio.StaticFile("etc/passwd", "root:x:0:0::/:/bin/false\n", 0o644))
	if v, err := ReadVersion(with); err != nil || v != "kiosk-0123456789abcdef" {
		t.Errorf("ReadVersion = %q, %v", v, err)
	}
	without := write("without.img", cpio.StaticFile("bin/kioskd", "x", 0o755))
	if v, err := ReadVersion(without); err != nil || v != "" {
		t.Errorf("ReadVersion of an archive without a version = %q, %v", v, err)
	}
	os.WriteFile(filepath.Join(dir, "junk"), []byte("not an initramfs"), 0o644)
	if _, err := ReadVersion(filepath.Join(dir, "junk")); err == nil {
		t.Error("ReadVersion of junk: no error")
	}
}
