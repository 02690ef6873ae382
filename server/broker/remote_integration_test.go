//go:build integration

package broker_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/brokertest"
	"undervdi/internal/poll"
	"undervdi/internal/remotehost"
	"undervdi/internal/testbed"
	"undervdi/server/config"
	"undervdi/tinyvm"
)

// TestRemoteHost runs the broker with its one host on another machine: a
// second libvirtd in its own network and mount namespaces, reached over
// TLS with a client certificate. The broker publishes the golden there,
// keeps its pool there, and a real remote-viewer's session reaches a VM
// there through the gateway, whose link to the VM is SPICE over TLS on the
// host's backend address. The host's libvirtd killed mid-session is a lost
// connection; back, the broker reconciles it and the session, whose VM
// ran on, ends as usual: the VM and its disk are destroyed there and the
// pool refilled there.
func TestRemoteHost(t *testing.T) {
	ctx := context.Background()
	bed := testbed.New(t)
	h2 := remotehost.Start(t)
	l2, err := h2.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Disconnect()
	// The second host's files, where its QEMUs (libvirt-qemu) may read
	// them; the bed removes them.
	dir := filepath.Join(bed.Root, "h2")
	golden, err := tinyvm.Define(l2, bed.Prefix+"-golden", filepath.Join(dir, "golden"), bed.Art, 160, tinyvm.DiskSize)
	if err != nil {
		t.Fatal(err)
	}
	// The host as an operator writes it, read and checked as the broker's
	// file is; the bed's test settings (ports, directories) stay.
	site, err := config.Parse([]byte(fmt.Sprintf(`golden = %q
[gateway]
hosts_ca = %q
[network]
mode = "golden" # the isolated guest network is the broker machine's own
[[hosts]]
name = %q
uri = %q
max_vms = 5
memory_reserve = "512MiB"
spice_address = %q
`, golden.Name, filepath.Join(h2.PKI, "cacert.pem"), remotehost.Hostname, h2.URI, h2.NS.NSIP)))
	if err != nil {
		t.Fatal(err)
	}
	rb := brokertest.Start(t, bed, 1, func(c *config.Config) {
		c.Golden, c.Hosts, c.Gateway.HostsCA, c.Network.Mode = site.Golden, site.Hosts, site.Gateway.HostsCA, site.Network.Mode
		c.OverlayDir, c.VersionDir = filepath.Join(dir, "overlays"), filepath.Join(dir, "versions")
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	if hs := rb.Config.SiteHosts(); len(hs) != 1 || hs[0].URI != h2.URI || hs[0].Capacity(rb.Config.VMUnits) != 5 || hs[0].MemoryReserve != 512<<20 {
		t.Errorf("one [[hosts]] entry: %+v; want the host's settings", hs)
	}
	e := e2eOf(t, bed, rb)

	k := e.connect(t, "k1")
	v := e.launchViewer(t, k, k.request())
	lease := e.linkedLease(t, "k1")
	e.screenShowsGuest(t, "remote")
	if !h2.Has(t, lease.VM) {
		t.Fatalf("%s, the session's VM, is not on the second host", lease.VM)
	}
	if _, err := bed.L.DomainLookupByName(lease.VM); !libvirt.IsNotFound(err) {
		t.Errorf("%s is on this machine's libvirtd too: %v", lease.VM, err)
	}
	live, err := e.b.Host.Domain(ctx, lease.VM)
	if err != nil {
		t.Fatal(err)
	}
	if live.SpiceSocket != "" || !strings.HasPrefix(live.SpiceTLS, h2.NS.NSIP+":") {
		t.Errorf("the VM's SPICE: socket %q, TLS %q; want TLS on %s only", live.SpiceSocket, live.SpiceTLS, h2.NS.NSIP)
	}

	// The host lost mid-session: its VMs run on, as on a host whose
	// libvirtd died, and the visitor's screen with them.
	h2.Kill()
	poll.Until(t, time.Minute, "the broker to see the host gone", func() bool { return !e.b.Pool.Status().Connected })
	h2.Restart(t)
	poll.Until(t, 2*time.Minute, "the host back and reconciled", func() bool {
		st := e.b.Pool.Status()
		return st.Connected && !st.Reconciling
	})
	if !h2.Has(t, lease.VM) {
		t.Fatalf("%s is gone after the host came back", lease.VM)
	}
	select {
	case <-v.Done():
		t.Fatal("the viewer ended when the host's libvirtd was lost")
	default:
	}

	// The session ends as any does: the VM and its disk destroyed there.
	v.Stop(time.Second)
	if reason := k.waitEnd(30 * time.Second); reason != "the viewer disconnected" {
		t.Errorf("end reason = %q", reason)
	}
	poll.Until(t, time.Minute, lease.VM+" destroyed with its disk on the second host", func() bool {
		overlays, _ := filepath.Glob(filepath.Join(dir, "overlays", lease.VM+"-*"))
		return !h2.Has(t, lease.VM) && len(overlays) == 0
	})
	rb.WaitFull()
}
