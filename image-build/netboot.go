package imagebuild

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
	"undervdi/pxe"
)

// ipxeLoaders fetches Debian's iPXE binaries.
func (b *Builder) ipxeLoaders(ctx context.Context) (map[string]string, debpkg.Package, error) {
	var loaders map[string]string
	var p debpkg.Package
	err := b.withCacheLock(func() error {
		b.log().Info("fetching iPXE", "cache", b.Cache.Dir)
		var err error
		loaders, p, err = pxe.Loaders(ctx, b.Cache)
		return err
	})
	return loaders, p, err
}

// planPXE lists the network-boot files, named as undervdi/pxe serves them.
// The site's kioskd.conf is not among them: it may hold kiosk tokens, and
// everything in the network-boot directory is served to anyone on the
// kiosk network. Network-booted kiosks get their settings from DHCP
// (bootlayout.DHCPOption) and the kernel command line.
func planPXE(in Inputs, loaders map[string]string) ([]entry, error) {
	site, more, err := siteEntry(in, bootlayout.SiteInitrd)
	if err != nil {
		return nil, err
	}
	files := append([]entry{
		{path: bootlayout.Kernel, src: in.Kernel},
		{path: bootlayout.Initramfs, src: in.Initramfs},
		{path: bootlayout.IPXEScript, data: []byte(pxe.IPXEScript(in.Cmdline, more...))},
		{path: pxe.UndiLoader, src: loaders[pxe.UndiLoader]},
		{path: pxe.EFILoader, src: loaders[pxe.EFILoader]},
	}, site...)
	for i := range files {
		f := &files[i]
		if f.src == "" {
			f.size = int64(len(f.data))
			continue
		}
		st, err := os.Stat(f.src)
		if err != nil {
			return nil, err
		}
		f.size = st.Size()
	}
	return files, nil
}

func (b *Builder) writePXE(ctx context.Context, files []entry, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var need int64
	for _, f := range files {
		need += f.size
	}
	if err := b.checkSpace(dir, need); err != nil {
		return err
	}
	b.log().Info("writing network-boot files", "dir", dir)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeFile(f, filepath.Join(dir, f.path)); err != nil {
			return err
		}
	}
	// An older build may have left the site's settings here (see planPXE).
	if err := os.Remove(filepath.Join(dir, bootlayout.Config)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
