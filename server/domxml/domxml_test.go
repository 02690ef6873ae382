package domxml

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"

	"undervdi/kioskproto"
)

func readGolden(t *testing.T) *Golden {
	t.Helper()
	b, err := os.ReadFile("testdata/win10.xml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := ParseGolden(string(b))
	if err != nil {
		t.Fatalf("ParseGolden(win10.xml) = %v", err)
	}
	return g
}

func TestParseGolden(t *testing.T) {
	g := readGolden(t)
	if g.Name != "win10" || g.Memory != 4<<30 || !g.HasAgent {
		t.Errorf("ParseGolden = name %q memory %d agent %v, want win10, 4 GiB, agent", g.Name, g.Memory, g.HasAgent)
	}
	var targets []string
	for _, d := range g.WritableDisks() {
		targets = append(targets, d.Target+"="+d.Format+":"+d.Path)
	}
	want := []string{"sda=qcow2:/var/lib/libvirt/images/win10.qcow2", "vdb=raw:/var/lib/libvirt/images/data.img"}
	if fmt.Sprint(targets) != fmt.Sprint(want) {
		t.Errorf("WritableDisks = %v, want %v (the read-only ISO is shared, not cloned)", targets, want)
	}
}

func TestCloneXML(t *testing.T) {
	g := readGolden(t)
	since := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	macs := 0
	out, err := g.CloneXML(Clone{
		Name: "undervdi-0a1b2c3d",
		UUID: "11111111-2222-4333-8444-555555555555",
		Overlays: map[string]string{
			"sda": "/var/lib/undervdi/overlays/undervdi-0a1b2c3d-sda.qcow2",
			"vdb": "/var/lib/undervdi/overlays/undervdi-0a1b2c3d-vdb.qcow2",
		},
		SpicePassword: "per-vm-secret",
		Meta:          Metadata{Pool: "undervdi", State: "booting", Since: since, Golden: "win10"},
		MAC:           func() string { macs++; return fmt.Sprintf("52:54:00:00:00:%02x", macs) },
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDomain(out)
	if err != nil {
		t.Fatalf("ParseDomain(clone) = %v", err)
	}
	if d.Name != "undervdi-0a1b2c3d" || d.UUID != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("clone name/uuid = %s %s", d.Name, d.UUID)
	}
	if d.Running {
		t.Errorf("clone XML claims to be running")
	}
	if want := []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}; fmt.Sprint(d.MACs) != fmt.Sprint(want) {
		t.Errorf("MACs = %v, want %v", d.MACs, want)
	}
	wantMeta := Metadata{Pool: "undervdi", State: "booting", Since: since, Golden: "win10"}
	if d.Meta == nil || *d.Meta != wantMeta {
		t.Errorf("Meta = %+v, want %+v", d.Meta, wantMeta)
	}
	if d.SpicePassword != "per-vm-secret" {
		t.Errorf("SpicePassword = %q", d.SpicePassword)
	}
	for _, disk := range d.Disks {
		switch disk.Target {
		case "sda", "vdb":
			if disk.Format != "qcow2" || !strings.HasPrefix(disk.Path, "/var/lib/undervdi/overlays/undervdi-0a1b2c3d-"+disk.Target) {
				t.Errorf("disk %s = %+v, want its qcow2 overlay", disk.Target, disk)
			}
		case "sdb":
			if disk.Path != "/var/lib/libvirt/images/virtio-win.iso" {
				t.Errorf("read-only ISO changed: %+v", disk)
			}
		}
	}
	for _, must := range []string{
		`<on_reboot>destroy</on_reboot>`,
		`<on_crash>destroy</on_crash>`,
		`<nvram template="/var/lib/libvirt/qemu/nvram/win10_VARS.fd"/>`,
		`<genid/>`,
		`<listen type="socket"/>`,
		`<image compression="auto_glz"/>`,
		`<streaming mode="filter"/>`,
		`<other:app xmlns:other="https://example.org/other">`,
		`<target type="virtio" name="org.qemu.guest_agent.0"/>`,
		`cache="none"`,
		`<redirdev bus="usb" type="spicevmc"/>`,
	} {
		if !strings.Contains(out, must) {
			t.Errorf("clone XML lacks %s", must)
		}
	}
	for _, mustNot := range []string{
		"win10.qcow2\"/>", // the golden disk is no disk of the clone
		"data.img",
		`type="vnc"`,
		"0.0.0.0",
		"5901",
		"golden-secret",
		"secure",
		"/var/log/",
		"4555",
		"vnet7",
		"52:54:00:aa:bb",
		"6f1c1e3a",
		"1e4d1c3a",
		"backingStore",
		"win10.org.qemu.guest_agent.0",
	} {
		if strings.Contains(out, mustNot) {
			t.Errorf("clone XML still contains %q:\n%s", mustNot, out)
		}
	}
	if n := strings.Count(out, "<graphics"); n != 1 {
		t.Errorf("clone has %d displays, want exactly one (SPICE on a socket)", n)
	}
	if n := strings.Count(out, `type="pty"`); n != 3 {
		t.Errorf("clone has %d pty chardevs, want 3 (two serials and the console)", n)
	}
}

func TestCloneXMLNeedsEveryOverlay(t *testing.T) {
	g := readGolden(t)
	_, err := g.CloneXML(Clone{Name: "x", UUID: "u", Overlays: map[string]string{"sda": "/o"}, MAC: func() string { return "52:54:00:00:00:01" }})
	if err == nil || !strings.Contains(err.Error(), "vdb") {
		t.Errorf("CloneXML without vdb's overlay = %v, want an error naming vdb", err)
	}
}

func TestParseGoldenErrors(t *testing.T) {
	base := func(devices string) string {
		return `<domain type='kvm'><name>g</name><memory unit='MiB'>512</memory><devices>` + devices + `</devices></domain>`
	}
	for _, tc := range []struct {
		xml  string
		want string
	}{
		{base(`<disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg/win'/><target dev='vda'/></disk>`), `disk vda is a "block" disk, not a file image`},
		{base(`<disk type='network' device='disk'><driver type='raw'/><source protocol='rbd' name='p/i'/><target dev='vda'/></disk>`), `"network" disk`},
		{base(`<disk type='file' device='disk'><driver type='vmdk'/><source file='/a.vmdk'/><target dev='vda'/></disk>`), `format "vmdk"`},
		{base(`<disk type='file' device='disk'><driver type='qcow2'/><source file='/a'/><target dev='vda'/><shareable/></disk>`), "shareable"},
		{base(`<disk type='file' device='cdrom'><source file='/a.iso'/><target dev='sda'/><readonly/></disk>`), "no writable disk"},
		{base(`<disk type='file' device='disk'><driver type='qcow2'/><source file='/a'/><target dev='vda'/></disk><hostdev mode='subsystem' type='pci'/>`), "host device"},
		{base(`<disk type='file' device='disk'><driver type='qcow2'/><source file='/a'/><target dev='vda'/></disk><interface type='hostdev'/>`), "hostdev"},
		{`<domain><name>g</name><memory unit='parsecs'>1</memory></domain>`, "unit"},
		{`<network/>`, "not a <domain>"},
		{`<domain`, "domain XML"},
	} {
		_, err := ParseGolden(tc.xml)
		if err == nil || !errors.Is(err, ErrGolden) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseGolden(%s) = %v, want ErrGolden containing %q", tc.xml, err, tc.want)
		}
	}
}

