// Package initramfs builds the kiosk's boot image: Debian's kernel and a
// u-root initramfs whose uinit is kioskd, carrying Xorg, remote-viewer
// (spice-gtk, usbredir, GTK) and the kernel modules of common thin clients
// and of QEMU.
//
// Nothing is installed on the build host. Debian packages are fetched into a
// cache (apt-get download) and unpacked there; the image takes only the
// files it needs from them: a fixed list of programs and data directories,
// plus every shared library those programs need, found by reading their ELF
// headers the way the dynamic loader would. The image is a merged-/usr
// tree: /lib and /lib64 are links into /usr.
//
// At run time everything lives in RAM (the initramfs is a tmpfs); the boot
// medium is never mounted writable.
package initramfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"undervdi/internal/debpkg"
	"undervdi/internal/kmod"
	"undervdi/kioskd/usbaccess"
)

// roots are the Debian packages the kiosk's programs come from; their
// dependencies are fetched too, except the pruned ones.
var roots = []string{
	"virt-viewer",                 // remote-viewer, with spice-gtk and usbredir
	"xserver-xorg-core",           // Xorg and the modesetting driver
	"xserver-xorg-video-fbdev",    // Xorg on a plain framebuffer (EFI GOP, VESA)
	"xserver-xorg-input-libinput", // keyboards, mice, touch screens
	"x11-xkb-utils",               // xkbcomp, which Xorg runs to load keymaps
	"xkb-data",
	"fonts-dejavu-core",
	"fontconfig-config",
	"ca-certificates",
	"udev",             // device events for Xorg and USB redirection
	"libc-bin",         // the C.UTF-8 locale
	"shared-mime-info", // GTK finds image types (even its own icons) through it
}

// prune are dependencies the kiosk never runs: package-manager machinery,
// daemons it does not start, and libraries only features it leaves out
// would load (libvirt for virt-viewer's own binary, GL for GLX and glamor).
// If a program does need a file from one of them, the build fails naming
// the missing library.
var prune = map[string]bool{
	"adduser": true, "debconf": true, "cdebconf": true, "dpkg": true, "perl-base": true, "passwd": true,
	"init-system-helpers": true, "systemd": true, "dbus": true, "sensible-utils": true, "lsb-base": true,
	"ucf": true, "install-info": true, "readline-common": true, "keyboard-configuration": true,
	"libvirt0": true, "libvirt-glib-1.0-0": true,
	"libgl1": true, "libegl1": true, "libgbm1": true, "libgl1-mesa-dri": true,
	"dconf-gsettings-backend": true, "gconf-gsettings-backend": true,
	"adwaita-icon-theme": true, "gtk-update-icon-cache": true, "openssl": true,
}

// programs are started by path; they and every library they need go in.
var programs = []string{
	"/usr/bin/remote-viewer",
	"/usr/lib/xorg/Xorg",
	"/usr/bin/xkbcomp",
	"/usr/bin/udevadm",
}

// renamed are programs that act on the name they are started as.
var renamed = map[string]string{
	"/usr/lib/systemd/systemd-udevd": "/usr/bin/udevadm",
}

// trees are data directories copied whole, with the ELF plugins in them.
var trees = []string{
	"/usr/lib/xorg/modules",
	"/usr/share/X11/xkb",
	"/usr/share/X11/xorg.conf.d",
	"/usr/share/X11/locale",
	"/usr/share/fonts/truetype/dejavu",
	"/etc/fonts",
	"/usr/share/fontconfig",
	"/usr/share/libinput",
	"/usr/lib/udev/rules.d",
	"/usr/share/glib-2.0/schemas",
	"/usr/lib/x86_64-linux-gnu/gdk-pixbuf-2.0/2.10.0/loaders",
	"/usr/lib/locale/C.utf8",
}

// skipped are files within trees the kiosk must not carry: GLX and glamor
// pull in Mesa and LLVM (the kiosk draws with the CPU; the VM's screen
// comes over SPICE as bitmaps).
var skipped = map[string]bool{
	"/usr/lib/xorg/modules/extensions/libglx.so": true,
	"/usr/lib/xorg/modules/libglamoregl.so":      true,
}

