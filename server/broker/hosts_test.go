package broker

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"undervdi/server/config"
)

// TestHostsNotYetRefused: a configuration with several hosts, or one host
// on another machine behind the isolated guest network, is valid but not
// served yet; the broker says so at start instead of driving only the
// first host or leaving the guests without their allowlist.
func TestHostsNotYetRefused(t *testing.T) {
	const base = "golden = \"g\"\n[gateway]\nhosts_ca = \"/etc/undervdi/hosts-ca.pem\"\n[network]\nmode = \"golden\"\n"
	two, err := config.Parse([]byte(base + `[[hosts]]
name = "a"
uri = "qemu:///system"
[[hosts]]
name = "b"
uri = "qemu+ssh://root@kvm2/system"
spice_address = "10.10.0.12"`))
	if err != nil {
		t.Fatal(err)
	}
	// config.Validate refuses this one; a broker given it anyway refuses it too.
	elsewhere, err := config.Parse([]byte(base + `[[hosts]]
uri = "qemu+tls://kvm2/system"
spice_address = "10.10.0.12"`))
	if err != nil {
		t.Fatal(err)
	}
	elsewhere.Network.Mode = "isolated"
	for name, tc := range map[string]struct {
		cfg  *config.Config
		want error
	}{
		"two hosts":                            {two, ErrHostsNotYet},
		"one host elsewhere, isolated network": {elsewhere, ErrRemoteGuestNet},
	} {
		b, err := New(context.Background(), tc.cfg, slog.New(slog.DiscardHandler))
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrSetup) {
			t.Errorf("%s: New = %v, %v; want %v", name, b, err, tc.want)
		}
	}
}
