package pxe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"undervdi/internal/bootlayout"
)

// Mode is the part dnsmasq plays in the kiosk network's DHCP.
type Mode string

const (
	// Isolated: the kiosk network is ours alone and dnsmasq hands out its
	// addresses, as the original system's server did.
	Isolated Mode = "isolated"
	// Proxy: a site's own DHCP server hands out addresses and dnsmasq, as a
	// proxy-DHCP server beside it, answers PXE clients with boot information
	// only.
	Proxy Mode = "proxy"
)

// Defaults of an isolated kiosk network: the original system's.
var (
	DefaultSubnet = netip.MustParsePrefix("169.254.24.0/24")
	DefaultServer = netip.MustParseAddr("169.254.24.1")
)

const (
	// DefaultLeaseTime is how long an isolated network's addresses are lent.
	DefaultLeaseTime = time.Hour
	// DefaultHTTPPort is the boot HTTP server's port, after the broker's
	// 5905-5909 (the same server runs both).
	DefaultHTTPPort = 5910
)

// maxOptionText is the most a DHCP option can carry (without RFC 3396
// long options, which kiosk firmware need not support).
const maxOptionText = 255

// Config describes the kiosk network and what dnsmasq tells its clients.
// Zero fields take the defaults described on each; Validate says which
// fields are wrong, named as the undervdi-pxe flags that set them.
type Config struct {
	Mode Mode // Isolated if empty
	// Interface is the kiosk network's interface (a bridge, say): dnsmasq
	// serves on it alone.
	Interface string
	// Server is this host's address on the kiosk network: the TFTP server
	// and the host in the boot script's URL. Isolated: the subnet's first
	// address if zero. Proxy: required.
	Server netip.Addr
	// Subnet is the kiosk network. Isolated: DefaultSubnet if zero. Proxy:
	// the site's subnet, required.
	Subnet netip.Prefix
	// RangeStart and RangeEnd bound the addresses kiosks get (isolated
	// mode only). If both are zero, the upper half of the subnet (without
	// its broadcast address): the lower half is left to servers and
	// fixed hosts.
	RangeStart, RangeEnd netip.Addr
	// LeaseTime is how long kiosks keep an address (isolated mode only);
	// DefaultLeaseTime if zero.
	LeaseTime time.Duration
	// LeaseFile is where dnsmasq keeps its leases; dnsmasq's default if
	// empty.
	LeaseFile string
	// BootDir is the network-boot directory (see CheckBootDir): the TFTP
	// root, and what the HTTP server serves.
	BootDir string
	// HTTPPort is the port of the HTTP server for BootDir on Server;
	// DefaultHTTPPort if zero.
	HTTPPort int
	// Settings is text for every kiosk in DHCP option
	// bootlayout.DHCPOption, such as `undervdi.server=169.254.24.1`.
	// Isolated mode only.
	Settings string
	// Kiosks are settings for single kiosks (isolated mode only).
	Kiosks []Kiosk
	// LogDHCP makes dnsmasq log every DHCP exchange in detail; without it
	// dnsmasq logs only problems.
	LogDHCP bool
	// Install, if set, also serves a server install (see ServerInstall).
	Install *ServerInstall
}

// Kiosk is the settings text of one kiosk, known by its MAC address. It
// gets the site-wide Settings followed by its own, so where both set the
// same key, the kiosk's comes last.
//
// Addr, if set, is the kiosk's fixed address: dnsmasq reserves it for that
// MAC. A kiosk whose settings carry a token must have one: DHCP is
// readable by anyone on the kiosk LAN, so the token is only worth what the
// binding to an address (the broker's [[kiosk]] address) adds to it.
type Kiosk struct {
	MAC      net.HardwareAddr
	Addr     netip.Addr
	Settings string
}

// carriesToken reports whether settings text sets a kiosk token.
func carriesToken(text string) bool {
	return strings.HasPrefix(text, "undervdi.token=") || strings.Contains(text, " undervdi.token=")
}

// ErrInvalid is wrapped by every FieldError.
var ErrInvalid = errors.New("invalid network-boot configuration")

