//go:build integration

package remotehost_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

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

	// A client certificate the host does not know is refused.
	if err := os.Remove(filepath.Join(h.PKI, "clientcert.pem")); err != nil {
		t.Fatal(err)
	}
	if l, err := h.Connect(); err == nil {
		l.Disconnect()
		t.Error("a client without a certificate connected")
	}

	h.Kill()
	wait(t, host, virt.Disconnected)
	// The broker's certificate back, and the host up again: reconnected.
	os.WriteFile(filepath.Join(h.PKI, "clientcert.pem"), h.ClientCert, 0o644)
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
