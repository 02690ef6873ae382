// Package domxml is the broker's model of libvirt domain XML: it checks a
// golden VM's definition, derives a disposable clone's definition from it,
// and reads back what the broker needs from a pool domain. It edits an XML
// tree (beevik/etree), never text, and keeps every element it does not know.
package domxml

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"

	"undervdi/kioskproto"
)

// Namespace and Prefix identify the broker's element in a clone's <metadata>;
// VersionNamespace the element of a published version's template domain.
const (
	Namespace        = "https://undervdi.org/xmlns/vm/1"
	VersionNamespace = "https://undervdi.org/xmlns/version/1"
	Prefix           = "vdi"
)

// AgentChannel is the virtio-serial port name of qemu-guest-agent.
const AgentChannel = "org.qemu.guest_agent.0"

// ErrGolden marks problems with the golden VM's definition.
var ErrGolden = errors.New("golden VM unusable")

// Disk is one <disk> of a domain.
type Disk struct {
	Target    string // guest device name, e.g. vda
	Device    string // disk, cdrom, floppy, lun
	Type      string // file, block, network, volume, dir, nvme
	Path      string // source file, for type file
	Format    string // driver type, e.g. qcow2, raw
	ReadOnly  bool
	Shareable bool
	Encrypted bool   // the image is encrypted (an <encryption> on the disk or its source)
	Secret    string // the UUID of the libvirt secret holding its key, if named
	Capacity  uint64 // virtual size in bytes; filled in by the host's golden check
	// Allocation and Modified are filled in by the host's golden check:
	// the bytes the image holds on the host (what a copy of it costs) and
	// when it was last written.
	Allocation uint64
	Modified   time.Time
}

// Writable reports whether the guest can write the disk, which is what makes
// it need a per-clone overlay.
func (d Disk) Writable() bool { return !d.ReadOnly && d.Device != "cdrom" }

// Golden is a checked golden VM definition.
type Golden struct {
	Name     string
	Memory   uint64 // bytes, from <memory>
	Disks    []Disk
	HasAgent bool // a qemu-guest-agent channel is defined
	doc      *etree.Document
}

// WritableDisks returns the disks that each clone gets an overlay for.
func (g *Golden) WritableDisks() []Disk {
	var out []Disk
	for _, d := range g.Disks {
		if d.Writable() {
			out = append(out, d)
		}
	}
	return out
}

