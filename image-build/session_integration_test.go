//go:build integration

package imagebuild

import (
	"bytes"
	"os"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/server/pool"

	"undervdi/internal/brokertest"
	"undervdi/internal/testbed"
	"undervdi/server/config"
)

// TestKioskSession is the whole system once, on real parts: a broker with a
// pool VM on libvirt on this host, and the kiosk image booted from an
// SD-card image in QEMU, its network QEMU's user mode (the host is
// 10.0.2.2 and sees the kiosk at 127.0.0.1). A touch on the kiosk's screen
// gets a session: remote-viewer inside the kiosk links to the pool VM
// through the gateway. When the kiosk goes away, the VM is wiped, and the
// card's bytes are what they were.
func TestKioskSession(t *testing.T) {
	bed := testbed.New(t)
	rb := brokertest.Start(t, bed, 1, func(c *config.Config) {
		c.Gateway.PublicHost = "10.0.2.2" // the host, as the kiosk inside QEMU reaches it
	})
	k := bootKiosk(t, rb, "")
	k.session(t)
	poll.Until(t, 4*time.Minute, "the kiosk's viewer linked to the pool VM", func() bool {
		return rb.Pool.Status().Counts[pool.InUse] == 1
	})

	// The kiosk is switched off: the broker ends the session and wipes the VM.
	k.stop(t)
	poll.Until(t, 2*time.Minute, "the session's VM wiped", func() bool {
		b, _ := os.ReadFile(rb.Config.Sessions.AuditLog)
		return bytes.Contains(b, []byte(`"kiosk":"k1"`)) && bytes.Contains(b, []byte(`"wiped":true`))
	})
}
