package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	imagebuild "undervdi/image-build"
	"undervdi/internal/debpkg"
)

func TestRunRequiresFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-initramfs", "i", "-out", dir}, "-kernel and -initramfs go together"},
		{[]string{"-kernel", "k", "-out", dir}, "-kernel and -initramfs go together"},
		{[]string{"-kernel", "k", "-initramfs", "i"}, "-out is required"},
		{[]string{"-kernel", "k", "-initramfs", "i", "-out", dir, "extra"}, "unexpected arguments"},
		{[]string{"-kernel", "k", "-initramfs", "i", "-out", dir, "-epoch", "yesterday"}, `-epoch="yesterday": want Unix seconds`},
		{[]string{"-kernel", filepath.Join(dir, "none"), "-initramfs", filepath.Join(dir, "none2"), "-out", dir, "-epoch", "1700000000"},
			"kernel: stat " + filepath.Join(dir, "none") + ": no such file or directory"},
	} {
		err := run(context.Background(), tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

func TestBuildTime(t *testing.T) {
	dir := t.TempDir()
	old, newer := time.Unix(1600000000, 0), time.Unix(1700000000, 0)
	in := imagebuild.Inputs{
		Kernel:     filepath.Join(dir, "k"),
		Initramfs:  filepath.Join(dir, "i"),
		Background: filepath.Join(dir, "bg"),
	}
	os.Mkdir(in.Background, 0o755)
	for _, p := range []string{in.Kernel, in.Initramfs, filepath.Join(in.Background, "x.png")} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	os.Chtimes(in.Background, old, old)
	// The newest input is inside the background directory.
	os.Chtimes(filepath.Join(in.Background, "x.png"), newer, newer)

	t.Setenv("SOURCE_DATE_EPOCH", "")
	if got, err := buildTime("", in); err != nil || !got.Equal(newer) {
		t.Errorf("buildTime() from mtimes = %v, %v; want %v", got, err, newer)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1650000000")
	if got, err := buildTime("", in); err != nil || got.Unix() != 1650000000 {
		t.Errorf("buildTime() with SOURCE_DATE_EPOCH = %v, %v; want 1650000000", got, err)
	}
	if got, err := buildTime("1500000000", in); err != nil || got.Unix() != 1500000000 {
		t.Errorf("buildTime(-epoch) = %v, %v; want 1500000000", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "soon")
	if _, err := buildTime("", in); err == nil {
		t.Errorf("buildTime() with SOURCE_DATE_EPOCH=soon = nil error, want one")
	}
}

// TestRun builds twice with the real CLI code, taking the build time from
// the inputs' mtimes, and checks the two disk images are identical.
func TestRun(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	dir := t.TempDir()
	kernel, initramfs := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.img")
	os.WriteFile(kernel, bytes.Repeat([]byte("kernel"), 100000), 0o644)
	os.WriteFile(initramfs, bytes.Repeat([]byte("initramfs"), 100000), 0o644)
	var imgs [][]byte
	for _, out := range []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")} {
		var log bytes.Buffer
		err := run(context.Background(), []string{"-kernel", kernel, "-initramfs", initramfs, "-cmdline", "quiet",
			"-package", "linux-image-6.1.0-56-amd64=6.1.192-2", "-out", out}, &log)
		if errors.Is(err, debpkg.ErrNoPackage) {
			t.Skipf("Debian packages not available: %v", err)
		}
		if err != nil {
			t.Fatalf("run() = %v; log:\n%s", err, &log)
		}
		if !strings.Contains(log.String(), "writing disk image") {
			t.Errorf("run() logged no progress:\n%s", &log)
		}
		img, err := os.ReadFile(filepath.Join(out, imagebuild.DiskImageName))
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
		manifest, err := os.ReadFile(filepath.Join(out, imagebuild.ManifestName))
		if err != nil || !bytes.Contains(manifest, []byte(`"linux-image-6.1.0-56-amd64=6.1.192-2"`)) {
			t.Errorf("manifest.json (%v) lacks the -package given:\n%s", err, manifest)
		}
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Errorf("two runs on unchanged inputs made different images")
	}
}
