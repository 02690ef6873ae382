package pxe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
)

// bootFiles are what a network-boot directory holds, and who fetches them.
var bootFiles = []struct {
	name, use string
	tftp      bool // served by dnsmasq, which has dropped root to read it
}{
	{UndiLoader, "BIOS PXE firmware loads it by TFTP", true},
	{EFILoader, "UEFI PXE firmware loads it by TFTP", true},
	{bootlayout.IPXEScript, "iPXE fetches it by HTTP", false},
	{bootlayout.Kernel, "iPXE fetches it by HTTP", false},
	{bootlayout.Initramfs, "iPXE fetches it by HTTP", false},
}

// CheckBootDir reports every file of the network-boot directory dir that is
// missing or unusable: the kernel and initramfs (from the image builder),
// the boot script (IPXEScript) and the iPXE loaders (InstallLoaders).
// Without kiosk, only the loaders (a server install alone).
func CheckBootDir(dir string, kiosk bool) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("boot directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("boot directory %s is not a directory", dir)
	}
	var errs []error
	if st.Mode().Perm()&0o001 == 0 {
		errs = append(errs, fmt.Errorf("boot directory %s is not searchable by others: dnsmasq's TFTP server, which runs unprivileged, cannot enter it", dir))
	}
	for _, f := range bootFiles {
		if !kiosk && !f.tftp {
			continue
		}
		path := filepath.Join(dir, f.name)
		st, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("boot directory %s has no %s (%s)", dir, f.name, f.use))
		case err != nil:
			errs = append(errs, err)
		case !st.Mode().IsRegular():
			errs = append(errs, fmt.Errorf("%s is not a regular file", path))
		case st.Size() == 0:
			errs = append(errs, fmt.Errorf("%s is empty", path))
		case f.tftp && st.Mode().Perm()&0o004 == 0:
			errs = append(errs, fmt.Errorf("%s is not readable by others: dnsmasq's TFTP server, which runs unprivileged, cannot send it", path))
		}
	}
	return errors.Join(errs...)
}

// InstallLoaders copies Debian's iPXE loaders (see Loaders) into the
// network-boot directory dir, replacing older copies atomically.
func InstallLoaders(ctx context.Context, cache *debpkg.Cache, dir string) (debpkg.Package, error) {
	loaders, pkg, err := Loaders(ctx, cache)
	if err != nil {
		return pkg, err
	}
	for name, src := range loaders {
		if err := copyFile(src, filepath.Join(dir, name)); err != nil {
			return pkg, err
		}
	}
	return pkg, nil
}

// copyFile writes src to dst (mode 0644) by way of a temporary file.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := renameio.NewPendingFile(dst, renameio.WithStaticPermissions(0o644))
	if err != nil {
		return err
	}
	defer out.Cleanup()
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.CloseAtomicallyReplace()
	}
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return nil
}
