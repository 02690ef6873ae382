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
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file (for the admin socket)")
	socket := fs.String("socket", "", "admin socket (overrides the config)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	if *socket == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
			return exitSetup
		}
		*socket = cfg.AdminSocket
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := broker.FetchStatus(ctx, *socket)
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
