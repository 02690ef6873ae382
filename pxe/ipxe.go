// Package pxe boots kiosks from the network: the dnsmasq configuration that
// hands them addresses (or only boot information, beside a site's own DHCP
// server), iPXE chainloading for BIOS and UEFI clients with Debian's iPXE
// binaries, and the HTTP server that serves the kernel and the initramfs.
//
// Config.Dnsmasq writes dnsmasq's configuration (dnsmasq.go), Handler
// serves the boot directory (http.go), CheckBootDir and InstallLoaders
// fill and check that directory (bootdir.go), and Run runs dnsmasq and the
// HTTP server together (run.go); cmd/undervdi-pxe is the command.
package pxe

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
)

// Firmware loaders, by the names they have in the network-boot directory.
const (
	// UndiLoader is iPXE for legacy BIOS clients (loaded by their PXE ROM).
	UndiLoader = "undionly.kpxe"
	// EFILoader is iPXE for x86-64 UEFI clients.
	EFILoader = "ipxe.efi"
)

// ipxePackage is the Debian package holding the iPXE binaries.
const ipxePackage = "ipxe"

// IPXEScript returns the iPXE script that boots the kiosk from the directory
// the script itself was fetched from (iPXE resolves relative names against
// the script's URL). BOOTIF tells kioskd which interface the kiosk booted
// from, so it asks DHCP there first; initrd= names the initramfs for kernels
// started through the EFI stub. More initramfs files (bootlayout.SiteInitrd)
// load after the kiosk image, in order.
func IPXEScript(cmdline string, more ...string) string {
	initrds := append([]string{bootlayout.Initramfs}, more...)
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("# undervdi kiosk, network boot\n")
	b.WriteString("kernel " + bootlayout.Kernel)
	for _, i := range initrds {
		b.WriteString(" initrd=" + i) // for a UEFI kernel's own stub
	}
	fmt.Fprintf(&b, " %s BOOTIF=01-${netX/mac:hexhyp}\n", strings.Join(strings.Fields(cmdline), " "))
	for _, i := range initrds {
		fmt.Fprintf(&b, "initrd %s\n", i)
	}
	b.WriteString("boot\n")
	return b.String()
}

// Loaders returns the paths of Debian's iPXE binaries, keyed by UndiLoader
// and EFILoader, fetching and unpacking the ipxe package into cache if
// needed. Nothing is installed on the build host.
func Loaders(ctx context.Context, cache *debpkg.Cache) (map[string]string, debpkg.Package, error) {
	p, root, err := cache.Unpack(ctx, ipxePackage)
	if err != nil {
		return nil, p, err
	}
	m := map[string]string{}
	for _, name := range []string{UndiLoader, EFILoader} {
		path, err := resolveInRoot(root, filepath.Join("usr/lib/ipxe", name))
		if err == nil {
			_, err = os.Stat(path)
		}
		if err != nil {
			return nil, p, fmt.Errorf("%s has no %s: %w", p, name, err)
		}
		m[name] = path
	}
	return m, p, nil
}

// resolveInRoot returns where rel, a file of the package unpacked at root,
// really is: Debian 12's /usr/lib/ipxe/ipxe.efi, for one, is a link to
// /boot/ipxe.efi, which is under root here.
func resolveInRoot(root, rel string) (string, error) {
	path := filepath.Join(root, rel)
	for range 8 {
		target, err := os.Readlink(path)
		if err != nil {
			return path, nil // not a link: the caller's Stat says if it is there
		}
		if filepath.IsAbs(target) {
			path = filepath.Join(root, target)
		} else {
			path = filepath.Join(filepath.Dir(path), target)
		}
		if !strings.HasPrefix(path, filepath.Clean(root)+string(filepath.Separator)) {
			return "", fmt.Errorf("%s links out of the package", rel)
		}
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", rel)
}