func TestParseLiveDomain(t *testing.T) {
	live := `<domain type='qemu' id='7'>
  <name>undervdi-0a1b2c3d</name><uuid>u</uuid>
  <metadata><vdi:vm xmlns:vdi="https://undervdi.org/xmlns/vm/1"><pool>undervdi</pool><state>clean</state><since>2026-11-23T10:00:00Z</since><golden>tiny</golden></vdi:vm></metadata>
  <devices>
    <channel type='unix'><source mode='bind' path='/x'/><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
    <graphics type='spice' passwd='pw'><listen type='socket' socket='/var/lib/libvirt/qemu/domain-7-x/spice.sock'/></graphics>
  </devices></domain>`
	d, err := ParseDomain(live)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Running || d.AgentState != "connected" || d.SpiceSocket != "/var/lib/libvirt/qemu/domain-7-x/spice.sock" || d.SpicePassword != "pw" {
		t.Errorf("ParseDomain = %+v", d)
	}
	if d.Meta == nil || d.Meta.State != "clean" || d.Meta.Pool != "undervdi" || d.Meta.Golden != "tiny" {
		t.Errorf("Meta = %+v", d.Meta)
	}
	if _, err := ParseDomain(strings.Replace(live, "2026-11-23T10:00:00Z", "yesterday", 1)); err == nil {
		t.Errorf("ParseDomain with a bad since = nil error")
	}
}

