// Package kickstart writes the kickstart file (ks.cfg) that installs an
// undervdi KVM server unattended on an EL9 system (AlmaLinux, Rocky Linux,
// RHEL 9) from a small site file, and checks kickstart files against RHEL 9's
// syntax. Kickstart's own commands do the work wherever one exists (disk,
// network and bridge, firewall, services, accounts, SELinux, time); the
// %post section only installs what none can: the broker and its
// configuration, the kiosks' network boot, their systemd units.
package kickstart

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"time"
	_ "time/tzdata"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/ssh"

	"undervdi/server/config"
)

// Site is a site file: one KVM server of a branch.
type Site struct {
	Hostname string   `toml:"hostname"`  // the server's name, "vdi.branch1.example.org"
	TimeZone string   `toml:"time_zone"` // "Europe/Berlin"
	NTP      []string `toml:"ntp"`       // time servers; none: the distribution's pool
	Lang     string   `toml:"lang"`      // "en_US.UTF-8"
	Keyboard string   `toml:"keyboard"`  // "us"
	Source   string   `toml:"source"`    // where the installer gets EL9's packages: "cdrom" (the USB or DVD it booted from) or a repository URL

	Disk     Disk     `toml:"disk"`
	Uplink   Iface    `toml:"uplink"`
	Kiosks   KioskNet `toml:"kiosk_network"`
	AdminNet *Iface   `toml:"admin_network"` // a separate network for the console and SSH; none: the uplink
	Admin    Admin    `toml:"admin"`
	Install  Install  `toml:"install"`

	// Broker is the broker's configuration (vdi-broker.toml), from its
	// defaults; the generator sets where it listens from the networks.
	Broker config.Config `toml:"broker"`
}

// Disk is the one disk the server is installed on; all of it is erased.
type Disk struct {
	Device   string          `toml:"device"`   // "sda", "nvme0n1", "vda"
	Root     config.ByteSize `toml:"root"`     // default 20 GiB
	Swap     config.ByteSize `toml:"swap"`     // default none; any is encrypted with a key made at each boot
	Undervdi config.ByteSize `toml:"undervdi"` // /var/lib/undervdi: golden versions and overlays; 0: the rest of the disk
}

// Iface is a network interface with its address.
type Iface struct {
	Device      string   `toml:"device"`      // "eno1"
	Address     string   `toml:"address"`     // "dhcp" or "192.0.2.10/24"
	Gateway     string   `toml:"gateway"`     // with a static address on the uplink
	Nameservers []string `toml:"nameservers"` // with a static address on the uplink
}

// KioskNet is the interface towards the kiosks.
type KioskNet struct {
	Device  string `toml:"device"`  // the network card on the kiosks' side
	Bridge  string `toml:"bridge"`  // "": the address goes on Device; else a bridge of that name over it
	Address string `toml:"address"` // the server's address there, default 169.254.24.1/24 (the original's)
	PXE     bool   `toml:"pxe"`     // serve network boot to the kiosks (DHCP, TFTP, HTTP)
}

// Admin is the operators' account: SSH keys, sudo; root stays locked.
type Admin struct {
	User    string   `toml:"user"`
	SSHKeys []string `toml:"ssh_keys"`
	// PasswordHash, if set, is a crypt(3) SHA-512 hash ("$6$...", from
	// `openssl passwd -6`) for a console login on the server itself.
	PasswordHash string `toml:"password_hash"`
}

// Install is where %post fetches undervdi's files: an HTTP directory
// (undervdi-pxe -install serves one, as /undervdi/) holding vdi-broker, and for
// network-booted kiosks undervdi-pxe and the kiosk image's pxe/ files.
type Install struct {
	URL          string `toml:"url"`           // "http://192.0.2.5:5910/undervdi/"
	BrokerSHA256 string `toml:"broker_sha256"` // vdi-broker's checksum, checked before it is installed
	PXESHA256    string `toml:"pxe_sha256"`    // undervdi-pxe's, with kiosk_network.pxe
}

// DefaultKioskAddress is the kiosk network's server address in the original.
const DefaultKioskAddress = "169.254.24.1/24"

// Parse reads and validates a site file. Every error names its key.
func Parse(data []byte) (*Site, error) {
	s := &Site{Lang: "en_US.UTF-8", Keyboard: "us", Source: "cdrom", TimeZone: "UTC",
		Disk:   Disk{Root: 20 << 30},
		Uplink: Iface{Address: "dhcp"}, Kiosks: KioskNet{Address: DefaultKioskAddress}, Broker: *config.Default()}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(s)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("unknown key %q", k.String()))
	}
	if err := s.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Load reads the site file at path.
