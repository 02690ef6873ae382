package imagebuild

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/renameio/v2"

	"undervdi/initramfs"
	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
)

// Names in the output directory of Builder.All.
const (
	DiskImageName = "kiosk.img"
	PXEDirName    = "pxe"
	ManifestName  = "manifest.json"
)

// Inputs are what a kiosk boots. Kernel and Initramfs are required.
type Inputs struct {
	Kernel     string // bzImage
	Initramfs  string // the u-root initramfs
	Cmdline    string // kernel command line, without undervdi.bootpart (the disk image adds it)
	Config     string // optional kioskd.conf
	Background string // optional directory of fallback images, copied as a tree
	CA         string // optional: the broker's CA (vdi-broker ca), which kioskd verifies it with

	// Packages the kernel and initramfs were built from, as "name=version",
	// recorded in the manifest.
	Packages []string
}

// Builder builds kiosk boot media. Debian packages (GRUB, iPXE) are fetched
// and unpacked into Cache, which other processes may share. Epoch is the
// build's SOURCE_DATE_EPOCH: it stamps every file on the FAT file system and
// feeds the image's GUIDs, so equal inputs and Epoch give equal bytes.
type Builder struct {
	Cache *debpkg.Cache
	Epoch time.Time
	Log   *slog.Logger

	// freeSpace replaces the statfs call in tests.
	freeSpace func(dir string) (int64, error)
}

// Disk writes the SD-card / USB disk image to path.
func (b *Builder) Disk(ctx context.Context, in Inputs, path string) error {
	if err := b.check(in); err != nil {
		return err
	}
	vol, err := volumeID(in, b.Epoch)
	if err != nil {
		return err
	}
	grub, err := b.buildGRUB(ctx, bootlayout.VolumeID(vol))
	if err != nil {
		return err
	}
	plan, err := planDisk(in, grub, vol)
	if err != nil {
		return err
	}
	return b.writeDisk(ctx, plan, path)
}

// PXE writes the network-boot files into dir, which an HTTP server then
// serves to iPXE (see undervdi/pxe). A kioskd.conf left in dir by an
// earlier build is removed when in has none, so kiosks cannot pick up stale
// settings.
func (b *Builder) PXE(ctx context.Context, in Inputs, dir string) error {
	if err := b.check(in); err != nil {
		return err
	}
	loaders, _, err := b.ipxeLoaders(ctx)
	if err != nil {
		return err
	}
	files, err := planPXE(in, loaders)
	if err != nil {
		return err
	}
	return b.writePXE(ctx, files, dir)
}

// All writes the disk image, the network-boot files and the manifest into
// outDir (DiskImageName, PXEDirName, ManifestName) and returns the manifest. Free
// space is checked for all of them before anything is written.
func (b *Builder) All(ctx context.Context, in Inputs, outDir string) (*Manifest, error) {
	if err := b.check(in); err != nil {
		return nil, err
	}
	vol, err := volumeID(in, b.Epoch)
	if err != nil {
		return nil, err
	}
	grub, err := b.buildGRUB(ctx, bootlayout.VolumeID(vol))
	if err != nil {
		return nil, err
	}
	loaders, ipxe, err := b.ipxeLoaders(ctx)
	if err != nil {
		return nil, err
	}
	plan, err := planDisk(in, grub, vol)
	if err != nil {
		return nil, err
	}
	files, err := planPXE(in, loaders)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	need := plan.size + 64<<10 // the manifest
	for _, f := range files {
		need += f.size
	}
	if err := b.checkSpace(outDir, need); err != nil {
		return nil, err
	}

	if err := b.writeDisk(ctx, plan, filepath.Join(outDir, DiskImageName)); err != nil {
		return nil, err
	}
	if err := b.writePXE(ctx, files, filepath.Join(outDir, PXEDirName)); err != nil {
		return nil, err
	}
	written := []string{DiskImageName}
	for _, f := range files {
		written = append(written, PXEDirName+"/"+f.path)
	}
	packages := append(slices.Clone(in.Packages), ipxe.String())
	for _, p := range grub.packages {
		packages = append(packages, p.String())
	}
	m, err := newManifest(outDir, written, packages, b.Epoch, in.Cmdline)
	if err != nil {
		return nil, err
	}
	if m.Image, err = initramfs.ReadVersion(in.Initramfs); err != nil || m.Image == "" {
		// Not an initramfs initramfs.Builder made: it boots all the same.
		b.log().Warn("the initramfs names no image version: the broker cannot tell kiosks on it from older ones", "err", err)
	}
	if err := m.write(filepath.Join(outDir, ManifestName)); err != nil {
		return nil, err
	}
	b.log().Info("kiosk boot media built", "dir", outDir, "files", len(m.Files)+1)
	return m, nil
}

// check reports everything wrong with the builder and the inputs at once.
func (b *Builder) check(in Inputs) error {
	var errs []error
	if b.Cache == nil {
		errs = append(errs, errors.New("image builder has no package cache"))
	}
	// FAT time stamps count years from 1980 in seven bits.
	if b.Epoch.Before(time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)) || !b.Epoch.Before(time.Date(2108, 1, 1, 0, 0, 0, 0, time.UTC)) {
		errs = append(errs, fmt.Errorf("build time (SOURCE_DATE_EPOCH) %d is outside what FAT can record, 1980 to 2107", b.Epoch.Unix()))
	}
	errs = append(errs, checkFile("kernel", in.Kernel, true), checkFile("initramfs", in.Initramfs, true),
		checkFile("kioskd.conf", in.Config, false),
		checkCA(in.CA))
	if in.Background != "" {
		if st, err := os.Stat(in.Background); err != nil {
			errs = append(errs, fmt.Errorf("background images: %w", err))
		} else if !st.IsDir() {
			errs = append(errs, fmt.Errorf("background images: %s is not a directory", in.Background))
		}
	}
	return errors.Join(errs...)
}

// checkFile checks that path, named what in errors, is a regular file.
func checkFile(what, path string, required bool) error {
	if path == "" {
		if required {
			return fmt.Errorf("no %s given", what)
		}
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: %s is not a regular file", what, path)
	}
	return nil
}

func (b *Builder) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// writeFile copies e to dst through a temporary file beside it, so dst is
// never half written (an HTTP server may be serving it).
func writeFile(e entry, dst string) (err error) {
	r, err := e.open()
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := renameio.NewPendingFile(dst, renameio.WithStaticPermissions(0o644))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return f.CloseAtomicallyReplace()
}
