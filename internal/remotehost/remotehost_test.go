//go:build integration

package remotehost_test

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/remotehost"
	"undervdi/server/virt"
)

// TestSecondHost reaches the second host as the broker reaches a host: over
// TLS with a client certificate, through virt.Open. Its storage is its own
// (a pool made there is not the machine's), and when its libvirtd is killed
// the broker's connection says so and comes back once it runs again.
func TestSecondHost(t *testing.T) {
	h := remotehost.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host, err := virt.Open(ctx, h.URI, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	wait(t, host, virt.Connected)

	// /var/lib/libvirt inside the host is its own directory.
	const dir = "/var/lib/libvirt/undervdi-h2"
	if err := host.PrepareStorage(ctx, "h2test", dir+"/overlays", dir+"/versions"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.Dir, "lib-libvirt", "undervdi-h2", "overlays")); err != nil {
		t.Errorf("the second host's storage is not in its own /var/lib/libvirt: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the second host's storage pool appeared on this machine's own /var/lib/libvirt: %v", err)
	}
	if doms, err := host.Domains(ctx, ""); err != nil || len(doms) != 0 {
		t.Errorf("the second host's domains: %d, %v; want none of the machine's", len(doms), err)
	}

	// A client whose certificate another CA signed is refused by the host,
	// though it bears the broker's name and trusts the host.
	stranger, err := h.StrangerPKI()
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(h.URI)
	u.RawQuery = "pkipath=" + stranger
	if l, err := libvirt.ConnectToURI(u); err == nil {
		_, err = l.ConnectGetHostname()
		l.Disconnect()
		if err == nil {
			t.Error("a client with a stranger's certificate was served")
		}
	}

	h.Kill()
	wait(t, host, virt.Disconnected)
	h.Restart(t)
	wait(t, host, virt.Connected)
	if _, err := host.Domains(ctx, ""); err != nil {
		t.Errorf("after the restart: %v", err)
	}
}

func wait(t *testing.T, h *virt.Host, kind virt.EventKind) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case ev := <-h.Events():
			if ev.Kind == kind {
				return
			}
		case <-deadline:
			t.Fatalf("no %v event from %s", kind, h.URI())
		}
	}
}
