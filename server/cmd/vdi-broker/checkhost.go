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

	"undervdi/server/hostcheck"
	"undervdi/server/virt"
)

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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := hostcheck.Env{AllowTCG: *allowTCG}
	host, err := virt.Open(ctx, cfg.SiteHosts()[0].URI, slog.New(slog.DiscardHandler))
	if err == nil {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err = waitConnected(wctx, host)
		wcancel()
	}
	if err != nil {
		env.LibErr = err
	} else {
		env.Libvirt = host
	}
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