// Modules are the kernel modules in the image: display, input, USB host
// controllers, network cards, and storage for the boot medium, for common
// thin clients and for QEMU. Coldplug loads those a device asks for.
var Modules = []string{
	// display (simpledrm is not built in Debian 12's kernel; efifb and
	// vesafb are, and Xorg's fbdev driver uses them)
	"bochs", "virtio_gpu", "qxl", "i915", "amdgpu", "radeon",
	// input
	"evdev", "usbhid", "hid_generic", "hid_multitouch", "psmouse",
	// USB host controllers
	"xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd",
	// network
	"e1000", "e1000e", "r8169", "virtio_net", "virtio_pci",
	// entropy for a VM kiosk without RDRAND (TLS and DHCP need random numbers early)
	"virtio_rng",
	// boot media and flash drives
	"virtio_blk", "ahci", "ata_piix", "sd_mod", "sr_mod", "usb_storage", "uas",
	"mmc_block", "sdhci_pci", "sdhci_acpi", "rtsx_pci_sdmmc", "vfat", "nls_cp437", "nls_iso8859_1",
}

// Builder builds the kiosk image into CacheDir, reusing a previous build
// with the same inputs.
type Builder struct {
	CacheDir string // holds fetched packages and built images
	Log      *slog.Logger
	// KioskdPackage is the Go package of the uinit (default
	// undervdi/kioskd/cmd/kioskd), built from the module in the current
	// directory.
	KioskdPackage string
}

// Image is a built kiosk image.
type Image struct {
	Kernel        string           // Debian's bzImage
	Initramfs     string           // zstd-compressed newc cpio
	KernelVersion string           // e.g. 6.1.0-56-amd64
	Packages      []string         // name=version of every Debian package used
	Sizes         map[string]int64 // uncompressed bytes by part (see Part)
	// Version names this image's content ("kiosk-" and 16 hex digits of
	// its inputs' hash); the image says it in /etc/undervdi-image, and
	// kioskd in its hello, so the broker can flag kiosks on older images.
	Version string
}

// VersionFile is where the image keeps its version.
const VersionFile = "/etc/undervdi-image"

