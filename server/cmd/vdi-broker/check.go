package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"undervdi/server/config"
	"undervdi/server/pool"
	"undervdi/server/virt"
)

// configCommand parses a verb's -config and its own flags (flags adds them,
// if not nil) and loads the configuration. It returns the configuration and
// its path, or nil and the exit status.
func configCommand(name string, args []string, stderr io.Writer, flags func(*flag.FlagSet)) (*config.Config, string, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file")
	if flags != nil {
		flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, "", exitSetup
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
		return nil, "", exitSetup
	}
	return cfg, *path, exitOK
}

// check validates the configuration and the golden VM without touching the
// pool: what an operator runs after editing either.
func check(args []string, stdout, stderr io.Writer) int {
	cfg, path, code := configCommand("check", args, stderr, nil)
	if cfg == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, err := virt.Open(ctx, cfg.SiteHosts()[0].URI, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitSetup
	}
	if err := waitConnected(ctx, host); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: cannot reach libvirt at %s: %v\n", cfg.SiteHosts()[0].URI, err)
		return exitError
	}
	vs, err := host.Versions(ctx, cfg.PoolName+"-v")
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: reading the published versions: %v\n", err)
		return exitError
	}
	cur := pool.Current(vs, cfg.PoolName, cfg.Golden)
	fmt.Fprintf(stdout, "config %s: ok\n", path)
	g, err := host.Golden(ctx, cfg.Golden)
	switch {
	case errors.Is(err, virt.ErrRunning) && cur != nil:
		// Clones are made of version cur: the golden may run meanwhile.
		fmt.Fprintf(stdout, "golden %s: running; shut it down before the next `vdi-broker publish`\n", cfg.Golden)
	case err != nil:
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitSetup
	default:
		fmt.Fprintf(stdout, "golden %s: ok (%d MiB, %d disk(s) to clone, guest agent: %v)\n",
			g.Name, g.Memory>>20, len(g.WritableDisks()), g.HasAgent)
	}
	if cur == nil {
		fmt.Fprintf(stdout, "versions: none of %s published yet; the broker publishes version 1 when it starts\n", cfg.Golden)
	} else {
		fmt.Fprintf(stdout, "versions: %d published, clones are made of version %d\n", len(vs), cur.Meta.Seq)
	}
	return exitOK
}

func waitConnected(ctx context.Context, host *virt.Host) error {
	for {
		select {
		case ev := <-host.Events():
			if ev.Kind == virt.Connected {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
