package main

import (
	"fmt"
	"io"

	"undervdi/server/siteca"
)

// ca prints the site CA kiosks verify the broker with (making it, as the
// broker's first start would, if there is none yet): image-build -ca takes
// it onto the kiosks' boot media.
func ca(args []string, stdout, stderr io.Writer) int {
	cfg, _, code := configCommand("ca", args, stderr, nil)
	if cfg == nil {
		return code
	}
	if cfg.Sessions.TLSCert != "" || cfg.Sessions.Plaintext {
		fmt.Fprintln(stderr, "vdi-broker: this site names its own certificate (or none): give kiosks its CA, not the broker's")
		return exitSetup
	}
	site, made, err := siteca.Ensure(cfg.SiteCADir())
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: the site CA in %s: %v\n", cfg.SiteCADir(), err)
		return exitError
	}
	for _, m := range made {
		fmt.Fprintf(stderr, "vdi-broker: made %s in %s\n", m, cfg.SiteCADir())
	}
	fmt.Fprintf(stderr, "vdi-broker: site CA fingerprint (SHA-256) %s\n", site.Fingerprint())
	stdout.Write(site.CAPEM)
	return exitOK
}
