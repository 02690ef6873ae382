//go:build integration

package broker_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/brokertest"
	"undervdi/internal/poll"
	"undervdi/internal/remotehost"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/config"
	"undervdi/server/pool"
	"undervdi/server/site"
)

// TestTwoHosts runs one broker over two hosts: this machine's libvirtd,
// which holds the golden, and a second libvirtd in its own network and
// mount namespaces reached over TLS. The first publish is copied to the
// second host through libvirt's storage streams; the pool is spread over
// both; a kiosk pinned to each host's group gets a VM there (a real
// remote-viewer on this host's, a SPICE link through the gateway on the
// other's). The second host cut off mid-session, as a host powered off or
// off the network (its packets dropped: no reset, only silence): the
// broker's probe finds it gone, its session ends with the host-lost reason,
// its kiosk is told, and the pool refills on the first host. Back, the
// second host is reconciled (the lost session's VM destroyed there), gets
// its share again and is used again. (TestRemoteHost kills a host's
// libvirtd instead: the connection closes at once.)
func TestTwoHosts(t *testing.T) {
	bed := testbed.New(t)
	h2 := remotehost.Start(t)
	dir := filepath.Join(bed.Root, "h2") // the second host's files; the bed removes them
	site2, err := config.Parse([]byte(fmt.Sprintf(`golden = %q
pool_size = 2
[gateway]
hosts_ca = %q
[network]
mode = "golden" # the isolated guest network is the broker machine's own
[[hosts]]
name = "here"
uri = "qemu:///system"
max_vms = 4
group = "main"
[[hosts]]
name = "there"
uri = %q
max_vms = 3
group = "branch"
spice_address = %q
overlay_dir = %q
versions_dir = %q
`, bed.Golden.Name, filepath.Join(h2.PKI, "cacert.pem"), h2.URI, h2.NS.NSIP, filepath.Join(dir, "overlays"), filepath.Join(dir, "versions"))))
	if err != nil {
		t.Fatal(err)
	}
	rb := brokertest.Start(t, bed, 2, func(c *config.Config) {
		c.Hosts, c.Gateway.HostsCA, c.Network.Mode = site2.Hosts, site2.Gateway.HostsCA, site2.Network.Mode
		c.Kiosks = append(c.Kiosks,
			config.Kiosk{ID: "k-main", Address: "127.0.0.1", Token: brokertest.Token, HostGroup: "main"},
			config.Kiosk{ID: "k-branch", Address: "127.0.0.1", Token: brokertest.Token, HostGroup: "branch"})
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	b := rb.Broker
	hostStatus := func(name string) pool.HostStatus {
		for _, h := range b.Status().Hosts {
			if h.Name == name {
				return h
			}
		}
		t.Fatalf("no host %s in the status", name)
		return pool.HostStatus{}
	}
	// Spread: one clean VM on each host, the second's a clone of its own
	// copy of version 1.
	poll.Until(t, 5*time.Minute, "one clean VM on each host", func() bool {
		return hostStatus("here").Counts[pool.Clean] == 1 && hostStatus("there").Counts[pool.Clean] == 1
	})
	if h := hostStatus("there"); h.Current != 1 || h.Publish == nil || h.Publish.Written != h.Publish.Total ||
		!strings.Contains(h.Publish.Reason, "from host here") {
		t.Errorf("the second host: version %d, copy %+v; want version 1 copied from here", h.Current, h.Publish)
	}

	e := e2eOf(t, bed, rb)

	// A session on each host.
	kMain := e.connect(t, "k-main")
	v := e.launchViewer(t, kMain, kMain.request())
	mainLease := e.linkedLease(t, "k-main")
	e.screenShowsGuest(t, "site-here")
	if h2.Has(t, mainLease.VM) {
		t.Errorf("%s, the main group's VM, is on the second host", mainLease.VM)
	}
	kBranch := e.connect(t, "k-branch")
	offer := kBranch.request()
	link, err := linkMain(e.dialTLS(t, offer), offer.Ticket)
	if err != nil {
		t.Fatalf("linking the branch kiosk's VM through the gateway: %v", err)
	}
	defer link.Close()
	branchLease := e.linkedLease(t, "k-branch")
	if !h2.Has(t, branchLease.VM) {
		t.Fatalf("%s, the branch group's VM, is not on the second host", branchLease.VM)
	}

	// The second host lost: its session ends, its kiosk is told why, and
	// the pool refills here.
	h2.Cut(t)
	if reason := kBranch.waitEnd(2 * time.Minute); reason != site.ReasonHostLost {
		t.Errorf("the branch kiosk's end reason = %q, want %q", reason, site.ReasonHostLost)
	}
	if h := hostStatus("there"); h.Connected || h.Lost == nil {
		t.Errorf("the second host's status while lost: %+v", h)
	}
	poll.Until(t, 5*time.Minute, "the pool refilled on the first host", func() bool {
		h := hostStatus("here")
		return h.Size == 2 && h.Counts[pool.Clean] == 2
	})
	// A branch kiosk waits: its hosts are down.
	kBranch.c.Request(time.Time{})
	for m := kBranch.next(30 * time.Second); ; m = kBranch.next(30 * time.Second) {
		if m == nil {
			t.Fatal("the branch kiosk heard nothing while its host is lost")
		}
		if m.Type == kioskproto.TStatus && m.Status.State == kioskproto.StateQueued {
			break
		}
		if m.Type == kioskproto.TOffer {
			t.Fatalf("the branch kiosk was offered lease %s while its host is lost", m.Offer.Lease)
		}
	}

	// Back: reconciled (the lost session's VM destroyed there), a share
	// again, and the waiting branch kiosk served there.
	h2.Mend(t)
	var again *kioskproto.Offer
	for again == nil {
		m := kBranch.next(5 * time.Minute)
		if m == nil {
			t.Fatal("no offer for the branch kiosk after its host came back")
		}
		if m.Type == kioskproto.TOffer {
			again = m.Offer
		}
	}
	if h2.Has(t, branchLease.VM) {
		t.Errorf("%s, the lost session's VM, is still on the second host after its reconcile", branchLease.VM)
	}
	link2, err := linkMain(e.dialTLS(t, again), again.Ticket)
	if err != nil {
		t.Fatalf("linking the second host's VM after it came back: %v", err)
	}
	defer link2.Close()
	lease := e.linkedLease(t, "k-branch")
	if !h2.Has(t, lease.VM) || lease.VM == branchLease.VM {
		t.Errorf("the branch kiosk's new VM %s: want a new one on the second host", lease.VM)
	}
	poll.Until(t, 5*time.Minute, "shares spread again", func() bool {
		return hostStatus("there").Size == 1 && hostStatus("here").Size == 1
	})

	// The main session ends as any does.
	v.Stop(time.Second)
	if reason := kMain.waitEnd(30 * time.Second); reason != "the viewer disconnected" {
		t.Errorf("main end reason = %q", reason)
	}
	e.checkWiped(t, mainLease.VM)
}
