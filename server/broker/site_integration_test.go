//go:build integration

package broker_test

import (
	"cmp"
	"fmt"
	"net/netip"
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
	"undervdi/server/session"
	"undervdi/server/site"
)

// TestTwoHosts runs one broker over two hosts: this machine's libvirtd,
// which holds the golden, and a second libvirtd in its own network and
// mount namespaces reached over TLS. The first publish is copied to the
// second host through libvirt's storage streams; the pool is spread over
// both; a kiosk pinned to each host's group gets a VM there (a real
// remote-viewer on this host's, a SPICE link through the gateway on the
// other's). Both hosts are on the isolated guest network: from inside the
// second host's VM, its address is of that host's guest subnet, an allowed
// site answers through the broker's DNS and proxies at the broker's backend
// address, another does not, and nothing else is reached. The second host
// cut off mid-session, as a host powered off or off the network (its
// packets dropped: no reset, only silence): the broker's probe finds it
// gone, its session ends with the host-lost reason, its kiosk is told, and
// the pool refills on the first host. Back, the second host is reconciled
// (the lost session's VM destroyed there), gets its share again and is used
// again. (TestRemoteHost kills a host's libvirtd instead: the connection
// closes at once.)
func TestTwoHosts(t *testing.T) {
	bed := testbed.New(t)
	h2 := remotehost.Start(t)
	standInInternet(t)
	// This machine sends the second host's guest subnet back through it,
	// as a site's broker machine routes each host's.
	const subnet2 = "10.216.9.0/24" // beds claim 10.214.X.0/24 for this machine's
	if err := h2.NS.Route(subnet2); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(bed.Root, "h2") // the second host's files; the bed removes them
	site2, err := config.Parse([]byte(fmt.Sprintf(`golden = %q
pool_size = 2
[gateway]
hosts_ca = %q
[network]
mode = "isolated"
allow = ["*.allowed.test"]
resolver = "%s:53"
broker_address = %q
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
guest_subnet = %q
overlay_dir = %q
versions_dir = %q
`, bed.Golden.Name, filepath.Join(h2.PKI, "cacert.pem"), internetDNS, h2.NS.HostIP, h2.URI, h2.NS.NSIP, subnet2,
		filepath.Join(dir, "overlays"), filepath.Join(dir, "versions"))))
	if err != nil {
		t.Fatal(err)
	}
	rb := brokertest.Start(t, bed, 2, func(c *config.Config) {
		subnet := c.Network.Subnet // the bed's, for this machine's clones
		c.Hosts, c.Gateway.HostsCA, c.Network = site2.Hosts, site2.Gateway.HostsCA, site2.Network
		c.Network.Subnet = subnet
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
	guestNetworkThere(t, h2, branchLease.VM, h2.NS.HostIP, subnet2)

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
	// The lost session's VM, not provably clean, is destroyed there (the
	// offer may come first: a VM that stayed clean is served at once). Its
	// audit line, written once it is wiped, holds what the guest network
	// refused it.
	if rec := sessionRecord(t, e.auditAt, branchLease.ID); rec.Blocked != 2 || len(rec.BlockedNames) != 1 ||
		rec.BlockedNames[0] != (session.BlockedName{Name: "blocked.test", Count: 2}) || !rec.Wiped {
		t.Errorf("the branch session's audit line: blocked %d, names %v, wiped %v; want blocked.test twice, wiped",
			rec.Blocked, rec.BlockedNames, rec.Wiped)
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

// guestNetworkThere checks, from inside vm on the second host, that it is
// on that host's guest subnet and reaches the broker's DNS and proxies at
// broker, its backend address, and nothing else.
func guestNetworkThere(t *testing.T, h2 *remotehost.Host, vm, broker, subnet string) {
	t.Helper()
	l, err := h2.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	run := inGuest(t, l, vm)
	lease, errText := run("net")
	ip, _ := lease["ip"].(string)
	if errText != "" || !netip.MustParsePrefix(subnet).Contains(netip.MustParseAddr(cmp.Or(ip, "0.0.0.0"))) || lease["dns"] != broker {
		t.Fatalf("the second host's clone's DHCP lease %v %q: want an address of %s and the broker's %s as DNS", lease, errText, subnet, broker)
	}
	checkGets(t, run, []guestGet{
		{[]string{"get", "http://allowed.test/"}, "allowed site, host allowed.test", ""},
		{[]string{"get", "https://www.allowed.test/"}, "allowed site, host www.allowed.test", ""},
		{[]string{"get", "-proxy", "http://" + broker + ":3128", "https://allowed.test/p"}, "allowed site", ""},
		{[]string{"get", "http://blocked.test/"}, "", "no such host"},
		{[]string{"get", "-proxy", "http://" + broker + ":3128", "http://blocked.test/"}, "not available at this kiosk", ""},
	})
	// With a default route a visitor could set, the filter drops what is
	// not for the broker's ports: the internet by address, the host's and
	// the broker's other ports.
	gw := netip.MustParsePrefix(subnet).Addr().Next().String()
	if _, errText := run("route", gw); errText != "" {
		t.Fatal(errText)
	}
	for _, target := range []string{blockedIP + ":80", gw + ":22", broker + ":22", broker + ":16514"} {
		if _, errText := run("dial", target); !strings.Contains(errText, "timeout") {
			t.Errorf("guest dial %s = %q, want a timeout: dropped", target, errText)
		}
	}
}
