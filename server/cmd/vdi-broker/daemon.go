package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"undervdi/server/broker"
)

func runDaemon(args []string, stderr io.Writer) int {
	cfg, _, code := configCommand("run", args, stderr, nil)
	if cfg == nil {
		return code
	}
	log := newLogger(stderr, cfg.LogLevel)
	broker.TuneGC()
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
