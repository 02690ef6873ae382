package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// end ends the session on a VM (or the VM): it is destroyed with its disk.
func end(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("end", flag.ContinueOnError)
	fs.SetOutput(stderr)
	adminSocket := adminSocketFlags(fs)
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	if fs.NArg() < 1 {
		fmt.Fprintln(stderr, "usage: vdi-broker end [-config FILE] VM [reason...]")
		return exitSetup
	}
	c, code := adminClient(adminSocket, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.End(ctx, fs.Arg(0), strings.Join(fs.Args()[1:], " ")); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "%s: ending\n", fs.Arg(0))
	return exitOK
}
