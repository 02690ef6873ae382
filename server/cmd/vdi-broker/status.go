package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"undervdi/server/api"
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
// -config and -socket (the admin socket, as root), or -url for a broker's
// HTTPS API with the API token in $UNDERVDI_TOKEN, and the verb's own flags,
// which flags (if not nil) adds. It returns the API client and the parsed
// flags, or a nil client and the exit status.
func adminCommand(name string, args []string, stderr io.Writer, flags func(*flag.FlagSet)) (*api.Client, *flag.FlagSet, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file (for the admin socket)")
	socket := fs.String("socket", "", "admin socket (overrides the config)")
	remote := fs.String("url", "", "a broker's HTTPS API (https://host:8443) instead of the admin socket; the token in $UNDERVDI_TOKEN")
	caFile := fs.String("ca", "", "with -url: the CA the broker's certificate is signed by (vdi-broker ca prints the site CA)")
	if flags != nil {
		flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, exitSetup
	}
	if *remote != "" {
		token := os.Getenv("UNDERVDI_TOKEN")
		if token == "" {
			fmt.Fprintln(stderr, "vdi-broker: -url needs an API token in $UNDERVDI_TOKEN (vdi-broker token add NAME makes one)")
			return nil, nil, exitSetup
		}
		var roots *x509.CertPool
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				fmt.Fprintf(stderr, "vdi-broker: -ca: %v\n", err)
				return nil, nil, exitSetup
			}
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "vdi-broker: -ca %s: no PEM certificate in it\n", *caFile)
				return nil, nil, exitSetup
			}
		}
		return api.NewRemote(*remote, token, roots), fs, exitOK
	}
	if *socket == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
			return nil, nil, exitSetup
		}
		*socket = cfg.AdminSocket
	}
	return api.NewClient(*socket), fs, exitOK
}
