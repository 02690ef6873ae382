// Command kioskd is the kiosk's session manager: the ad slideshow while
// idle, a brand-new VM on a touch, and a forced logout when the visitor
// leaves. On the boot image it is the u-root uinit.
//
//	kioskd [-config /etc/undervdi/kioskd.conf]
//
// Settings come from the file (or the original /etc/client.conf), then from
// undervdi.<key>=<value> on the kernel command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"undervdi/kioskd"
	"undervdi/kioskd/appliance"
	"undervdi/kioskd/config"
	"undervdi/kioskd/usbaccess"
)

func main() {
	if filepath.Base(os.Args[0]) == usbaccess.HelperName {
		// spice-gtk's USB ACL helper, linked to kioskd on the image.
		os.Exit(usbaccess.Helper(os.Stdin, os.Stdout, os.Getenv(usbaccess.EnvSocket)))
	}
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kioskd:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("kioskd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file")
	cmdline := fs.String("cmdline", "/proc/cmdline", "kernel command line to take undervdi.* settings from")
	appl := fs.Bool("appliance", false, "run as the kiosk image's uinit: load drivers, start udev, mount the boot partition, DHCP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *appl {
		runAppliance(stderr)
		return nil
	}
	cfg, err := load(*path, *cmdline)
	if err != nil {
		return err
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return kioskd.Main(ctx, cfg, log)
}

// runAppliance is kioskd as the kiosk image's uinit. It never returns: when
// the kiosk cannot go on, it says why on the console and reboots.
func runAppliance(stderr io.Writer) {
	level := slog.LevelInfo
	if b, err := os.ReadFile("/proc/cmdline"); err == nil && strings.Contains(string(b), "undervdi.log_level=debug") {
		level = slog.LevelDebug // from the first line on, not only once the settings are read
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx := context.Background()
	cfg, err := appliance.Boot(ctx, log)
	if err != nil {
		log.Error("the kiosk cannot start; rebooting in 30 s", "err", err)
		appliance.Reboot(30 * time.Second)
	}
	level.UnmarshalText([]byte(cfg.LogLevel))
	log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	shown := false
	err = kioskd.Run(ctx, cfg, log, kioskd.Hooks{
		OnState: func(s kioskd.State) {
			// The first state after the start's wipe shows the slideshow,
			// whether the broker answers (idle), not yet (unreachable) or
			// the kiosk is out of order.
			if s != kioskd.Starting && !shown {
				shown = true
				log.Info("slideshow shown", "state", s, "uptime", appliance.Uptime().Round(10*time.Millisecond))
			}
		},
		// The image is read-only: a reboot leaves nothing of any visitor.
		Reboot: func(reason string) {
			log.Error("the kiosk cannot wipe a visitor's session; rebooting in 5 s", "fault", reason)
			appliance.Reboot(5 * time.Second)
		},
	})
	log.Error("kioskd stopped; rebooting in 30 s", "err", err)
	appliance.Reboot(30 * time.Second)
}

// load reads the configuration file; without one, the original kiosk's
// /etc/client.conf will do.
func load(path, cmdline string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) && path == config.DefaultPath {
		cfg, err = config.Load("/etc/client.conf")
	}
	if errors.Is(err, fs.ErrNotExist) {
		cfg, err = config.Default(), nil // the command line may say it all
	}
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(cmdline); err == nil {
		if err := cfg.ApplyCmdline(string(b)); err != nil {
			return nil, err
		}
	}
	return cfg, cfg.Validate()
}
