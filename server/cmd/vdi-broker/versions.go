package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/dustin/go-humanize"

	"undervdi/server/api"
)

// publish publishes a new version of the golden VM and follows the copy
// until it is done (or, with -no-wait, returns once it has begun).
func publish(args []string, stdout, stderr io.Writer) int {
	var noWait *bool
	var timeout *time.Duration
	c, _, code := adminCommand("publish", args, stderr, func(fs *flag.FlagSet) {
		noWait = fs.Bool("no-wait", false, "return once the copy has begun")
		timeout = fs.Duration("timeout", 2*time.Hour, "give up following the copy after this long")
	})
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	seq, err := c.Publish(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "publishing version %d\n", seq)
	if *noWait {
		return exitOK
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	said := ""
	for {
		s, err := c.Status(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
			return exitError
		}
		j := s.Pool.Publish
		if j == nil || j.Version != seq {
			fmt.Fprintf(stderr, "vdi-broker: the broker no longer reports the publish of version %d\n", seq)
			return exitError
		}
		if line := progressLine(j.Written, j.Total, j.Disk); line != said {
			fmt.Fprintln(stdout, line)
			said = line
		}
		if j.Finished != nil {
			if j.Error != "" {
				fmt.Fprintf(stderr, "vdi-broker: publishing version %d failed: %s\n", seq, j.Error)
				return exitError
			}
			fmt.Fprintf(stdout, "version %d published in %v; clean VMs of older versions are being replaced\n",
				seq, j.Finished.Sub(j.Started).Round(time.Second))
			return exitOK
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			fmt.Fprintf(stderr, "vdi-broker: still publishing after %v; `vdi-broker status` follows it\n", *timeout)
			return exitError
		}
	}
}

func progressLine(written, total uint64, disk string) string {
	pct := uint64(100)
	if total > 0 {
		pct = 100 * written / total
	}
	return fmt.Sprintf("  %s: %s of %s (%d%%)", disk, humanize.IBytes(written), humanize.IBytes(total), pct)
}

// rollback makes the version before the current one current again.
func rollback(args []string, stdout, stderr io.Writer) int {
	c, _, code := adminCommand("rollback", args, stderr, nil)
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	from, to, err := c.Rollback(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "rolled back from version %d to %d; clean VMs of version %d are being replaced\n", from, to, from)
	return exitOK
}

// versions lists the published versions.
func versions(args []string, stdout, stderr io.Writer) int {
	c, _, code := adminCommand("versions", args, stderr, nil)
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	api.WriteVersions(stdout, s.Pool.Versions, time.Now())
	return exitOK
}
