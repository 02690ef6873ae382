package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"undervdi/server/api"
)

// drain stops new sessions; running ones go on.
func drain(args []string, stdout, stderr io.Writer) int {
	c, fs, code := adminCommand("drain", args, stderr, nil)
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Drain(ctx, strings.Join(fs.Args(), " ")); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintln(stdout, "no new sessions; running ones go on (vdi-broker resume serves again)")
	return exitOK
}

// resume serves new sessions again.
func resume(args []string, stdout, stderr io.Writer) int {
	c, _, code := adminCommand("resume", args, stderr, nil)
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Resume(ctx); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintln(stdout, "serving new sessions")
	return exitOK
}

// resize changes the pool's size until the broker restarts.
func resize(args []string, stdout, stderr io.Writer) int {
	c, fs, code := adminCommand("resize", args, stderr, nil)
	if c == nil {
		return code
	}
	n, err := strconv.Atoi(fs.Arg(0))
	if fs.NArg() != 1 || err != nil {
		fmt.Fprintln(stderr, "usage: vdi-broker resize [-config FILE] SIZE")
		return exitSetup
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.SetSize(ctx, n); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "the pool keeps %d clean VMs ready until the broker restarts (pool_size in the config stays)\n", n)
	return exitOK
}

// audit prints the audit log, newest first, filtered.
func audit(args []string, stdout, stderr io.Writer) int {
	var kiosk, vm, event, since *string
	var limit *int
	c, _, code := adminCommand("audit", args, stderr, func(fs *flag.FlagSet) {
		kiosk = fs.String("kiosk", "", "only this kiosk's records")
		vm = fs.String("vm", "", "only this VM's records")
		event = fs.String("event", "", "only session, refused, replaced, out-of-order, in-order, login or admin")
		since = fs.String("since", "", "only records this recent (a duration such as 2h, or a time such as 2026-12-01T09:00:00Z)")
		limit = fs.Int("n", 50, "at most this many records")
	})
	if c == nil {
		return code
	}
	q := url.Values{}
	for k, v := range map[string]string{"kiosk": *kiosk, "vm": *vm, "event": *event} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *since != "" {
		if d, err := time.ParseDuration(*since); err == nil {
			q.Set("since", time.Now().Add(-d).UTC().Format(time.RFC3339Nano))
		} else {
			q.Set("since", *since)
		}
	}
	q.Set("limit", strconv.Itoa(*limit))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	page, err := c.Audit(ctx, q)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tWHAT\tWHO\tKIOSK\tVM\tREASON")
	for _, r := range page.Records {
		who := r.User
		if who == "" {
			who = r.Addr
		}
		reason := r.Reason
		if r.Count > 0 {
			reason = fmt.Sprintf("%s (and %d more)", reason, r.Count)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Local().Format(time.DateTime), r.Event, api.Dash(r.What), api.Dash(who),
			api.Dash(r.Kiosk), api.Dash(r.VM), reason)
	}
	tw.Flush()
	if page.Next != "" {
		fmt.Fprintf(stdout, "(older records: -n with a larger number)\n")
	}
	return exitOK
}
