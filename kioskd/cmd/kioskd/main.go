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
	"syscall"

	"undervdi/kioskd"
	"undervdi/kioskd/config"
)

func main() {
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
	if err := fs.Parse(args); err != nil {
		return err
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
