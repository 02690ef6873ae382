// Command image-build makes a kiosk's boot media from its kernel and
// initramfs: an SD-card/USB disk image, the network-boot files, and a
// manifest (see package undervdi/image-build).
//
//	image-build [-kernel vmlinuz -initramfs initramfs.img] [-cmdline 'quiet'] \
//	    [-config kioskd.conf] [-background dir] -out out/
//
// Without -kernel and -initramfs it builds the kiosk image (package
// undervdi/initramfs) from Debian's packages first.
//
// writes out/kiosk.img, out/pxe/ and out/manifest.json. The build time
// recorded in the media is -epoch, else $SOURCE_DATE_EPOCH, else the newest
// modification time among the inputs: rebuilding unchanged inputs gives
// byte-identical output either way.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	imagebuild "undervdi/image-build"
	"undervdi/initramfs"
	"undervdi/internal/debpkg"
)

// DefaultCmdline is the kiosk's kernel command line when image-build makes
// the kiosk image itself: quiet, and a reboot 10 s after a kernel panic.
const DefaultCmdline = "quiet loglevel=3 panic=10"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		log.Fatal(err)
	}
}

// packageList is a repeatable flag.
type packageList []string

func (p *packageList) String() string     { return strings.Join(*p, ",") }
func (p *packageList) Set(s string) error { *p = append(*p, s); return nil }

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet("image-build", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var (
		in      imagebuild.Inputs
		out     = fl.String("out", "", "output `directory` (required)")
		cache   = fl.String("cache", defaultCache(), "Debian package cache `directory`")
		epoch   = fl.String("epoch", "", "build time as Unix `seconds` (default $SOURCE_DATE_EPOCH, else the newest input's mtime)")
		verbose = fl.Bool("v", false, "log debug messages")
		pkgs    packageList
	)
	fl.StringVar(&in.Kernel, "kernel", "", "kernel `file` (bzImage, required)")
	fl.StringVar(&in.Initramfs, "initramfs", "", "initramfs `file` (required)")
	fl.StringVar(&in.Cmdline, "cmdline", "", "kernel command `line`")
	fl.StringVar(&in.Config, "config", "", "optional kioskd.conf `file`")
	fl.StringVar(&in.Background, "background", "", "optional `directory` of background images")
	fl.StringVar(&in.CA, "ca", "", "the broker's CA `file` (vdi-broker ca > ca.pem), which kiosks verify it with")
	fl.Var(&pkgs, "package", "`name=version` of a Debian package the kernel or initramfs came from, for the manifest (repeatable)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	in.Packages = pkgs
	switch {
	case (in.Kernel == "") != (in.Initramfs == ""):
		return errors.New("-kernel and -initramfs go together: give both, or neither to build the kiosk image")
	case *out == "":
		return errors.New("-out is required: the directory to write the image, network-boot files and manifest to")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if in.Kernel == "" {
		kb := &initramfs.Builder{CacheDir: filepath.Join(filepath.Dir(*cache), "kiosk"), Log: logger}
		img, err := kb.Build(ctx)
		if err != nil {
			return err
		}
		in.Kernel, in.Initramfs = img.Kernel, img.Initramfs
		in.Packages = append(in.Packages, img.Packages...)
		if in.Cmdline == "" {
			in.Cmdline = DefaultCmdline
		}
	}
	when, err := buildTime(*epoch, in)
	if err != nil {
		return err
	}
	b := &imagebuild.Builder{
		Cache: &debpkg.Cache{Dir: *cache, Log: logger},
		Epoch: when,
		Log:   logger,
	}
	_, err = b.All(ctx, in, *out)
	return err
}

// defaultCache follows the test bed's UNDERVDI_CACHE, so tests and the CLI
// share downloads.
func defaultCache() string {
	root := os.Getenv("UNDERVDI_CACHE")
	if root == "" {
		root = "/var/cache/undervdi"
	}
	return filepath.Join(root, "image-build")
}

// buildTime picks the build's SOURCE_DATE_EPOCH: the flag, the environment
// variable, or the newest modification time among the inputs.
func buildTime(flagValue string, in imagebuild.Inputs) (time.Time, error) {
	for _, v := range []struct{ name, value string }{{"-epoch", flagValue}, {"SOURCE_DATE_EPOCH", os.Getenv("SOURCE_DATE_EPOCH")}} {
		if v.value == "" {
			continue
		}
		sec, err := strconv.ParseInt(v.value, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s=%q: want Unix seconds", v.name, v.value)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	var newest time.Time
	for _, root := range []string{in.Kernel, in.Initramfs, in.Config, in.Background, in.CA} {
		if root == "" {
			continue
		}
		err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // the builder says what is missing, and better
			}
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.ModTime().After(newest) {
				newest = info.ModTime()
			}
			return nil
		})
		if err != nil {
			return time.Time{}, fmt.Errorf("finding the build time from the inputs: %w", err)
		}
	}
	return newest.Truncate(time.Second).UTC(), nil
}
