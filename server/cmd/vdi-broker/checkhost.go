package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"undervdi/server/config"
	"undervdi/server/hostcheck"
	"undervdi/server/virt"
)

// hostsTimeout bounds a command that reaches n hosts: each gets openHost's
// 10 s to answer, and the checks 30 s besides.
func hostsTimeout(n int) time.Duration { return 30*time.Second + 10*time.Second*time.Duration(n) }

// openHost reaches h's libvirt, waiting up to 10 s for it to answer; the
// connection ends with ctx.
func openHost(ctx context.Context, h config.Host) (*virt.Host, error) {
	host, err := virt.Open(ctx, h.URI, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waitConnected(wctx, host); err != nil {
		return nil, fmt.Errorf("no answer: %w", err)
	}
	return host, nil
}

// checkHost checks that the server can run the configured pool: KVM,
// libvirt, storage, memory and CPUs, ports, firewall, time, SELinux. The
// unit runs it before the broker starts, as a warning.
func checkHost(args []string, stdout, stderr io.Writer) int {
	var asJSON, allowTCG *bool
	cfg, _, code := configCommand("check-host", args, stderr, func(fs *flag.FlagSet) {
		asJSON = fs.Bool("json", false, "print JSON")
		allowTCG = fs.Bool("allow-tcg", false, "without KVM, run VMs under emulation (a test bench): a warning, not a failure")
	})
	if cfg == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), hostsTimeout(len(cfg.SiteHosts())))
	defer cancel()
	env := hostcheck.Env{AllowTCG: *allowTCG, Connect: func(ctx context.Context, h config.Host) (hostcheck.Libvirt, error) {
		host, err := openHost(ctx, h)
		if err != nil {
			return nil, err
		}
		return host, nil
	}}
	results := hostcheck.Run(ctx, cfg, env)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(results)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, r := range results {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Result, r.Check, r.Detail)
			if r.Hint != "" {
				fmt.Fprintf(tw, "\t\t→ %s\n", r.Hint)
			}
		}
		tw.Flush()
	}
	if hostcheck.Failed(results) {
		return exitError
	}
	return exitOK
}
