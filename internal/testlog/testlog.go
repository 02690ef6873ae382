// Package testlog gives tests the logger to hand to the code under test:
// silent, unless the tests run with -v, then everything down to debug on
// stderr.
package testlog

import (
	"log/slog"
	"os"
	"testing"
)

// Logger returns a discarding logger, or with -v a debug-level text logger
// on stderr.
func Logger() *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