// Build returns the kiosk image, building it if its inputs changed.
func (b *Builder) Build(ctx context.Context) (*Image, error) {
	log := b.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	deb, unlock, err := debpkg.OpenLocked(b.CacheDir, log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	start := time.Now()

	// The kernel and its modules.
	kpkg, kroot, kver, err := deb.Kernel(ctx)
	if err != nil {
		return nil, err
	}

	// The userland packages.
	names, err := deb.Closure(ctx, roots, prune)
	if err != nil {
		return nil, err
	}
	log.Info("fetching Debian packages for the kiosk image", "packages", len(names))
	pkgs, err := deb.FetchAll(ctx, names)
	if err != nil {
		return nil, err
	}
	log.Info("unpacking Debian packages", "packages", len(names))
	rootsByPkg, err := unpackAll(ctx, deb, pkgs)
	if err != nil {
		return nil, err
	}
	sys := &sysroot{entries: map[string]entry{}}
	for _, n := range names {
		if err := sys.addTree(n, rootsByPkg[n]); err != nil {
			return nil, err
		}
	}

	log.Debug("building kioskd")
	pkg := b.KioskdPackage
	if pkg == "" {
		pkg = "undervdi/kioskd/cmd/kioskd"
	}
	kioskd, err := b.goBuild(ctx, pkg, "kioskd")
	if err != nil {
		return nil, err
	}
	xsh, err := b.goBuild(ctx, "undervdi/initramfs/xsh", "xsh")
	if err != nil {
		return nil, err
	}
	img := &Image{KernelVersion: kver, Packages: []string{kpkg.String()}}
	for _, p := range pkgs {
		img.Packages = append(img.Packages, p.String())
	}
	sort.Strings(img.Packages)

	// The content, as archive path -> host file, plus generated files.
	files, err := selectFiles(sys)
	if err != nil {
		return nil, err
	}
	gen, err := generatedFiles(ctx, sys)
	if err != nil {
		return nil, err
	}
	mods, modGen, err := moduleFiles(kroot, kver)
	if err != nil {
		return nil, err
	}
	for k, v := range mods {
		files[k] = v
	}
	for k, v := range modGen {
		gen[k] = v
	}

	// The version names the content, wherever it was built: what the
	// image holds (its packages' versions, the generated files, the paths
	// it takes from the packages, kioskd's and xsh's builds). The cache
	// key adds where on this host each file comes from.
	ver := sha256.New()
	fmt.Fprintln(ver, buildRev, kioskd.sum, xsh.sum)
	for _, p := range img.Packages {
		fmt.Fprintln(ver, p)
	}
	for _, k := range sortedKeys(gen) {
		fmt.Fprintf(ver, "%s %x\n", k, sha256.Sum256(gen[k]))
	}
	for _, k := range sortedKeys(files) {
		fmt.Fprintln(ver, k)
	}
	version := "kiosk-" + hex.EncodeToString(ver.Sum(nil))[:16]
	key := sha256.New()
	fmt.Fprintln(key, version)
	for _, k := range sortedKeys(files) {
		fmt.Fprintln(key, k, files[k])
	}
	img.Version = version
	gen[VersionFile] = []byte(version + "\n")
	out := filepath.Join(b.CacheDir, "kiosk-"+hex.EncodeToString(key.Sum(nil))[:16])
	img.Kernel = filepath.Join(out, "vmlinuz")
	img.Initramfs = filepath.Join(out, "initramfs.img")
	if b, err := os.ReadFile(filepath.Join(out, "image.json")); err == nil {
		if err := json.Unmarshal(b, img); err == nil {
			return img, nil
		}
	}

	log.Info("building the kiosk initramfs", "files", len(files)+len(gen), "dir", out)
	tmp, err := os.MkdirTemp(b.CacheDir, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	base, sizes, err := baseArchive(files, gen)
	if err != nil {
		return nil, err
	}
	img.Sizes = sizes
	img.Sizes["kioskd"] = kioskd.size
	img.Sizes[Part("/bin/sh")] += xsh.size
	cpioPath := filepath.Join(tmp, "initramfs.cpio")
	ulog := llog.New(slog.LevelWarn, func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...)) })
	err = uimage.Create(ulog,
		uimage.WithEnv(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64")),
		uimage.WithTempDir(tmp),
		uimage.WithBusyboxCommands("github.com/u-root/u-root/cmds/core/init"),
		uimage.WithInit("init"),
		uimage.WithFiles(kioskd.path+":bin/kioskd", xsh.path+":bin/sh"),
		uimage.WithUinit("/bin/kioskd", "-appliance"),
		uimage.WithBaseArchive(base),
		uimage.WithCPIOOutput(cpioPath),
	)
	if err != nil {
		return nil, fmt.Errorf("building the kiosk initramfs with u-root: %w", err)
	}
	if err := os.MkdirAll(out+".new", 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(out + ".new")
	if err := compress(cpioPath, filepath.Join(out+".new", "initramfs.img")); err != nil {
		return nil, err
	}
	if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+kver), filepath.Join(out+".new", "vmlinuz")); err != nil {
		return nil, err
	}
	meta, _ := json.MarshalIndent(img, "", "  ")
	if err := os.WriteFile(filepath.Join(out+".new", "image.json"), meta, 0o644); err != nil {
		return nil, err
	}
	os.RemoveAll(out)
	if err := os.Rename(out+".new", out); err != nil {
		return nil, err
	}
	st, _ := os.Stat(img.Initramfs)
	log.Info("kiosk initramfs built", "bytes", st.Size(), "took", time.Since(start).Round(time.Second))
	return img, nil
}

// buildRev changes whenever the image's layout changes, to invalidate caches.
const buildRev = "kiosk-4"

