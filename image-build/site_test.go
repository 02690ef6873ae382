package imagebuild

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"undervdi/internal/bootlayout"
	"undervdi/pxe"
	"undervdi/server/siteca"
)

// TestSiteInitrd: the boot media carry the broker's CA in a second
// initramfs, at the path kioskd reads it from, loaded by both boot paths.
func TestSiteInitrd(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := siteca.Ensure(dir); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, siteca.CAFile)
	data, err := siteInitrd(ca)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := siteInitrd(ca)
	if !bytes.Equal(data, again) {
		t.Errorf("the site initramfs differs between two builds of one CA")
	}
	a, err := cpio.ArchiveFromReader(cpio.Newc.Reader(bytes.NewReader(data)))
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := a.Get(bootlayout.CAPath)
	if !ok {
		t.Fatalf("the site initramfs lacks %s: %s", bootlayout.CAPath, a)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize))); err != nil || !bytes.Equal(got.Bytes(), mustRead(t, ca)) {
		t.Errorf("%s in the site initramfs differs from the CA (%v)", bootlayout.CAPath, err)
	}
	if cfg := grubConfig("quiet", "1A2B-3C4D", bootlayout.SiteInitrd); !strings.Contains(cfg, "initrd /undervdi/initramfs.img /undervdi/site.img\n") {
		t.Errorf("grub.cfg does not load the site initramfs after the kiosk image:\n%s", cfg)
	}
	script := pxe.IPXEScript("quiet", bootlayout.SiteInitrd)
	if !strings.Contains(script, "initrd=initramfs.img initrd=site.img ") || !strings.Contains(script, "initrd initramfs.img\ninitrd site.img\n") {
		t.Errorf("boot.ipxe does not load the site initramfs after the kiosk image:\n%s", script)
	}

	// Only a CA's certificate is taken.
	bad := filepath.Join(t.TempDir(), "x.pem")
	for _, tc := range []struct{ content, want string }{
		{string(mustRead(t, filepath.Join(dir, "broker.pem"))), "which is no CA"},
		{"not a certificate\n", "holds no PEM certificate"},
	} {
		os.WriteFile(bad, []byte(tc.content), 0o644)
		if err := checkCA(bad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkCA(%q...) = %v, want %q", tc.content[:10], err, tc.want)
		}
	}
	if err := checkCA(ca); err != nil {
		t.Errorf("checkCA(the site CA) = %v", err)
	}
}