func FuzzParseDomain(f *testing.F) {
	b, _ := os.ReadFile("testdata/win10.xml")
	f.Add(string(b))
	f.Add(`<domain id='1'><metadata><vdi:vm xmlns:vdi="https://undervdi.org/xmlns/vm/1"><state>clean</state></vdi:vm></metadata></domain>`)
	f.Fuzz(func(t *testing.T, s string) {
		ParseDomain(s)
		ParseVersion(s)
		if g, err := ParseGolden(s); err == nil {
			overlays := map[string]string{}
			for _, d := range g.WritableDisks() {
				overlays[d.Target] = "/o/" + d.Target
			}
			g.CloneXML(Clone{Name: "n", UUID: "u", Overlays: overlays, MAC: func() string { return "52:54:00:00:00:01" }})
		}
	})
}

func TestMetadataRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	m := Metadata{Pool: "undervdi", State: "in-use", Since: at, Golden: "win10", Version: 3,
		Kiosk: "lobby-1", Lease: "l-0123456789abcdef", Addr: "169.254.24.10", Offered: at.Add(-time.Second), Linked: at,
		Reason: "the visitor finished"}
	g := readGolden(t)
	out, err := g.CloneXML(Clone{Name: "undervdi-0a1b2c3d", UUID: "u", Overlays: map[string]string{"sda": "/o/a", "vdb": "/o/b"},
		Meta: m, MAC: func() string { return "52:54:00:00:00:01" }})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDomain(out)
	if err != nil || d.Meta == nil || *d.Meta != m {
		t.Errorf("metadata back = %+v, %v; want %+v", d.Meta, err, m)
	}
	if el := (Metadata{Pool: "p", State: "clean"}).Element(); strings.Contains(el, "kiosk") || strings.Contains(el, "linked") {
		t.Errorf("Element() of a VM nobody had = %s: empty fields are left out", el)
	}
}

func TestVersionTemplate(t *testing.T) {
	g := readGolden(t)
	published := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	meta := VersionMeta{Pool: "undervdi", Seq: 4, Golden: "win10", Published: published,
		Sources: []Source{{Target: "sda", Path: "/var/lib/libvirt/images/win10.qcow2", Modified: published.Add(-time.Hour), Allocation: 21 << 30}}}
	out, err := g.TemplateXML(Template{Name: "undervdi-v4", UUID: "22222222-2222-4333-8444-555555555555",
		Disks: map[string]string{"sda": "/var/lib/undervdi/versions/undervdi-v4-sda.qcow2", "vdb": "/var/lib/undervdi/versions/undervdi-v4-vdb.qcow2"},
		Meta:  meta})
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseVersion(out)
	if err != nil || v == nil {
		t.Fatalf("ParseVersion(template) = %v, %v", v, err)
	}
	if v.Name != "undervdi-v4" || v.Meta.Seq != 4 || !v.Meta.Published.Equal(published) || len(v.Meta.Sources) != 1 ||
		v.Meta.Sources[0] != meta.Sources[0] {
		t.Errorf("version back = %+v %+v", v.Name, v.Meta)
	}
	for _, d := range v.WritableDisks() {
		if d.Format != "qcow2" || !strings.HasPrefix(d.Path, "/var/lib/undervdi/versions/undervdi-v4-"+d.Target) {
			t.Errorf("template disk %s = %+v, want the version's qcow2 copy", d.Target, d)
		}
	}
	if strings.Contains(out, "win10.qcow2'") || strings.Contains(out, "data.img") {
		t.Errorf("the template still points at the golden's disks")
	}
	if !strings.Contains(out, `<nvram template="/var/lib/libvirt/qemu/nvram/win10_VARS.fd"/>`) {
		t.Errorf("the template owns the golden's UEFI variables file: undefining it would delete them")
	}
	// A clone of the template is a clone, not a version.
	clone, err := v.CloneXML(Clone{Name: "undervdi-0a1b2c3d", UUID: "u", Overlays: map[string]string{"sda": "/o/a", "vdb": "/o/b"},
		Meta: Metadata{Pool: "undervdi", State: "booting", Version: 4}, MAC: func() string { return "52:54:00:00:00:01" }})
	if err != nil {
		t.Fatal(err)
	}
	if cv, err := ParseVersion(clone); cv != nil || err != nil {
		t.Errorf("ParseVersion(clone) = %v, %v; a clone carries no version metadata", cv, err)
	}
	if d, err := ParseDomain(clone); err != nil || d.Meta == nil || d.Meta.Version != 4 {
		t.Errorf("clone metadata = %+v, %v", d, err)
	}
	// Withdrawn round-trips; a domain that is no version is nil.
	meta.Withdrawn = published.Add(time.Hour)
	if m, err := parseVersionMeta(elementOf(t, meta.Element())); err != nil || !m.Withdrawn.Equal(meta.Withdrawn) {
		t.Errorf("withdrawn back = %v, %v", m.Withdrawn, err)
	}
	if v, err := ParseVersion(`<domain><name>x</name></domain>`); v != nil || err != nil {
		t.Errorf("ParseVersion(plain domain) = %v, %v", v, err)
	}
	if _, err := ParseVersion(strings.Replace(out, "<seq>4</seq>", "<seq>four</seq>", 1)); err == nil {
		t.Errorf("ParseVersion with a bad number = nil error")
	}
}

