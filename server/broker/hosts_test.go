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
	for name, tc := range map[string]struct {
		hosts string
		want  error
	}{
		"two hosts": {`[[hosts]]
name = "a"
uri = "qemu:///system"
[[hosts]]
name = "b"
uri = "qemu+ssh://root@kvm2/system"
spice_address = "10.10.0.12"`, ErrHostsNotYet},
		"one host elsewhere, isolated network": {`[[hosts]]
uri = "qemu+tls://kvm2/system"
spice_address = "10.10.0.12"`, ErrRemoteGuestNet},
	} {
		cfg, err := config.Parse([]byte("golden = \"g\"\n[gateway]\nhosts_ca = \"/etc/undervdi/hosts-ca.pem\"\n" + tc.hosts))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrSetup) {
			t.Errorf("%s: New = %v, %v; want %v", name, b, err, tc.want)
		}
	}
}
