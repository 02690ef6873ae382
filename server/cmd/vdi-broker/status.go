package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"undervdi/server/config"
)

func status(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	adminSocket := adminSocketFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	c, code := adminClient(adminSocket, stderr)
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

// adminSocketFlags adds -config and -socket to fs, for the commands that
// talk to a running broker. After fs.Parse, the function it returns gives
// the admin socket: -socket, else the one the configuration names.
func adminSocketFlags(fs *flag.FlagSet) func() (string, error) {
	path := fs.String("config", config.DefaultPath, "configuration file (for the admin socket)")
	socket := fs.String("socket", "", "admin socket (overrides the config)")
	return func() (string, error) {
		if *socket != "" {
			return *socket, nil
		}
		cfg, err := config.Load(*path)
		if err != nil {
			return "", err
		}
		return cfg.AdminSocket, nil
	}
}
