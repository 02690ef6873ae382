package broker

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"undervdi/internal/testlog"
)

// TestImagesCurrent reads the image versions of image-build's manifests,
// again when one changes, skipping one that is missing or broken.
func TestImagesCurrent(t *testing.T) {
	dir := t.TempDir()
	pxe, sd, gone := filepath.Join(dir, "pxe.json"), filepath.Join(dir, "sd.json"), filepath.Join(dir, "gone.json")
	os.WriteFile(pxe, []byte(`{"image":"kiosk-aaaa","files":[]}`), 0o644)
	os.WriteFile(sd, []byte(`{broken`), 0o644)
	im := &images{paths: []string{pxe, sd, gone}, log: testlog.Logger()}
	if got := im.Current(); !slices.Equal(got, []string{"kiosk-aaaa"}) {
		t.Errorf("Current() = %v", got)
	}
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(pxe, []byte(`{"image":"kiosk-bbbb"}`), 0o644)
	os.WriteFile(sd, []byte(`{"image":"kiosk-aaaa"}`), 0o644)
	if got := im.Current(); !slices.Equal(got, []string{"kiosk-bbbb", "kiosk-aaaa"}) {
		t.Errorf("Current() after the rebuild = %v", got)
	}
}