// FieldError says what is wrong with one setting. Field is the name of the
// undervdi-pxe flag that sets it.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// withDefaults returns c with its zero fields filled in.
func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = Isolated
	}
	if c.HTTPPort == 0 {
		c.HTTPPort = DefaultHTTPPort
	}
	if c.Mode != Isolated {
		return c
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if c.Subnet.Addr().Is4() && c.Subnet.Bits() <= 30 {
		first, last := hostRange(c.Subnet.Masked())
		if !c.Server.IsValid() {
			c.Server = first
		}
		if !c.RangeStart.IsValid() && !c.RangeEnd.IsValid() {
			c.RangeStart = addrAdd(first, int(addrSub(last, first)+1)/2)
			c.RangeEnd = last
		}
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = DefaultLeaseTime
	}
	return c
}

// Validate reports every invalid setting of c (after defaults) as a
// FieldError, joined.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.Mode != Isolated && c.Mode != Proxy {
		// The other checks depend on the mode.
		return errors.Join(fieldErr("mode", "%q is neither %q nor %q", c.Mode, Isolated, Proxy))
	}
	add(checkInterface(c.Interface))
	add(checkPath("boot-dir", c.BootDir, true))
	add(checkPath("lease-file", c.LeaseFile, false))
	if c.HTTPPort < 1 || c.HTTPPort > 65535 {
		add(fieldErr("http", "port %d is out of range", c.HTTPPort))
	}
	subnetOK := false
	switch {
	case !c.Subnet.IsValid():
		add(fieldErr("subnet", "missing: give the kiosk network, such as 192.168.1.0/24"))
	case !c.Subnet.Addr().Is4():
		add(fieldErr("subnet", "%s is not IPv4", c.Subnet))
	case c.Subnet.Bits() < 8 || c.Subnet.Bits() > 30:
		add(fieldErr("subnet", "%s: the prefix length must be 8 to 30", c.Subnet))
	case c.Subnet.Masked() != c.Subnet:
		add(fieldErr("subnet", "%s has host bits set: the network is %s", c.Subnet, c.Subnet.Masked()))
	default:
		subnetOK = true
	}
	if !c.Server.IsValid() {
		// An isolated network's default comes from a valid subnet.
		if c.Mode == Proxy {
			add(fieldErr("server", "missing: give this host's address on the kiosk network"))
		}
	} else if subnetOK {
		add(checkHost("server", c.Server, c.Subnet))
	}

	if c.Mode == Isolated {
		if subnetOK {
			errs = append(errs, c.checkRange()...)
		}
		if c.LeaseTime < 2*time.Minute {
			add(fieldErr("lease-time", "%s is shorter than dnsmasq's minimum of 2m", c.LeaseTime))
		} else if c.LeaseTime%time.Second != 0 {
			add(fieldErr("lease-time", "%s is not a whole number of seconds", c.LeaseTime))
		}
		errs = append(errs, c.checkKiosks()...)
	}
	if c.Install != nil {
		errs = append(errs, c.checkInstall()...)
	}
	if c.Mode == Proxy {
		// In proxy mode dnsmasq answers only PXE clients, with boot
		// information alone (dnsmasq 2.90 sends no other options in proxy
		// replies), so neither kioskd's DHCP client nor its addresses are
		// ours to configure.
		const why = "is for isolated mode only: in proxy mode the site's DHCP server configures the kiosks"
		if c.RangeStart.IsValid() || c.RangeEnd.IsValid() {
			add(fieldErr("range", why))
		}
		if c.LeaseTime != 0 {
			add(fieldErr("lease-time", why))
		}
		if c.Settings != "" {
			add(fieldErr("settings", "%s (give it option %d there)", why, bootlayout.DHCPOption))
		}
		if len(c.Kiosks) > 0 {
			add(fieldErr("kiosk", "%s (give it option %d there)", why, bootlayout.DHCPOption))
		}
	}
	return errors.Join(errs...)
}

