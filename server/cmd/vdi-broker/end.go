package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// end ends the session on a VM (or the VM): it is destroyed with its disk.
func end(args []string, stdout, stderr io.Writer) int {
	c, fs, code := adminCommand("end", args, stderr, nil)
	if c == nil {
		return code
	}
	if fs.NArg() < 1 {
		fmt.Fprintln(stderr, "usage: vdi-broker end [-config FILE] VM [reason...]")
		return exitSetup
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
