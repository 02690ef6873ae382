package tinyvm

import (
	"context"
	"log/slog"
	"os"
	"testing"
)

func TestScratchBuild(t *testing.T) {
	b := &Builder{CacheDir: "/var/cache/undervdi-scratch", Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	a, err := b.Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", a)
}
