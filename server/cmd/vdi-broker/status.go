package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"undervdi/server/broker"
	"undervdi/server/config"
)

func status(args []string, stdout, stderr io.Writer) int {
	var asJSON *bool
	c, _, code := adminCommand("status", args, stderr, func(fs *flag.FlagSet) { asJSON = fs.Bool("json", false, "print JSON") })
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
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(s)
		return exitOK
	}
	s.WriteTable(stdout, time.Now())
	return exitOK
}

// adminCommand parses the flags of a verb that talks to a running broker:
// -config and -socket, and the verb's own, which flags (if not nil) adds. It
// returns the broker's admin client and the parsed flags, or a nil client
// and the exit status.
func adminCommand(name string, args []string, stderr io.Writer, flags func(*flag.FlagSet)) (*broker.Client, *flag.FlagSet, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file (for the admin socket)")
	socket := fs.String("socket", "", "admin socket (overrides the config)")
	if flags != nil {
		flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, exitSetup
	}
	if *socket == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
			return nil, nil, exitSetup
		}
		*socket = cfg.AdminSocket
	}
	return broker.NewClient(*socket), fs, exitOK
}