func elementOf(t *testing.T, s string) *etree.Element {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(s); err != nil {
		t.Fatal(err)
	}
	return doc.Root()
}

func TestRedirFilter(t *testing.T) {
	rules, err := kioskproto.ParseUSBFilter("0x03,-1,-1,-1,0|0x08,0x0781,0x5581,0x0100,1|-1,-1,-1,-1,0")
	if err != nil {
		t.Fatal(err)
	}
	out, err := readGolden(t).CloneXML(Clone{Name: "n", UUID: "u", Overlays: map[string]string{"sda": "/o/a", "vdb": "/o/b"},
		MAC: func() string { return "52:54:00:00:00:01" }, USBFilter: rules})
	if err != nil {
		t.Fatal(err)
	}
	want := `<redirfilter>
      <usbdev class="0x03" allow="no"/>
      <usbdev class="0x08" vendor="0x0781" product="0x5581" version="1.00" allow="yes"/>
      <usbdev allow="no"/>
    </redirfilter>`
	if !strings.Contains(out, want) {
		t.Errorf("clone XML lacks the site's USB filter:\n%s", out)
	}
}

// A clone on the guest network with encrypted overlays: one interface, on
// the broker's network behind its filter (the golden's two are gone, the
// first one's model kept), each overlay's key named by its secret, and the
// guest's memory kept out of core dumps and files.
func TestCloneXMLGuestNetworkAndEncryption(t *testing.T) {
	g := readGolden(t)
	out, err := g.CloneXML(Clone{
		Name: "undervdi-0a1b2c3d", UUID: "11111111-2222-4333-8444-555555555555",
		Overlays: map[string]string{"sda": "/o/sda.qcow2", "vdb": "/o/vdb.qcow2"},
		Secrets:  map[string]string{"sda": "aaaaaaaa-0000-4000-8000-000000000001", "vdb": "aaaaaaaa-0000-4000-8000-000000000002"},
		NIC: &NIC{Network: "undervdi-guests", MAC: "52:54:00:12:34:56", Filter: "undervdi-guest",
			Params: []FilterParam{{"IP", "10.213.0.10"}, {"GATEWAY", "10.213.0.1"}, {"PORT", "80"}, {"PORT", "443"}}},
		SpicePassword: "p", Meta: Metadata{Pool: "undervdi", State: "booting"},
		MAC: func() string { t.Error("MAC called for a clone with a NIC"); return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDomain(out)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d.MACs) != "[52:54:00:12:34:56]" || d.GuestIP != "10.213.0.10" {
		t.Errorf("MACs %v, guest IP %q: want the one NIC on 10.213.0.10", d.MACs, d.GuestIP)
	}
	for _, disk := range d.Disks {
		if want := map[string]string{"sda": "aaaaaaaa-0000-4000-8000-000000000001", "vdb": "aaaaaaaa-0000-4000-8000-000000000002"}[disk.Target]; want != "" {
			if !disk.Encrypted || disk.Secret != want {
				t.Errorf("disk %s: encrypted %v with secret %q, want %s", disk.Target, disk.Encrypted, disk.Secret, want)
			}
		} else if disk.Encrypted {
			t.Errorf("disk %s is encrypted, want plain", disk.Target)
		}
	}
	for _, must := range []string{
		`<source network="undervdi-guests"/>`,
		`<model type="virtio"/>`,
		`<filterref filter="undervdi-guest">`,
		`<parameter name="PORT" value="443"/>`,
		`<memory unit="GiB" dumpCore="off">`,
		`<encryption format="luks"><secret type="passphrase" uuid="aaaaaaaa-0000-4000-8000-000000000002"/></encryption>`,
	} {
		if compact := regexp.MustCompile(`>\s+<`).ReplaceAllString(out, "><"); !strings.Contains(compact, must) {
			t.Errorf("clone XML lacks %s", must)
		}
	}
	if n := strings.Count(out, "<interface"); n != 1 {
		t.Errorf("clone has %d interfaces, want 1", n)
	}
	for _, mustNot := range []string{"br0", `network="default"`} {
		if strings.Contains(out, mustNot) {
			t.Errorf("clone XML still contains %q", mustNot)
		}
	}
}

func TestParseGoldenRefusesEncryptedDisk(t *testing.T) {
	_, err := ParseGolden(`<domain><name>g</name><memory>1024</memory><devices>
<disk type='file' device='disk'><driver type='qcow2'/><source file='/g.qcow2'><encryption format='luks'><secret type='passphrase' uuid='x'/></encryption></source><target dev='vda'/></disk>
</devices></domain>`)
	if err == nil || !strings.Contains(err.Error(), "disk vda is encrypted") {
		t.Errorf("ParseGolden(encrypted disk) = %v", err)
	}
}

func TestParseGoldenRefusesWaysOut(t *testing.T) {
	_, err := ParseGolden(`<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>g</name><memory>1024</memory><devices>
<disk type='file' device='disk'><driver type='qcow2'/><source file='/g.qcow2'/><target dev='vda'/></disk>
<filesystem type='mount'><source dir='/srv/share'/><target dir='share'/></filesystem>
<filesystem type='mount'><source dir='/srv/docs'/><target dir='docs'/><readonly/></filesystem>
<vsock model='virtio'><cid auto='yes'/></vsock>
</devices><qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,id=n0'/></qemu:commandline></domain>`)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"shared writable", "vsock", "raw QEMU arguments (<qemu:commandline>)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Count(err.Error(), "shared writable") != 1 {
		t.Errorf("the read-only share is refused too: %v", err)
	}
}

// TestCloneSpiceOnAddress: a clone on a host other than the broker's has
// SPICE on that host's backend address, TLS only, ports libvirt picks; the
// golden's own listen settings are gone.
func TestCloneSpiceOnAddress(t *testing.T) {
	g := readGolden(t)
	out, err := g.CloneXML(Clone{
		Name: "undervdi-0a1b2c3d", UUID: "11111111-2222-4333-8444-555555555555",
		Overlays: map[string]string{
			"sda": "/var/lib/undervdi/overlays/undervdi-0a1b2c3d-sda.qcow2",
			"vdb": "/var/lib/undervdi/overlays/undervdi-0a1b2c3d-vdb.qcow2",
		},
		SpicePassword: "per-vm-secret",
		SpiceAddress:  "10.213.220.2",
		Meta:          Metadata{Pool: "undervdi", State: "booting", Golden: "win10"},
		MAC:           func() string { return "52:54:00:00:00:01" },
	})
	if err != nil {
		t.Fatal(err)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromString(out); err != nil {
		t.Fatal(err)
	}
	grs := doc.FindElements("//devices/graphics")
	if len(grs) != 1 {
		t.Fatalf("%d displays, want one SPICE:\n%s", len(grs), out)
	}
	gr := grs[0]
	for attr, want := range map[string]string{"type": "spice", "autoport": "yes", "defaultMode": "secure", "passwd": "per-vm-secret", "port": "", "tlsPort": ""} {
		if got := gr.SelectAttrValue(attr, ""); got != want {
			t.Errorf("graphics %s=%q, want %q", attr, got, want)
		}
	}
	ls := gr.SelectElements("listen")
	if len(ls) != 1 || ls[0].SelectAttrValue("type", "") != "address" || ls[0].SelectAttrValue("address", "") != "10.213.220.2" {
		t.Errorf("listen: %d elements, want one on address 10.213.220.2:\n%s", len(ls), out)
	}
	for _, ch := range gr.SelectElements("channel") {
		t.Errorf("a channel mode of the golden's is kept (%s=%s): one in clear would be allowed",
			ch.SelectAttrValue("name", ""), ch.SelectAttrValue("mode", ""))
	}

	// Running, libvirt has given it a TLS port: that is where it is reached.
	live := `<domain type='qemu' id='9'><name>undervdi-0a1b2c3d</name><devices>
	  <graphics type='spice' tlsPort='5901' autoport='yes' listen='10.213.220.2' defaultMode='secure' passwd='pw'>
	    <listen type='address' address='10.213.220.2'/></graphics></devices></domain>`
	d, err := ParseDomain(live)
	if err != nil {
		t.Fatal(err)
	}
	if d.SpiceTLS != "10.213.220.2:5901" || d.SpiceSocket != "" || d.SpicePassword != "pw" {
		t.Errorf("live: SpiceTLS %q, socket %q, password %q", d.SpiceTLS, d.SpiceSocket, d.SpicePassword)
	}
	if d, _ := ParseDomain(strings.Replace(live, "id='9'", "id='-1'", 1)); d.SpiceTLS != "" {
		t.Errorf("shut off: SpiceTLS %q, want none", d.SpiceTLS)
	}
}