func Load(path string) (*Site, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

var (
	hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
	deviceRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_.:-]{0,14}$`)
	diskRE     = regexp.MustCompile(`^[a-z][a-z0-9]{1,15}$`)
	userRE     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	langRE     = regexp.MustCompile(`^[a-z]{2,3}(_[A-Z]{2})?(\.UTF-8)?$`)
	keyboardRE = regexp.MustCompile(`^[a-z]{2,8}(\([a-z0-9_-]+\))?$`)
	hashRE     = regexp.MustCompile(`^\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$`)
	sha256RE   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks the site and fills in the broker's listen addresses.
func (s *Site) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(s.Hostname) > 253 || !hostnameRE.MatchString(s.Hostname) || !strings.Contains(s.Hostname, ".") {
		bad("hostname", "%q: a fully qualified lower-case name such as vdi.branch1.example.org", s.Hostname)
	}
	if _, err := time.LoadLocation(s.TimeZone); err != nil || s.TimeZone == "Local" || s.TimeZone == "" {
		bad("time_zone", "%q: a time zone such as Europe/Berlin", s.TimeZone)
	}
	for i, n := range s.NTP {
		if !hostnameRE.MatchString(n) {
			if _, err := netip.ParseAddr(n); err != nil {
				bad(fmt.Sprintf("ntp[%d]", i), "%q: a host name or an address", n)
			}
		}
	}
	if !langRE.MatchString(s.Lang) {
		bad("lang", "%q: a locale such as en_US.UTF-8", s.Lang)
	}
	if !keyboardRE.MatchString(s.Keyboard) {
		bad("keyboard", "%q: a layout such as us or de(nodeadkeys)", s.Keyboard)
	}
	if s.Source != "cdrom" && !isHTTP(s.Source) {
		bad("source", "%q: cdrom, or an http(s) URL of an EL9 BaseOS repository", s.Source)
	}

	d := s.Disk
	if !diskRE.MatchString(d.Device) {
		bad("disk.device", "%q: the disk's kernel name, such as sda, vda or nvme0n1 (all of it is erased)", d.Device)
	}
	if d.Root < 8<<30 {
		bad("disk.root", "%v: at least 8 GiB", d.Root)
	}
	if d.Swap > 64<<30 {
		bad("disk.swap", "%v: at most 64 GiB", d.Swap)
	}
	if d.Undervdi != 0 && d.Undervdi < 20<<30 {
		bad("disk.undervdi", "%v: at least 20 GiB for golden versions and overlays (0: the rest of the disk)", d.Undervdi)
	}

	uplink := s.Uplink.check("uplink", true, bad)
	kioskAddr, kioskNet := netip.Prefix{}, netip.Prefix{}
	k := s.Kiosks
	if !deviceRE.MatchString(k.Device) {
		bad("kiosk_network.device", "%q: the network card towards the kiosks, such as eno2", k.Device)
	}
	if k.Bridge != "" && (!deviceRE.MatchString(k.Bridge) || k.Bridge == k.Device) {
		bad("kiosk_network.bridge", "%q: a bridge name such as br-kiosk, not the card's", k.Bridge)
	}
	if p, err := netip.ParsePrefix(k.Address); err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		bad("kiosk_network.address", "%q: the server's IPv4 address with its prefix, such as %s", k.Address, DefaultKioskAddress)
	} else {
		kioskAddr, kioskNet = p, p.Masked()
	}
	if k.Device == s.Uplink.Device {
		bad("kiosk_network.device", "%q is the uplink's too: the kiosks need a network card of their own", k.Device)
	}
	if uplink.IsValid() && kioskNet.IsValid() && uplink.Overlaps(kioskNet) {
		bad("kiosk_network.address", "%s overlaps the uplink's %s", kioskNet, uplink.Masked())
	}
	if guest, err := s.Broker.Plan(); err == nil && guest != nil {
		for key, p := range map[string]netip.Prefix{"uplink.address": uplink, "kiosk_network.address": kioskNet} {
			if p.IsValid() && p.Masked().Overlaps(guest.Subnet) {
				bad(key, "%s overlaps the visitors' VMs' network broker.network.subnet (%s)", p.Masked(), guest.Subnet)
			}
		}
	}
	if a := s.AdminNet; a != nil {
		admin := a.check("admin_network", false, bad)
		if a.Device == s.Uplink.Device || a.Device == k.Device {
			bad("admin_network.device", "%q is the uplink's or the kiosks' card", a.Device)
		}
		if admin.IsValid() && kioskNet.IsValid() && admin.Overlaps(kioskNet) {
			bad("admin_network.address", "%s overlaps the kiosk network %s", admin.Masked(), kioskNet)
		}
	}

	if !userRE.MatchString(s.Admin.User) || s.Admin.User == "root" || s.Admin.User == "vdi-broker" {
		bad("admin.user", "%q: a user name such as vdiadmin (not root)", s.Admin.User)
	}
	if len(s.Admin.SSHKeys) == 0 && s.Admin.PasswordHash == "" {
		bad("admin.ssh_keys", "none: give at least one key (root is locked, and a server without a way in is lost)")
	}
	for i, key := range s.Admin.SSHKeys {
		if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(key)); err != nil || len(bytes.TrimSpace(rest)) > 0 || strings.ContainsAny(key, "\"\n") {
			bad(fmt.Sprintf("admin.ssh_keys[%d]", i), "not one public key as in authorized_keys (ssh-ed25519 AAAA... comment)")
		}
	}
	if h := s.Admin.PasswordHash; h != "" && !hashRE.MatchString(h) {
		bad("admin.password_hash", "a SHA-512 crypt hash ($6$..., from openssl passwd -6), never the password itself")
	}

	in := s.Install
	if !isHTTP(in.URL) || !strings.HasSuffix(in.URL, "/") {
		bad("install.url", "%q: the http(s) directory, ending in /, that serves vdi-broker (and undervdi-pxe and pxe/ for network boot)", in.URL)
	}
	if !sha256RE.MatchString(in.BrokerSHA256) {
		bad("install.broker_sha256", "%q: vdi-broker's SHA-256 (sha256sum vdi-broker), checked before it is installed", in.BrokerSHA256)
	}
	if k.PXE && !sha256RE.MatchString(in.PXESHA256) {
		bad("install.pxe_sha256", "%q: undervdi-pxe's SHA-256, checked before it is installed", in.PXESHA256)
	}

	// The broker listens on the kiosk network for kiosks, on the admin
	// network (or the uplink) for the console.
	if kioskAddr.IsValid() {
		s.applyBroker(kioskAddr.Addr())
	}
	if err := s.Broker.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("broker.%w", e))
		}
	}
	return errors.Join(errs...)
}

// check validates an interface and returns its address, if static.
func (i Iface) check(key string, uplink bool, bad func(string, string, ...any)) netip.Prefix {
	if !deviceRE.MatchString(i.Device) {
		bad(key+".device", "%q: a network card such as eno1", i.Device)
	}
	if i.Address == "dhcp" {
		if i.Gateway != "" || len(i.Nameservers) > 0 {
			bad(key+".gateway", "a gateway and name servers go with a static address")
		}
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(i.Address)
	if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 31 {
		bad(key+".address", "%q: dhcp, or an IPv4 address with its prefix such as 192.0.2.10/24", i.Address)
		return netip.Prefix{}
	}
	if uplink {
		g, err := netip.ParseAddr(i.Gateway)
		if err != nil || !p.Masked().Contains(g) {
			bad(key+".gateway", "%q: the uplink's router, in %s", i.Gateway, p.Masked())
		}
		if len(i.Nameservers) == 0 {
			bad(key+".nameservers", "none: a static uplink needs at least one")
		}
	} else if i.Gateway != "" {
		bad(key+".gateway", "only the uplink has the default route")
	}
	for j, n := range i.Nameservers {
		if _, err := netip.ParseAddr(n); err != nil {
			bad(fmt.Sprintf("%s.nameservers[%d]", key, j), "%q: an address", n)
		}
	}
	return p
}

// applyBroker points the broker's ports at the networks: the kiosks' ports
// on the kiosk address, the console on all (the firewall opens it on the
// admin side only), and the kiosks' default group on the kiosk network.
func (s *Site) applyBroker(kiosk netip.Addr) {
	b := &s.Broker
	host := kiosk.String()
	b.Gateway.PublicHost = host
	for _, l := range []*string{&b.Gateway.Listen, &b.Gateway.TLSListen, &b.Sessions.Listen, &b.Sessions.LegacyListen, &b.Ads.Listen} {
		if *l != "" {
			_, port, _ := net.SplitHostPort(*l)
			*l = net.JoinHostPort(host, port)
		}
	}
}

func isHTTP(u string) bool {
	return (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) &&
		!strings.ContainsFunc(u, func(r rune) bool {
			return r <= ' ' || r == 0x7f || r > 0x7e || strings.ContainsRune("\"'`$\\;<>|&(){}", r)
		})
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
