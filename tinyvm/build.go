// Package tinyvm builds and defines the tiny golden VM that the tests and the
// demo clone: Debian's kernel booted directly with a u-root initramfs that
// runs Debian's qemu-guest-agent, plus an empty qcow2 disk. It boots in
// seconds under software emulation, and its guest agent makes the broker's
// readiness check real.
package tinyvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"undervdi/internal/debpkg"
	"undervdi/internal/kmod"
)

// qemuGA is taken from the build host (the qemu-guest-agent package), with
// the shared libraries it links, resolved by u-root's ldd.
const qemuGA = "/usr/sbin/qemu-ga"

// modules the guest needs: the virtio PCI transport, its disk, the
// virtio-serial console that carries the guest agent's channel, and the USB
// controller and drivers that devices redirected from a kiosk meet: mass
// storage (a flash drive is /dev/sda) and HID (a keyboard would be in
// /proc/bus/input/devices; the tests check none ever is).
// virtio_rng feeds the guest's kernel random pool from the host: without
// it, under emulation, a guest program reading crypto/rand (a DHCP
// client's transaction ID) can wait for minutes.
var modules = []string{"virtio_pci", "virtio_blk", "virtio_console", "virtio_net", "virtio_rng", "xhci_pci", "usb_storage", "sd_mod",
	"usbhid", "hid_generic"}

// buildRev changes whenever the image layout changes, to invalidate caches.
const buildRev = "5"

// guestSource is the guest program's source: a change rebuilds the image.
//
//go:embed guest/*.go
var guestSource embed.FS

// Artifacts are the boot files of the tiny VM.
type Artifacts struct {
	Kernel        string // bzImage path
	Initramfs     string // cpio path
	KernelVersion string // e.g. 6.1.0-56-amd64
}

// Builder builds the artifacts into CacheDir, reusing a previous build with
// the same inputs. Debian packages come from apt (`apt-get update` must have
// run); qemu-ga must be installed on the build host.
type Builder struct {
	CacheDir string
	Log      *slog.Logger
}

// Build returns the tiny VM's boot files, building them if needed. Several
// processes may call it at once: they serialise on a lock in CacheDir.
func (b *Builder) Build(ctx context.Context) (*Artifacts, error) {
	log := b.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	deb, unlock, err := debpkg.OpenLocked(b.CacheDir, log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	kpkg, kroot, kver, err := deb.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	ga, err := os.ReadFile(qemuGA)
	if err != nil {
		return nil, fmt.Errorf("the tiny VM carries the host's qemu-ga: %w (apt-get install qemu-guest-agent)", err)
	}

	key := sha256.New()
	parts := [][]byte{[]byte(buildRev), []byte(kpkg.String()), []byte(strings.Join(modules, ",")), ga}
	entries, _ := guestSource.ReadDir("guest")
	for _, e := range entries {
		b, _ := guestSource.ReadFile("guest/" + e.Name())
		parts = append(parts, []byte(e.Name()), b)
	}
	for _, part := range parts {
		key.Write(part)
		key.Write([]byte{0})
	}
	out := filepath.Join(b.CacheDir, "tinyvm-"+hex.EncodeToString(key.Sum(nil))[:16])
	art := &Artifacts{
		Kernel:        filepath.Join(out, "vmlinuz"),
		Initramfs:     filepath.Join(out, "initramfs.cpio"),
		KernelVersion: kver,
	}
	if _, err := os.Stat(art.Initramfs); err == nil {
		return art, nil
	}

	log.Info("building the tiny golden VM image", "kernel", kpkg.String(), "dir", out)
	tmp, err := os.MkdirTemp(b.CacheDir, ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	files, err := moduleFiles(kroot, kver, tmp)
	if err != nil {
		return nil, err
	}
	kernel, err := os.ReadFile(filepath.Join(kroot, "boot", "vmlinuz-"+kver))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "vmlinuz"), kernel, 0o644); err != nil {
		return nil, err
	}
	ulog := llog.New(slog.LevelWarn, func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...)) })
	err = uimage.Create(ulog,
		uimage.WithEnv(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64")),
		uimage.WithTempDir(tmp),
		uimage.WithBusyboxCommands(
			"github.com/u-root/u-root/cmds/core/init",
			"github.com/u-root/u-root/cmds/core/cat",
			"github.com/u-root/u-root/cmds/core/dmesg",
			"github.com/u-root/u-root/cmds/core/ls",
			"github.com/u-root/u-root/cmds/core/sync",
		),
		uimage.WithBinaryCommands("undervdi/tinyvm/guest"),
		uimage.WithInit("init"),
		uimage.WithUinit("guest"),
		uimage.WithSymlink("sbin/shutdown", "guest"),
		uimage.WithSymlink("sbin/poweroff", "guest"),
		uimage.WithFiles(append(files, qemuGA+":usr/sbin/qemu-ga")...),
		uimage.WithCPIOOutput(filepath.Join(tmp, "initramfs.cpio")),
	)
	if err != nil {
		return nil, fmt.Errorf("building the tiny VM initramfs with u-root: %w", err)
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		if err := os.Chmod(filepath.Join(tmp, f), 0o644); err != nil {
			return nil, err
		}
	}
	stage := out + ".new"
	os.RemoveAll(stage)
	if err := os.Mkdir(stage, 0o755); err != nil {
		return nil, err
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio"} {
		if err := os.Rename(filepath.Join(tmp, f), filepath.Join(stage, f)); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(stage, out); err != nil {
		return nil, err
	}
	return art, nil
}

// moduleFiles picks the needed modules out of the unpacked kernel package,
// writes modules.dep and the modules-load.d list into dir, and returns
// u-root "host:archive" file specs for all of them.
func moduleFiles(kroot, kver, dir string) ([]string, error) {
	mdir := filepath.Join(kroot, "lib", "modules", kver)
	tree, err := kmod.Load(os.DirFS(mdir), modules...)
	if err != nil {
		return nil, err
	}
	mods, err := tree.Closure(modules...)
	if err != nil {
		return nil, err
	}
	var dep, builtin bytes.Buffer
	if err := kmod.WriteDep(&dep, tree, mods); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(mdir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	builtin.Write(b)
	arch := "lib/modules/" + kver + "/"
	files := map[string][]byte{
		"modules.dep":       dep.Bytes(),
		"modules.builtin":   builtin.Bytes(),
		"modules-load.conf": []byte(strings.Join(modules, "\n") + "\n"),
	}
	specs := []string{
		filepath.Join(dir, "modules.dep") + ":" + arch + "modules.dep",
		filepath.Join(dir, "modules.builtin") + ":" + arch + "modules.builtin",
		filepath.Join(dir, "modules-load.conf") + ":lib/modules-load.d/tinyvm.conf",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, err
		}
	}
	for _, m := range mods {
		specs = append(specs, filepath.Join(mdir, m.Path)+":"+arch+m.Path)
	}
	return specs, nil
}
