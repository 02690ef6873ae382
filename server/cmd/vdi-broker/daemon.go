package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"undervdi/server/broker"
	"undervdi/server/config"
)

func runDaemon(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
		return exitSetup
	}
	log := newLogger(stderr, cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	b, err := broker.New(ctx, cfg, log)
	if err == nil {
		err = b.Run(ctx)
	}
	if err != nil {
		log.Error("broker stopped", "err", err)
		if errors.Is(err, broker.ErrSetup) {
			return exitSetup
		}
		return exitError
	}
	return exitOK
}

// newLogger logs text to stderr; under systemd the journal adds the time.
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