func (c Config) checkRange() []error {
	var errs []error
	start, end := c.RangeStart, c.RangeEnd
	if !start.IsValid() || !end.IsValid() {
		return []error{fieldErr("range", "give both ends of the range, or neither")}
	}
	for _, a := range []netip.Addr{start, end} {
		if err := checkHost("range", a, c.Subnet); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if end.Less(start) {
		return []error{fieldErr("range", "%s-%s: the range ends before it starts", start, end)}
	}
	if s := c.Server; s.IsValid() && !s.Less(start) && !end.Less(s) {
		errs = append(errs, fieldErr("range", "%s-%s holds the server's own address %s", start, end, s))
	}
	return errs
}

func (c Config) checkKiosks() []error {
	var errs []error
	siteOK := true
	if c.Settings != "" {
		if err := CheckSettings(c.Settings); err != nil {
			errs = append(errs, fieldErr("settings", "%v", err))
			siteOK = false
		}
	}
	seen := map[string]bool{}
	addrs := map[netip.Addr]string{}
	for _, k := range c.Kiosks {
		field := "kiosk " + k.MAC.String()
		if len(k.MAC) != 6 {
			errs = append(errs, fieldErr("kiosk", "%q is not an Ethernet MAC address", k.MAC.String()))
			continue
		}
		if seen[k.MAC.String()] {
			errs = append(errs, fieldErr(field, "given twice"))
		}
		seen[k.MAC.String()] = true
		if k.Settings == "" {
			errs = append(errs, fieldErr(field, "no settings"))
		} else if err := CheckSettings(k.Settings); err != nil {
			errs = append(errs, fieldErr(field, "%v", err))
		} else if err := CheckSettings(c.kioskText(k)); err != nil && siteOK {
			errs = append(errs, fieldErr(field, "%v (with the site-wide settings before it)", err))
		}
		switch {
		case !k.Addr.IsValid():
			if carriesToken(c.kioskText(k)) {
				errs = append(errs, fieldErr(field, "sends a token, which anyone on the kiosk LAN can read: "+
					"bind the kiosk to a fixed address (-kiosk MAC,ADDRESS=SETTINGS) and give its [[kiosk]] entry at the broker that address"))
			}
		case !isHost(c.Subnet, k.Addr):
			errs = append(errs, fieldErr(field, "address %s is not a host of the kiosk network %s", k.Addr, c.Subnet))
		case k.Addr == c.Server:
			errs = append(errs, fieldErr(field, "address %s is the server's", k.Addr))
		case addrs[k.Addr] != "":
			errs = append(errs, fieldErr(field, "address %s is kiosk %s's already", k.Addr, addrs[k.Addr]))
		default:
			addrs[k.Addr] = k.MAC.String()
		}
	}
	return errs
}

// isHost reports whether a is a host address of the IPv4 network p (not
// its network or broadcast address).
func isHost(p netip.Prefix, a netip.Addr) bool {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 || !p.Contains(a) {
		return false
	}
	first, last := hostRange(p.Masked())
	return a.Compare(first) >= 0 && a.Compare(last) <= 0
}

// kioskText is what one kiosk gets in the option.
func (c Config) kioskText(k Kiosk) string {
	if c.Settings == "" {
		return k.Settings
	}
	return c.Settings + " " + k.Settings
}

// CheckSettings reports why text cannot be sent as kiosk settings: it must
// be printable ASCII (it reads like a kernel command line) and fit in one
// DHCP option. Quotes, backslashes, commas and '#' are allowed: the
// configuration escapes them.
func CheckSettings(text string) error {
	if text == "" {
		return errors.New("empty")
	}
	if len(text) > maxOptionText {
		return fmt.Errorf("%d bytes long, more than the %d a DHCP option holds", len(text), maxOptionText)
	}
	for i := 0; i < len(text); i++ {
		if b := text[i]; b < 0x20 || b > 0x7e {
			return fmt.Errorf("byte %#02x at offset %d is not printable ASCII", b, i)
		}
	}
	return nil
}

// quoteSetting returns text as a dnsmasq quoted string. Inside quotes
// dnsmasq takes commas, '#' and spaces literally and undoes \\ and \";
// CheckSettings has already kept out the bytes quoting cannot carry.
func quoteSetting(text string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(text) + `"`
}

// checkInterface: dnsmasq splits interface= at commas and a Linux name is
// at most 15 bytes of anything but '/', ':' and whitespace.
func checkInterface(name string) error {
	if name == "" {
		return fieldErr("interface", "missing: give the kiosk network's interface")
	}
	if len(name) > 15 || strings.ContainsAny(name, "/:,#\"\\ \t\n\r") || name == "." || name == ".." {
		return fieldErr("interface", "%q is not a usable interface name", name)
	}
	for _, r := range name {
		if r < 0x21 || r > 0x7e {
			return fieldErr("interface", "%q is not a usable interface name", name)
		}
	}
	return nil
}

// checkPath: a path goes into the configuration unquoted, so it must be
// absolute and free of what dnsmasq reads as syntax (commas, '#', quotes,
// whitespace).
func checkPath(field, path string, required bool) error {
	if path == "" {
		if required {
			return fieldErr(field, "missing")
		}
		return nil
	}
	if !filepath.IsAbs(path) {
		return fieldErr(field, "%q is not an absolute path", path)
	}
	for _, r := range path {
		if r <= 0x20 || r == 0x7f || strings.ContainsRune(`,#"\`, r) {
			return fieldErr(field, "%q: dnsmasq cannot take %q in a path", path, r)
		}
	}
	return nil
}

// checkHost reports an address that is outside subnet or is its network or
// broadcast address.
func checkHost(field string, a netip.Addr, subnet netip.Prefix) error {
	if !a.Is4() || !subnet.Contains(a) {
		return fieldErr(field, "%s is not in the subnet %s", a, subnet)
	}
	first, last := hostRange(subnet)
	if a.Less(first) || last.Less(a) {
		return fieldErr(field, "%s is the network or broadcast address of %s", a, subnet)
	}
	return nil
}

// hostRange returns the first and last host addresses of an IPv4 subnet.
func hostRange(p netip.Prefix) (first, last netip.Addr) {
	n := p.Masked().Addr().As4()
	size := uint32(1) << (32 - p.Bits())
	base := uint32(n[0])<<24 | uint32(n[1])<<16 | uint32(n[2])<<8 | uint32(n[3])
	return u32Addr(base + 1), u32Addr(base + size - 2)
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func addrAdd(a netip.Addr, n int) netip.Addr { return u32Addr(addrU32(a) + uint32(n)) }
func addrSub(a, b netip.Addr) uint32         { return addrU32(a) - addrU32(b) }

// netmask returns p's mask in dotted form.
func netmask(p netip.Prefix) string {
	return net.IP(net.CIDRMask(p.Bits(), 32)).String()
}

// leaseTime renders d in dnsmasq's units.
func leaseTime(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return fmt.Sprintf("%d", d/time.Second)
}

// BootURL is the address of the boot script that iPXE clients are sent to.
func (c Config) BootURL() string {
	c = c.withDefaults()
	return fmt.Sprintf("http://%s/%s", net.JoinHostPort(c.Server.String(), fmt.Sprint(c.HTTPPort)), bootlayout.IPXEScript)
}

// Tags dnsmasq sets on clients, for choosing what to boot.
const (
	// tagIPXE: the client is iPXE and can fetch HTTP (option 175, the
	// iPXE encapsulated options, holds feature 19, HTTP). Any other client
	// is first sent our own iPXE, which can.
	tagIPXE = "ipxe"
	// tagBIOS and tagEFI64: the client's architecture (option 93, RFC 4578):
	// 0 is a BIOS PXE ROM, 7 x86-64 UEFI (9 is sent by some firmware for
	// the same).
	tagBIOS  = "bios"
	tagEFI64 = "efi64"
)

// Dnsmasq returns the dnsmasq configuration for c, which must be valid.
//
// An isolated network's configuration looks like this (comments left out):
//
//	port=0
//	interface=br-kiosk
//	bind-dynamic
//	dhcp-range=169.254.24.128,169.254.24.254,255.255.255.0,1h
//	dhcp-authoritative
//	dhcp-option=option:router
//	enable-tftp
//	tftp-root=/srv/undervdi/boot
//	dhcp-no-override
//	quiet-dhcp
//	quiet-tftp
//	dhcp-match=set:ipxe,175,19
//	dhcp-match=set:bios,option:client-arch,0
//	dhcp-match=set:efi64,option:client-arch,7
//	dhcp-match=set:efi64,option:client-arch,9
//	dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,169.254.24.1
//	dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,169.254.24.1
//	dhcp-boot=tag:ipxe,http://169.254.24.1:5910/boot.ipxe,,169.254.24.1
//	dhcp-option-force=224,"undervdi.server=169.254.24.1"
//	dhcp-host=52:54:00:12:34:56,set:kiosk1,169.254.24.11
//	dhcp-option-force=tag:kiosk1,224,"undervdi.server=169.254.24.1 undervdi.kiosk=lobby-1"
//
// In proxy mode the range is `dhcp-range=192.168.1.0,proxy,255.255.255.0`,
// there are no addresses or kiosk settings, and pxe-service lines take the
// place of the dhcp-boot lines for clients that are not iPXE yet.
func (c Config) Dnsmasq() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	c = c.withDefaults()
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	server := c.Server.String()

	line("# undervdi network boot (%s mode), written by undervdi-pxe.", c.Mode)
	line("# No DNS: kiosks reach the server by address.")
	line("port=0")
	line("interface=%s", c.Interface)
	line("bind-dynamic")
	switch c.Mode {
	case Isolated:
		line("# Kiosk addresses. The network is ours alone, so answer kiosks that ask")
		line("# for a lease we no longer know, and give no default route.")
		line("dhcp-range=%s,%s,%s,%s", c.RangeStart, c.RangeEnd, netmask(c.Subnet), leaseTime(c.LeaseTime))
		line("dhcp-authoritative")
		line("dhcp-option=option:router")
	case Proxy:
		line("# Proxy-DHCP: the site's DHCP server hands out the addresses; we answer")
		line("# PXE clients with boot information only.")
		line("dhcp-range=%s,proxy,%s", c.Subnet.Addr(), netmask(c.Subnet))
	}
	if c.LeaseFile != "" {
		line("dhcp-leasefile=%s", c.LeaseFile)
	}
	line("enable-tftp")
	line("tftp-root=%s", c.BootDir)
	line("# Keep the boot file in the BOOTP fields, where every PXE ROM looks.")
	line("dhcp-no-override")
	if c.LogDHCP {
		line("log-dhcp")
	} else {
		line("quiet-dhcp")
		line("quiet-tftp")
	}

	line("")
	line("# iPXE chainloading: PXE firmware gets iPXE by TFTP, and iPXE the boot script.")
	line("dhcp-match=set:%s,175,19", tagIPXE)
	switch c.Mode {
	case Isolated:
		line("dhcp-match=set:%s,option:client-arch,0", tagBIOS)
		line("dhcp-match=set:%s,option:client-arch,7", tagEFI64)
		line("dhcp-match=set:%s,option:client-arch,9", tagEFI64)
		line("dhcp-boot=tag:!%s,tag:%s,%s,,%s", tagIPXE, tagBIOS, UndiLoader, server)
		line("dhcp-boot=tag:!%s,tag:%s,%s,,%s", tagIPXE, tagEFI64, EFILoader, server)
	case Proxy:
		line("# A proxy sends PXE firmware a boot menu; with one entry per architecture")
		line("# it boots without asking. A basename with a dot gets no \".0\" added.")
		line("# Architectures (option 93): 0 BIOS, 7 and 9 x86-64 UEFI.")
		line(`pxe-service=tag:!%s,x86PC,"undervdi",%s`, tagIPXE, UndiLoader)
		line(`pxe-service=tag:!%s,7,"undervdi",%s`, tagIPXE, EFILoader)
		line(`pxe-service=tag:!%s,9,"undervdi",%s`, tagIPXE, EFILoader)
	}
	line("# The last field, the next server, matters to a proxy: iPXE ignores its answer without one.")
	switch {
	case c.installOnly():
		line("# A server install: every client boots the EL9 installer with the kickstart.")
		line("dhcp-boot=tag:%s,%s,,%s", tagIPXE, c.InstallURL(), server)
	case c.Install != nil:
		line("# A server install for the machines named; the others boot the kiosk image.")
		for _, m := range c.Install.MACs {
			line("dhcp-host=%s,set:%s", m, tagInstall)
		}
		line("dhcp-boot=tag:%s,tag:%s,%s,,%s", tagIPXE, tagInstall, c.InstallURL(), server)
		line("dhcp-boot=tag:%s,tag:!%s,%s,,%s", tagIPXE, tagInstall, c.BootURL(), server)
	default:
		line("dhcp-boot=tag:%s,%s,,%s", tagIPXE, c.BootURL(), server)
	}

	if c.Mode == Isolated && (c.Settings != "" || len(c.Kiosks) > 0) {
		line("")
		line("# Kiosk settings, in option %d; a kiosk's own follow the site's.", bootlayout.DHCPOption)
		if c.Settings != "" {
			line("dhcp-option-force=%d,%s", bootlayout.DHCPOption, quoteSetting(c.Settings))
		}
		for i, k := range c.Kiosks {
			tag := fmt.Sprintf("kiosk%d", i+1)
			if k.Addr.IsValid() {
				line("dhcp-host=%s,set:%s,%s", k.MAC, tag, k.Addr)
			} else {
				line("dhcp-host=%s,set:%s", k.MAC, tag)
			}
			line("dhcp-option-force=tag:%s,%d,%s", tag, bootlayout.DHCPOption, quoteSetting(c.kioskText(k)))
		}
	}
	return b.String(), nil
}