// ParseGolden reads the inactive XML of the golden domain and checks that it
// can be cloned safely: each writable disk is a file image (qcow2 or raw)
// that is not shared, and no host device is passed through. All problems are
// reported at once.
func ParseGolden(text string) (*Golden, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(text); err != nil {
		return nil, fmt.Errorf("%w: domain XML: %v", ErrGolden, err)
	}
	root := doc.Root()
	if root == nil || root.Tag != "domain" {
		return nil, fmt.Errorf("%w: not a <domain> document", ErrGolden)
	}
	g := &Golden{Name: childText(root, "name"), doc: doc}
	mem, err := memoryBytes(root.SelectElement("memory"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrGolden, err)
	}
	g.Memory = mem
	g.Disks = disks(root)
	g.HasAgent = agentChannel(root) != nil

	var errs []error
	problem := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, d := range g.Disks {
		if !d.Writable() {
			continue
		}
		switch {
		case d.Type != "file":
			problem("disk %s is a %q disk, not a file image: only qcow2 or raw files can be cloned", d.Target, d.Type)
		case d.Path == "":
			problem("disk %s has no source file", d.Target)
		case d.Format != "qcow2" && d.Format != "raw":
			problem("disk %s has format %q: only qcow2 or raw can be cloned (set <driver type=...>)", d.Target, d.Format)
		}
		if d.Encrypted {
			problem("disk %s is encrypted: a golden holds no visitor data, and each clone's overlay is encrypted with a key of its own (encrypt_disks)", d.Target)
		}
		if d.Shareable {
			problem("disk %s is shareable: a writable disk shared between visitors' VMs would leak their data", d.Target)
		}
	}
	if len(g.WritableDisks()) == 0 {
		problem("no writable disk: nothing to clone")
	}
	for _, h := range root.FindElements("./devices/hostdev") {
		problem("a host device (<hostdev type=%q>) is passed through: it cannot belong to several clones", h.SelectAttrValue("type", "?"))
	}
	if len(root.FindElements("./devices/interface[@type='hostdev']")) > 0 {
		problem("a network interface of type hostdev is passed through: it cannot belong to several clones")
	}
	// Ways past the guest network's filters and the overlays' wipe.
	for _, fs := range root.FindElements("./devices/filesystem") {
		if fs.SelectElement("readonly") == nil {
			problem("a host directory is shared writable (<filesystem>): visitors' files would outlive their VM, and reach the next")
		}
	}
	if len(root.FindElements("./devices/vsock")) > 0 {
		problem("a vsock device lets the guest talk to the host past the guest network: remove it")
	}
	for _, el := range root.ChildElements() {
		if el.Space != "" && (el.Tag == "commandline" || el.Tag == "override") {
			problem("raw QEMU arguments (<%s:%s>) are not allowed: they could add a network or a disk the broker does not control", el.Space, el.Tag)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %q: %w", ErrGolden, g.Name, errors.Join(errs...))
	}
	return g, nil
}

// Clone says what makes one clone different from the golden.
type Clone struct {
	Name          string
	UUID          string
	Overlays      map[string]string // disk target -> overlay path, for every writable disk
	SpicePassword string
	Meta          Metadata
	MAC           func() string        // returns a fresh MAC address per call
	USBFilter     []kioskproto.USBRule // the site's USB policy, enforced by QEMU too
	// Secrets names, per disk target, the libvirt secret holding the key
	// of that disk's encrypted (LUKS) overlay; a target not named is plain.
	Secrets map[string]string
	// NIC, if set, replaces every network interface of the golden with the
	// one the broker's guest network gives this clone.
	NIC *NIC
	// SpiceAddress, if set, is the host's backend address the clone's
	// SPICE listens on, TLS only (a host other than the broker's, which
	// reaches it over that network): QEMU refuses every channel in clear.
	// "": a unix socket on the host, as on the broker's own host.
	SpiceAddress string
}

// NIC is a clone's one network interface on the broker's guest network:
// a port of a libvirt network, guarded by a libvirt network filter.
type NIC struct {
	Network string
	MAC     string
	Filter  string
	Params  []FilterParam // the filter's variables, in order; a name given twice is a list
}

// FilterParam is one <parameter> of a <filterref>.
type FilterParam struct{ Name, Value string }

// CloneXML derives the clone's domain XML from the golden's:
//   - new name, UUID and VM generation ID; a fresh MAC per NIC;
//   - each writable disk points at its qcow2 overlay (the golden's disk becomes
//     its backing file and is never written);
//   - the only display is SPICE on a unix socket with the clone's password:
//     VNC or SPICE on the network would bypass the broker;
//   - character devices that write host files or listen on the network become
//     ptys (a console log would outlive the visitor); agent sockets get
//     per-domain paths;
//   - UEFI variables come from the golden's as a template, into a file of the
//     clone's own;
//   - USB redirection is filtered by QEMU as the kiosk's viewer filters it;
//   - power off, reboot and crash all destroy the domain, which ends the session.
func (g *Golden) CloneXML(c Clone) (string, error) {
	doc := g.doc.Copy()
	root := doc.Root()
	root.RemoveAttr("id")
	setChild(root, "name", c.Name)
	setChild(root, "uuid", c.UUID)
	setChild(root, "description", fmt.Sprintf("undervdi disposable clone of %s: destroyed with its disk after one use", g.Name))
	if genid := root.SelectElement("genid"); genid != nil {
		genid.SetText("") // libvirt generates a new one
	}
	for _, ev := range []string{"on_poweroff", "on_reboot", "on_crash"} {
		setChild(root, ev, "destroy")
	}
	if err := setMetadata(root, Namespace, c.Meta.Element()); err != nil {
		return "", err
	}
	nvramFromTemplate(root)
	devices := root.SelectElement("devices")
	if devices == nil {
		return "", fmt.Errorf("%w: %q has no <devices>", ErrGolden, g.Name)
	}
	if err := pointWritableDisks(root, c.Overlays, c.Secrets, "overlay"); err != nil {
		return "", err
	}
	if c.NIC != nil {
		setNIC(devices, *c.NIC)
	} else {
		for _, nic := range devices.SelectElements("interface") {
			for _, name := range []string{"mac", "target", "alias"} {
				for _, e := range nic.SelectElements(name) {
					nic.RemoveChild(e)
				}
			}
			nic.InsertChildAt(0, newElement("mac", "address", c.MAC()))
		}
	}
	keepMemoryOffDisk(root)
	setSpice(devices, c.SpicePassword, c.SpiceAddress)
	setRedirFilter(devices, c.USBFilter)
	for _, tag := range []string{"serial", "console", "parallel", "channel"} {
		for _, el := range devices.SelectElements(tag) {
			confineChardev(el)
		}
	}
	doc.Indent(2)
	return doc.WriteToString()
}

// pointWritableDisks makes every writable disk a qcow2 file at the path
// paths gives for its target (an overlay, a version's copy), with no backing
// chain of its own in the XML: libvirt reads that from the image. A target
// secrets names is a LUKS-encrypted image whose key is that libvirt secret;
// the golden's own encryption settings never carry over.
func pointWritableDisks(root *etree.Element, paths, secrets map[string]string, what string) error {
	for _, el := range root.FindElements("./devices/disk") {
		d := diskOf(el)
		if !d.Writable() {
			continue
		}
		path, ok := paths[d.Target]
		if !ok {
			return fmt.Errorf("no %s given for writable disk %s", what, d.Target)
		}
		el.CreateAttr("type", "file")
		for _, s := range el.SelectElements("source") {
			el.RemoveChild(s)
		}
		src := newElement("source", "file", path)
		if secret, ok := secrets[d.Target]; ok {
			enc := src.CreateElement("encryption")
			enc.CreateAttr("format", "luks")
			sec := enc.CreateElement("secret")
			sec.CreateAttr("type", "passphrase")
			sec.CreateAttr("uuid", secret)
		}
		el.InsertChildAt(0, src)
		for _, tag := range []string{"backingStore", "encryption"} {
			for _, b := range el.SelectElements(tag) {
				el.RemoveChild(b)
			}
		}
		drv := el.SelectElement("driver")
		if drv == nil {
			drv = el.CreateElement("driver")
			drv.CreateAttr("name", "qemu")
		}
		drv.CreateAttr("type", "qcow2")
	}
	return nil
}

// setNIC replaces the golden's interfaces with the clone's one port on the
// guest network. The golden's first interface gives the model (a guest
// without virtio drivers keeps its e1000); nothing else of it is kept: its
// network, addresses and filters are the golden's, not the clone's.
func setNIC(devices *etree.Element, n NIC) {
	model := newElement("model", "type", "virtio")
	for i, old := range devices.SelectElements("interface") {
		if m := old.SelectElement("model"); i == 0 && m != nil {
			model = m.Copy()
		}
		devices.RemoveChild(old)
	}
	nic := devices.CreateElement("interface")
	nic.CreateAttr("type", "network")
	nic.AddChild(newElement("mac", "address", n.MAC))
	nic.AddChild(newElement("source", "network", n.Network))
	nic.AddChild(model)
	ref := nic.CreateElement("filterref")
	ref.CreateAttr("filter", n.Filter)
	for _, p := range n.Params {
		el := ref.CreateElement("parameter")
		el.CreateAttr("name", p.Name)
		el.CreateAttr("value", p.Value)
	}
}

// keepMemoryOffDisk keeps the guest's RAM out of files on the host: no
// core dump holds it, and memory a golden backs by a file is anonymous
// (memfd, which still allows sharing with virtiofs) in the clone.
func keepMemoryOffDisk(root *etree.Element) {
	if mem := root.SelectElement("memory"); mem != nil {
		mem.CreateAttr("dumpCore", "off")
	}
	for _, src := range root.FindElements("./memoryBacking/source[@type='file']") {
		src.CreateAttr("type", "memfd")
	}
}

// nvramFromTemplate turns the golden's own UEFI variables file into the
// template a new domain's file is copied from: the domain gets a file of its
// own, and undefining it can never delete the golden's.
func nvramFromTemplate(root *etree.Element) {
	if nv := root.FindElement("./os/nvram"); nv != nil {
		if path := strings.TrimSpace(nv.Text()); path != "" {
			nv.CreateAttr("template", path)
			nv.SetText("")
		}
	}
}

// setSpice replaces every display with SPICE on a unix socket whose path
// libvirt picks per domain or, given an address, on a TLS port there that
// libvirt picks (defaultMode secure: no port in clear is opened, and QEMU
// refuses any channel that is not TLS). Settings of the golden's own SPICE
// display (compression, streaming, clipboard, ...) are kept.
func setSpice(devices *etree.Element, password, address string) {
	spice := etree.NewElement("graphics")
	spice.CreateAttr("type", "spice")
	for _, gr := range devices.SelectElements("graphics") {
		if gr.SelectAttrValue("type", "") == "spice" {
			for _, ch := range gr.ChildElements() {
				switch ch.Tag {
				case "image", "jpeg", "zlib", "playback", "streaming", "clipboard", "mouse", "filetransfer", "gl":
					spice.AddChild(ch.Copy())
				}
			}
		}
		devices.RemoveChild(gr)
	}
	spice.CreateAttr("passwd", password)
	if address == "" {
		spice.InsertChildAt(0, newElement("listen", "type", "socket"))
	} else {
		spice.CreateAttr("autoport", "yes")
		spice.CreateAttr("defaultMode", "secure")
		l := newElement("listen", "type", "address")
		l.CreateAttr("address", address)
		spice.InsertChildAt(0, l)
	}
	devices.AddChild(spice)
}

// confineChardev keeps a character device off the host's file system and
// network, except the unix sockets libvirt names per domain.
func confineChardev(el *etree.Element) {
	for _, l := range el.SelectElements("log") {
		el.RemoveChild(l)
	}
	typ := el.SelectAttrValue("type", "pty")
	switch {
	case typ == "pty" || typ == "null" || typ == "spicevmc" || typ == "spiceport" || typ == "vc":
		return
	case typ == "unix" && el.Tag == "channel":
		for _, s := range el.SelectElements("source") {
			el.RemoveChild(s) // libvirt then creates a per-domain socket
		}
		return
	}
	el.CreateAttr("type", "pty")
	for _, s := range el.SelectElements("source") {
		el.RemoveChild(s)
	}
	for _, p := range el.SelectElements("protocol") {
		el.RemoveChild(p)
	}
}

// Domain is what the broker reads back from one of its pool's domains.
type Domain struct {
	Name          string
	UUID          string
	Running       bool      // libvirt gave it an id: running or paused
	Meta          *Metadata // nil when the domain is not one of the broker's clones
	Disks         []Disk
	MACs          []string
	GuestIP       string // the address the guest network's filter holds the clone to; "" off that network
	SpiceSocket   string // path of the SPICE unix socket, when running
	SpiceTLS      string // or host:port of its TLS port, when running
	SpicePassword string // only present in XML read with the secure flag
	AgentState    string // "connected", "disconnected" or "" (no channel or not running)
	StopReason    string // why a domain that is not running stopped; filled in by the host
}

// ParseDomain reads a domain's XML (live or inactive).
func ParseDomain(text string) (*Domain, error) {
	root, err := readDomain(text)
	if err != nil {
		return nil, err
	}
	id := root.SelectAttrValue("id", "-1")
	d := &Domain{
		Name:    childText(root, "name"),
		UUID:    childText(root, "uuid"),
		Running: id != "-1",
		Disks:   disks(root),
	}
	for _, m := range root.FindElements("./devices/interface/mac") {
		d.MACs = append(d.MACs, m.SelectAttrValue("address", ""))
	}
	if p := root.FindElement("./devices/interface/filterref/parameter[@name='IP']"); p != nil {
		d.GuestIP = p.SelectAttrValue("value", "")
	}
	if gr := root.FindElement("./devices/graphics[@type='spice']"); gr != nil {
		d.SpicePassword = gr.SelectAttrValue("passwd", "")
		if l := gr.FindElement("./listen[@type='socket']"); l != nil {
			d.SpiceSocket = l.SelectAttrValue("socket", "")
		}
		if l := gr.FindElement("./listen[@type='address']"); l != nil && id != "-1" {
			if port := gr.SelectAttrValue("tlsPort", "-1"); port != "-1" {
				d.SpiceTLS = net.JoinHostPort(l.SelectAttrValue("address", ""), port)
			}
		}
	}
	if ch := agentChannel(root); ch != nil {
		if t := ch.SelectElement("target"); t != nil {
			d.AgentState = t.SelectAttrValue("state", "")
		}
	}
	if el := ownElement(root, Namespace); el != nil {
		m, err := parseMetadata(el)
		if err != nil {
			return nil, fmt.Errorf("domain %s: %w", d.Name, err)
		}
		d.Meta = m
	}
	return d, nil
}

func disks(root *etree.Element) []Disk {
	var out []Disk
	for _, el := range root.FindElements("./devices/disk") {
		out = append(out, diskOf(el))
	}
	return out
}

func diskOf(el *etree.Element) Disk {
	d := Disk{
		Type:      el.SelectAttrValue("type", "file"),
		Device:    el.SelectAttrValue("device", "disk"),
		ReadOnly:  el.SelectElement("readonly") != nil,
		Shareable: el.SelectElement("shareable") != nil,
	}
	if t := el.SelectElement("target"); t != nil {
		d.Target = t.SelectAttrValue("dev", "")
	}
	encryption := el.SelectElement("encryption")
	if s := el.SelectElement("source"); s != nil {
		d.Path = s.SelectAttrValue("file", "")
		if e := s.SelectElement("encryption"); e != nil {
			encryption = e
		}
	}
	if encryption != nil {
		d.Encrypted = true
		if s := encryption.SelectElement("secret"); s != nil {
			d.Secret = s.SelectAttrValue("uuid", "")
		}
	}
	if drv := el.SelectElement("driver"); drv != nil {
		d.Format = drv.SelectAttrValue("type", "")
	}
	return d
}

func agentChannel(root *etree.Element) *etree.Element {
	for _, ch := range root.FindElements("./devices/channel") {
		if t := ch.SelectElement("target"); t != nil && t.SelectAttrValue("name", "") == AgentChannel {
			return ch
		}
	}
	return nil
}

// memoryBytes converts <memory unit='KiB'>N</memory> to bytes.
func memoryBytes(el *etree.Element) (uint64, error) {
	if el == nil {
		return 0, errors.New("no <memory> element")
	}
	n, err := strconv.ParseUint(strings.TrimSpace(el.Text()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("<memory> %q: %v", el.Text(), err)
	}
	unit := el.SelectAttrValue("unit", "KiB")
	mult := map[string]uint64{
		"b": 1, "bytes": 1,
		"KB": 1000, "k": 1 << 10, "KiB": 1 << 10,
		"MB": 1000 * 1000, "M": 1 << 20, "MiB": 1 << 20,
		"GB": 1000 * 1000 * 1000, "G": 1 << 30, "GiB": 1 << 30,
		"TB": 1000 * 1000 * 1000 * 1000, "T": 1 << 40, "TiB": 1 << 40,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("<memory> unit %q is unknown", unit)
	}
	return n * mult, nil
}

func childText(el *etree.Element, tag string) string {
	if c := el.SelectElement(tag); c != nil {
		return strings.TrimSpace(c.Text())
	}
	return ""
}

func setChild(el *etree.Element, tag, text string) {
	c := el.SelectElement(tag)
	if c == nil {
		c = el.CreateElement(tag)
	}
	c.SetText(text)
}

func newElement(tag, attr, value string) *etree.Element {
	e := etree.NewElement(tag)
	e.CreateAttr(attr, value)
	return e
}

// readDomain parses domain XML and returns its <domain> element.
func readDomain(text string) (*etree.Element, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(text); err != nil {
		return nil, fmt.Errorf("domain XML: %w", err)
	}
	root := doc.Root()
	if root == nil || root.Tag != "domain" {
		return nil, errors.New("domain XML: no <domain> element")
	}
	return root, nil
}
