package broker

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"undervdi/server/config"
	"undervdi/server/siteca"
)

const hostsBase = "golden = \"g\"\npool_size = 3\nvm_units = 2\n[gateway]\nhosts_ca = \"%s\"\n[network]\nmode = \"golden\"\n"

func hostsConfig(t *testing.T, hosts string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	// Any CA will do: New only loads it.
	if _, _, err := siteca.Ensure(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca", siteca.CAFile)
	cfg, err := config.Parse([]byte(fmt.Sprintf(hostsBase, ca) + hosts))
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir, cfg.AdminSocket = dir, filepath.Join(dir, "admin.sock")
	cfg.Sessions.AuditLog, cfg.Sessions.Plaintext = filepath.Join(dir, "sessions.jsonl"), true
	return cfg
}

// TestSeveralHosts: a file with several hosts makes a pool per host and the
// site above them; the first host publishes, the others copy from it, each
// pool has its host's capacity, and the site (not a host) has pool_size.
func TestSeveralHosts(t *testing.T) {
	cfg := hostsConfig(t, `[[hosts]]
name = "a"
uri = "qemu:///system"
units = 8
[[hosts]]
name = "b"
uri = "qemu+ssh://root@kvm2/system"
spice_address = "10.10.0.12"
max_vms = 3
group = "branch"`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if b.Site == nil || len(b.Pools) != 2 || b.Pool != b.Pools[0] || b.Host != b.Hosts[0] {
		t.Fatalf("broker = %+v, want a site of two pools", b)
	}
	a, r := HostPoolConfig(cfg, cfg.Hosts[0], nil), HostPoolConfig(cfg, cfg.Hosts[1], nil)
	if a.MaxVMs != 4 || r.MaxVMs != 3 || a.SpiceAddress != "" || r.SpiceAddress != "10.10.0.12" {
		t.Errorf("pool configs: a max %d spice %q, b max %d spice %q; want 4 (8 units / 2), 3 and b's address",
			a.MaxVMs, a.SpiceAddress, r.MaxVMs, r.SpiceAddress)
	}
}

// TestRemoteGuestNet: on the isolated guest network, a host on another
// machine gets its own subnet, routed to the broker's backend address,
// where the guard listens for its clones; this machine's host keeps the
// broker's own network.
func TestRemoteGuestNet(t *testing.T) {
	cfg := hostsConfig(t, `[[hosts]]
name = "a"
uri = "qemu:///system"
[[hosts]]
name = "b"
uri = "qemu+tls://kvm2/system"
spice_address = "10.10.0.12"
guest_subnet = "10.213.1.0/24"`)
	cfg.Network.Mode, cfg.Network.BrokerAddress = "isolated", "10.10.0.1"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a, r := HostPoolConfig(cfg, cfg.Hosts[0], nil), HostPoolConfig(cfg, cfg.Hosts[1], nil)
	if a.Network == nil || r.Network == nil || a.Network.Addr(0).String() != "10.213.0.10" || r.Network.Addr(0).String() != "10.213.1.10" ||
		!strings.Contains(r.Network.NetworkXML(), "<forward mode='route'/>") || strings.Contains(a.Network.NetworkXML(), "<forward") {
		t.Errorf("the hosts' guest networks: a %+v, b %+v", a.Network, r.Network)
	}
	if at, ok := b.guestsReach(-1); !ok || at.String() != "10.10.0.1" {
		t.Errorf("other hosts' clones reach the guard at %s, %v; want the broker's backend address", at, ok)
	}
	if at, ok := b.guestsReach(0); !ok || at.String() != "10.213.0.1" {
		t.Errorf("this machine's clones reach the guard at %s, %v; want the gateway", at, ok)
	}
	if _, ok := b.guestsReach(1); ok {
		t.Error("the guard listens on another machine's guest network")
	}
}