type built struct {
	path string
	sum  string
	size int64
}

// goBuild compiles one of the image's Go programs: static, trimmed paths,
// no VCS stamp, so the same source gives the same bytes.
func (b *Builder) goBuild(ctx context.Context, pkg, name string) (*built, error) {
	dst := filepath.Join(b.CacheDir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building %s (%s): %v: %s", name, pkg, err, out)
	}
	data, err := os.ReadFile(dst)
	if err != nil {
		return nil, err
	}
	return &built{path: dst, sum: fmt.Sprintf("%x", sha256.Sum256(data)), size: int64(len(data))}, nil
}

// unpackAll unpacks packages two at a time (dpkg-deb is mostly I/O and
// decompression).
func unpackAll(ctx context.Context, deb *debpkg.Cache, pkgs []debpkg.Package) (map[string]string, error) {
	out := make(map[string]string, len(pkgs))
	var mu sync.Mutex
	var errs []error
	work := make(chan debpkg.Package)
	var wg sync.WaitGroup
	for i := 0; i < runtime.NumCPU(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				root, err := deb.UnpackFetched(ctx, p)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				}
				out[p.Name] = root
				mu.Unlock()
			}
		}()
	}
	for _, p := range pkgs {
		work <- p
	}
	close(work)
	wg.Wait()
	return out, errors.Join(errs...)
}

