// Command hostsetup starts virtlogd and libvirtd where no systemd does (CI,
// containers), the way the tests expect them.
package main

import (
	"context"
	"log"
	"time"

	"undervdi/internal/hostsetup"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := hostsetup.EnsureLibvirt(ctx); err != nil {
		log.Fatal(err)
	}
}
