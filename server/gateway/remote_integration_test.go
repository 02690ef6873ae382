//go:build integration

package gateway_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"

	"undervdi/internal/remotehost"
	"undervdi/internal/testbed"
	"undervdi/server/domxml"
	"undervdi/server/gateway"
	"undervdi/server/pool"
	"undervdi/server/spice"
)

// TestSpiceOnSecondHost runs a clone on a second host (its own libvirtd,
// network and mount namespaces, reached over TLS) and reaches its screen
// as the gateway does for a VM not on the broker's machine (docs/hosts.md):
// the version copied there through libvirt's storage streams, the clone's
// SPICE on the host's backend address with a TLS port only, and the
// gateway's dialer verifying the host's certificate before it logs in with
// the VM's password. Nothing on that address speaks SPICE in clear, a
// dialer that does not trust the hosts' CA is refused, and so is a wrong
// password.
func TestSpiceOnSecondHost(t *testing.T) {
	ctx := context.Background()
	bed := testbed.New(t)
	local := remotehost.OpenHost(t, testbed.URI)
	if err := local.PrepareStorage(ctx, bed.Prefix, bed.OverlayDir, bed.VersionDir); err != nil {
		t.Fatal(err)
	}
	g, err := local.Golden(ctx, bed.Golden.Name)
	if err != nil {
		t.Fatal(err)
	}
	disk := g.WritableDisks()[0]
	published, err := local.CopyDisk(ctx, disk, bed.Prefix+"-v1-"+disk.Target+".qcow2", func(uint64) {})
	if err != nil {
		t.Fatal(err)
	}

	h2 := remotehost.Start(t)
	far := remotehost.OpenHost(t, h2.URI)
	const dir = "/var/lib/libvirt/undervdi-h2"
	if err := far.PrepareStorage(ctx, bed.Prefix, dir+"/overlays", dir+"/versions"); err != nil {
		t.Fatal(err)
	}
	from := domxml.Disk{Target: disk.Target, Path: published, Capacity: disk.Capacity}
	copied, err := far.ReplicateDisk(ctx, local, from, bed.Prefix+"-v1-"+disk.Target+".qcow2", func(uint64, uint64) {})
	if err != nil {
		t.Fatal(err)
	}
	name := bed.Prefix + "-0a1b2c3d"
	overlay, _, err := far.CreateOverlay(ctx, name+"-"+disk.Target+".qcow2",
		domxml.Disk{Target: disk.Target, Path: copied, Format: "qcow2", Capacity: disk.Capacity}, false)
	if err != nil {
		t.Fatal(err)
	}
	const password = "the VM's own password"
	x, err := g.CloneXML(domxml.Clone{
		Name: name, UUID: "0a1b2c3d-0000-4000-8000-000000000001",
		Overlays:      map[string]string{disk.Target: overlay},
		SpicePassword: password,
		SpiceAddress:  h2.NS.NSIP,
		Meta:          domxml.Metadata{Pool: bed.Prefix, State: "booting", Since: time.Now(), Golden: g.Name},
		MAC:           func() string { return "52:54:00:0a:1b:2c" },
	})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := far.DefineAndStart(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Destroy(ctx, name)
	if dom.SpiceSocket != "" || !strings.HasPrefix(dom.SpiceTLS, h2.NS.NSIP+":") {
		t.Fatalf("the clone's SPICE: socket %q, TLS %q; want a TLS port on %s only", dom.SpiceSocket, dom.SpiceTLS, h2.NS.NSIP)
	}
	t.Logf("the clone's SPICE TLS port: %s", dom.SpiceTLS)

	target := pool.SpiceTarget{TLS: dom.SpiceTLS, Password: password}
	dialer := gateway.SpiceDialer{Hosts: h2.CA()}
	link := func(d gateway.SpiceDialer, password string) error {
		c, err := d.DialSpice(ctx, target)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
			CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSpice, spice.CapMiniHeader)}, password)
		return err
	}
	if err := link(dialer, password); err != nil {
		t.Fatalf("the gateway's link to the clone on the second host: %v", err)
	}
	// The pool's readiness check, through the same dialer.
	if err := gateway.NewDisplays(dialer).Prepare(ctx, pool.VM{Name: name, Spice: target}); err != nil {
		t.Errorf("probing the clone's display: %v", err)
	}
	if err := link(dialer, "a guess"); !errors.Is(err, spice.LinkErrPermissionDenied) {
		t.Errorf("a wrong password: %v, want PERMISSION_DENIED", err)
	}
	if err := link(gateway.SpiceDialer{Hosts: x509.NewCertPool()}, password); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a dialer that does not trust the hosts' CA: %v, want a certificate error", err)
	}
	if err := link(gateway.SpiceDialer{}, password); err == nil {
		t.Error("a dialer with no hosts' CA reached the second host")
	}

	// In clear, the TLS port gives no SPICE link.
	c, err := net.DialTimeout("tcp", dom.SpiceTLS, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain}, password)
	c.Close()
	if err == nil {
		t.Error("a SPICE link in clear to the TLS port succeeded")
	}
	// And no port in clear is open: libvirt opened only the TLS one.
	l, err := h2.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	d, err := l.DomainLookupByName(name)
	if err != nil {
		t.Fatal(err)
	}
	live, err := l.DomainGetXMLDesc(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromString(live); err != nil {
		t.Fatal(err)
	}
	gr := doc.FindElement("//devices/graphics[@type='spice']")
	if gr == nil {
		t.Fatalf("the running clone has no SPICE display:\n%s", live)
	}
	if port := gr.SelectAttrValue("port", "-1"); port != "-1" {
		t.Errorf("the clone has a SPICE port in clear, %s:\n%s", port, live)
	}
}
