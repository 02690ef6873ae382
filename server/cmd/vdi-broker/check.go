package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"undervdi/server/config"
	"undervdi/server/domxml"
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
	hosts := cfg.SiteHosts()
	ctx, cancel := context.WithTimeout(context.Background(), hostsTimeout(len(hosts)))
	defer cancel()
	host, err := openHost(ctx, hosts[0])
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: cannot reach libvirt at %s: %v\n", hosts[0].URI, err)
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
	// Every other host serves copies of the first one's versions. What is
	// wrong there is a warning: the broker serves with a host lost, and
	// the unit runs check before it starts.
	for _, h := range hosts[1:] {
		checkReplica(ctx, cfg, h, cur, stdout)
	}
	return exitOK
}

// checkReplica says whether host h, which serves copies of the golden
// host's versions, is reachable, and which version it holds against the
// golden host's current one (cur, nil if none).
func checkReplica(ctx context.Context, cfg *config.Config, h config.Host, cur *domxml.Version, stdout io.Writer) {
	host, err := openHost(ctx, h)
	if err != nil {
		fmt.Fprintf(stdout, "host %s: WARNING: cannot reach libvirt at %s: %v; the broker serves from the other hosts until it is back\n", h.Name, h.URI, err)
		return
	}
	vs, err := host.Versions(ctx, cfg.PoolName+"-v")
	if err != nil {
		fmt.Fprintf(stdout, "host %s: WARNING: reading its versions: %v\n", h.Name, err)
		return
	}
	have := pool.Current(vs, cfg.PoolName, cfg.Golden)
	switch {
	case cur == nil:
		fmt.Fprintf(stdout, "host %s: ok; it gets a copy of version 1 once the broker publishes it\n", h.Name)
	case have == nil:
		fmt.Fprintf(stdout, "host %s: ok; no version yet: the broker copies version %d there when it starts\n", h.Name, cur.Meta.Seq)
	case have.Meta.Seq == cur.Meta.Seq && !have.Meta.Published.Equal(cur.Meta.Published):
		fmt.Fprintf(stdout, "host %s: WARNING: it holds a version %d of its own, not the golden host's, and gets no VMs until %s is undefined there\n",
			h.Name, have.Meta.Seq, have.Name)
	case have.Meta.Seq == cur.Meta.Seq:
		fmt.Fprintf(stdout, "host %s: ok, holds version %d\n", h.Name, have.Meta.Seq)
	case have.Meta.Seq > cur.Meta.Seq:
		fmt.Fprintf(stdout, "host %s: ok, holds version %d; the broker follows the golden host back to version %d there when it starts\n", h.Name, have.Meta.Seq, cur.Meta.Seq)
	default:
		fmt.Fprintf(stdout, "host %s: ok, holds version %d; the broker copies version %d there when it starts\n", h.Name, have.Meta.Seq, cur.Meta.Seq)
	}
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