// selectFiles returns archive path -> host file for the programs, the data
// trees and every shared library they need.
func selectFiles(sys *sysroot) (map[string]string, error) {
	files := map[string]string{}
	var queue []string
	add := func(p string) error {
		p = merged(p)
		if _, ok := files[p]; ok {
			return nil
		}
		e, err := sys.resolve(p)
		if err != nil {
			return err
		}
		files[p] = e.host
		queue = append(queue, p)
		return nil
	}
	for _, p := range programs {
		if err := add(p); err != nil {
			return nil, fmt.Errorf("the kiosk needs %s: %w", p, err)
		}
	}
	for name, target := range renamed {
		e, err := sys.resolve(target)
		if err != nil {
			return nil, err
		}
		files[name] = e.host
	}
	for _, t := range trees {
		got := sys.under(t)
		if len(got) == 0 {
			return nil, fmt.Errorf("no package provides %s", t)
		}
		for _, p := range got {
			if skipped[p] {
				continue
			}
			if _, err := sys.resolve(p); err != nil {
				continue // a dangling link in a data tree is not ours to fix
			}
			if err := add(p); err != nil {
				return nil, err
			}
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		deps, err := sys.elfDeps(p)
		if err != nil {
			return nil, err
		}
		for _, d := range deps {
			if err := add(d); err != nil {
				return nil, fmt.Errorf("%s needs %s: %w", p, d, err)
			}
		}
	}
	return files, nil
}

// moduleFiles picks Modules and their dependencies out of the kernel
// package and writes the index files kioskd's coldplug reads.
func moduleFiles(kroot, kver string) (map[string]string, map[string][]byte, error) {
	mdir := filepath.Join(kroot, "lib", "modules", kver)
	tree, err := kmod.Load(os.DirFS(mdir), Modules...)
	if err != nil {
		return nil, nil, err
	}
	mods, err := tree.Closure(Modules...)
	if err != nil {
		return nil, nil, err
	}
	var dep, alias bytes.Buffer
	if err := kmod.WriteDep(&dep, tree, mods); err != nil {
		return nil, nil, err
	}
	if err := kmod.WriteAlias(&alias, mods); err != nil {
		return nil, nil, err
	}
	builtin, err := os.ReadFile(filepath.Join(mdir, "modules.builtin"))
	if err != nil {
		return nil, nil, err
	}
	arch := "/usr/lib/modules/" + kver + "/"
	files := map[string]string{}
	for _, m := range mods {
		files[arch+m.Path] = filepath.Join(mdir, m.Path)
	}
	gen := map[string][]byte{
		arch + "modules.dep":     dep.Bytes(),
		arch + "modules.alias":   alias.Bytes(),
		arch + "modules.builtin": builtin,
	}
	return files, gen, nil
}

// Part names an image part for the size table (docs/).
func Part(archivePath string) string {
	switch {
	case strings.HasPrefix(archivePath, "/usr/lib/modules/"):
		return "kernel modules"
	case strings.HasPrefix(archivePath, "/usr/lib/xorg/"), strings.HasPrefix(archivePath, "/usr/share/X11/"),
		strings.HasSuffix(archivePath, "/xkbcomp"):
		return "Xorg"
	case strings.Contains(archivePath, "/fonts"):
		return "fonts"
	case strings.Contains(archivePath, "libicu"):
		return "ICU data (libxml2, harfbuzz)"
	case strings.Contains(archivePath, "/udev"), strings.HasSuffix(archivePath, "/udevadm"):
		return "udev"
	case strings.HasPrefix(archivePath, "/usr/lib/"):
		return "shared libraries"
	default:
		return "other"
	}
}

// baseArchive makes the archive u-root adds its init to: u-root's usual
// skeleton, the merged-/usr links, the selected files and the generated
// ones. Every record is reproducible (no times, owners root).
func baseArchive(files map[string]string, gen map[string][]byte) (*cpio.Archive, map[string]int64, error) {
	recs := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.Directory("etc", 0o755),
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("run", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("root", 0o700),
		cpio.Directory("usr", 0o755),
		cpio.Directory("var", 0o755),
		cpio.Directory("var/log", 0o755),
		cpio.Directory("var/lib", 0o755),
		cpio.Directory("var/lib/xkb", 0o755),
		cpio.Directory("var/cache", 0o755),
		cpio.Directory("usr/share/undervdi/background", 0o755),
		cpio.Symlink("lib", "usr/lib"),
		cpio.Symlink("lib64", "usr/lib64"),
		cpio.Symlink("sbin", "usr/sbin"),
		cpio.Symlink("usr/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		// spice-gtk asks this helper for every USB device it redirects;
		// kioskd answers under its name (kioskd/usbaccess).
		cpio.Symlink("usr/libexec/"+usbaccess.HelperName, "/bin/kioskd"),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/tty", 0o666, 5, 0),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.CharDev("dev/urandom", 0o666, 1, 9),
	}
	sizes := map[string]int64{}
	for _, p := range sortedKeys(files) {
		data, err := os.ReadFile(files[p])
		if err != nil {
			return nil, nil, err
		}
		st, err := os.Stat(files[p])
		if err != nil {
			return nil, nil, err
		}
		recs = append(recs, cpio.StaticRecord(data, cpio.Info{Name: strings.TrimPrefix(p, "/"), Mode: cpio.S_IFREG | uint64(st.Mode().Perm())}))
		sizes[Part(p)] += int64(len(data))
	}
	for _, p := range sortedKeys(gen) {
		recs = append(recs, cpio.StaticFile(strings.TrimPrefix(p, "/"), string(gen[p]), 0o644))
		sizes[Part(p)] += int64(len(gen[p]))
	}
	var withDirs []cpio.Record
	dirs := map[string]bool{}
	for _, r := range recs {
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			dirs[r.Name] = true
		}
	}
	for _, r := range recs {
		for d := path.Dir(r.Name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			withDirs = append(withDirs, cpio.Directory(d, 0o755))
		}
		withDirs = append(withDirs, r)
	}
	sort.SliceStable(withDirs, func(i, j int) bool { return depth(withDirs[i].Name) < depth(withDirs[j].Name) })
	cpio.MakeAllReproducible(withDirs)
	a, err := cpio.ArchiveFromRecords(withDirs)
	return a, sizes, err
}

func depth(p string) int { return strings.Count(p, "/") }

// compress writes src zstd-compressed to dst the way the kernel can read
// it (8 MiB window), single-threaded so the bytes are reproducible.
func compress(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20))
	if err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(enc, in); err != nil {
		enc.Close()
		out.Close()
		return err
	}
	if err := enc.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
