package egress

import (
	"crypto/sha256"
	"fmt"
	"html"
	"net/netip"
	"strconv"
	"strings"

	"undervdi/server/domxml"
)

// Ports on the gateway address that the filters let a clone reach, besides
// DNS (53, UDP and TCP) and DHCP: the transparent HTTP and HTTPS proxies and
// the explicit proxy.
const (
	PortHTTP  = 80
	PortHTTPS = 443
)

// Plan is the guest network's layout: the libvirt network, its filter and
// each clone's address. It is pure: the same configuration gives the same
// plan, on every start, so a clone's address and MAC can be read back from
// its domain and nothing about them needs to be stored.
type Plan struct {
	Network   string       // libvirt network name
	Bridge    string       // its bridge device
	Subnet    netip.Prefix // IPv4; the gateway is its first address
	Filter    string       // the nwfilter on every clone's interface
	ProxyPort int          // the explicit proxy's port, where the broker is (Broker)
	first     netip.Addr   // the first clone address
	slots     int
	macPrefix [4]byte // 52:54:00:xx, xx from the network's name
	// broker, if set, is the broker's address on the hosts' backend
	// network: the plan is a host's other than the broker's machine
	// (Routed).
	broker netip.Addr
}

// NewPlan lays out the guest network of pool on subnet. Clones get the
// subnet's addresses from .10 on (after the subnet's own, the gateway's and
// eight spares) to the one before broadcast; each address has one fixed MAC, so DHCP hands the same address to
// the same clone without any lease state.
func NewPlan(pool string, subnet netip.Prefix, bridge string, proxyPort int) (*Plan, error) {
	if !subnet.Addr().Is4() || subnet.Bits() < 16 || subnet.Bits() > 27 {
		return nil, fmt.Errorf("subnet %s: must be an IPv4 range from /16 to /27", subnet)
	}
	subnet = subnet.Masked()
	if bridge == "" {
		bridge = "uvdi-" + pool
		if len(bridge) > 15 {
			bridge = bridge[:15]
		}
	}
	if len(bridge) > 15 || strings.ContainsAny(bridge, " /'\"<>&") {
		return nil, fmt.Errorf("bridge %q: a device name of at most 15 characters", bridge)
	}
	p := &Plan{Network: pool + "-guests", Bridge: bridge, Subnet: subnet, Filter: pool + "-guest", ProxyPort: proxyPort}
	p.first = subnet.Addr()
	for range 10 {
		p.first = p.first.Next()
	}
	p.slots = 1<<(32-subnet.Bits()) - 11 // less .0 to .9 and the broadcast address
	sum := sha256.Sum256([]byte(p.Network))
	p.macPrefix = [4]byte{0x52, 0x54, 0x00, sum[0]}
	return p, nil
}

// Routed returns the plan of the same network on a host other than the
// broker's machine, whose clones reach the broker's DNS and proxies at its
// address broker, on the hosts' backend network. There the libvirt network
// forwards in mode route, without NAT — the broker sees each clone's own
// address, and the broker's machine routes the subnet back through the
// host — and the filter (named apart: its rules differ) holds clones to
// DHCP with the host and DNS and the proxies' ports at broker.
func (p *Plan) Routed(broker netip.Addr) (*Plan, error) {
	if !broker.Is4() || broker.IsUnspecified() || broker.IsLoopback() || p.Subnet.Contains(broker) {
		return nil, fmt.Errorf("the broker's address %s: an IPv4 address of the broker's machine, outside %s", broker, p.Subnet)
	}
	r := *p
	r.broker, r.Filter = broker, p.Filter+"-routed"
	return &r, nil
}

// Gateway is the host's address on the guest network: DHCP, and on the
// broker's machine DNS and the proxies too.
func (p *Plan) Gateway() netip.Addr { return p.Subnet.Addr().Next() }

// Broker is where clones reach the broker's DNS and proxies: the gateway
// on the broker's machine, the broker's backend address from another host.
func (p *Plan) Broker() netip.Addr {
	if p.broker.IsValid() {
		return p.broker
	}
	return p.Gateway()
}

// Slots is the number of clone addresses.
func (p *Plan) Slots() int { return p.slots }

// Addr is the address of slot i.
func (p *Plan) Addr(i int) netip.Addr {
	n := u32(p.first) + uint32(i)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// MAC is the MAC address of slot i: the network's prefix and the address's
// last two bytes.
func (p *Plan) MAC(i int) string {
	a := p.Addr(i).As4()
	m := p.macPrefix
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], a[2], a[3])
}

// Slot returns the slot of a clone address, or -1.
func (p *Plan) Slot(ip string) int {
	a, err := netip.ParseAddr(ip)
	if err != nil || !p.Subnet.Contains(a) {
		return -1
	}
	i := int(u32(a)) - int(u32(p.first))
	if i < 0 || i >= p.slots {
		return -1
	}
	return i
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// NIC is the interface of the clone in slot i.
func (p *Plan) NIC(i int) domxml.NIC {
	params := []domxml.FilterParam{{Name: "IP", Value: p.Addr(i).String()}, {Name: "GATEWAY", Value: p.Gateway().String()}}
	if p.broker.IsValid() {
		params = append(params, domxml.FilterParam{Name: "BROKER", Value: p.broker.String()})
	}
	for _, port := range p.Ports() {
		params = append(params, domxml.FilterParam{Name: "PORT", Value: strconv.Itoa(port)})
	}
	return domxml.NIC{Network: p.Network, MAC: p.MAC(i), Filter: p.Filter, Params: params}
}

// Ports are the TCP ports a clone may reach on the gateway, besides DNS.
func (p *Plan) Ports() []int {
	ports := []int{PortHTTP, PortHTTPS}
	if p.ProxyPort != PortHTTP && p.ProxyPort != PortHTTPS {
		ports = append(ports, p.ProxyPort)
	}
	return ports
}

// Policy is what of the plan a clone's definition carries: a clean clone
// made under another one is replaced.
func (p *Plan) Policy() string {
	s := fmt.Sprintf("net:%s,%s,%s,%s,%v", p.Network, p.Bridge, p.Subnet, p.Filter, p.Ports())
	if p.broker.IsValid() {
		s += ",broker " + p.broker.String()
	}
	return s
}

// NetworkXML is the libvirt network: on the broker's machine an isolated
// bridge (no forwarding, no NAT: nothing leaves it but through the
// broker), on another host a bridge that forwards in mode route, without
// NAT, where the filters let clones reach the broker only (Routed);
// libvirt's own DNS off (the broker's answers instead, and DHCP names it),
// and one fixed DHCP host per clone slot and no dynamic range: a MAC the
// plan did not make gets no address.
func (p *Plan) NetworkXML() string {
	var b strings.Builder
	e := html.EscapeString
	gw := p.Gateway()
	fmt.Fprintf(&b, "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\n  <name>%s</name>\n", e(p.Network))
	if p.broker.IsValid() {
		b.WriteString("  <forward mode='route'/>\n")
	}
	fmt.Fprintf(&b, "  <bridge name='%s' stp='off' delay='0'/>\n  <dns enable='no'/>\n", e(p.Bridge))
	fmt.Fprintf(&b, "  <ip address='%s' prefix='%d'>\n    <dhcp>\n", gw, p.Subnet.Bits())
	for i := range p.slots {
		fmt.Fprintf(&b, "      <host mac='%s' ip='%s'/>\n", p.MAC(i), p.Addr(i))
	}
	b.WriteString("    </dhcp>\n  </ip>\n")
	fmt.Fprintf(&b, "  <dnsmasq:options>\n    <dnsmasq:option value='dhcp-option=option:dns-server,%s'/>\n  </dnsmasq:options>\n</network>\n", p.Broker())
	return b.String()
}

// FilterXML returns the clone's network filters, the chain first: defined
// in this order, the root filter finds the chain it references.
//
// The root filter keeps libvirt's own anti-spoofing (no-mac-spoofing,
// no-ip-spoofing, no-arp-spoofing: the clone sends with its MAC and $IP
// only), lets ARP through, and drops every other layer-2 protocol, IPv6
// among them. The IPv4 chain lets the clone do DHCP with the gateway, and
// talk to the broker on DNS and $PORT — at the gateway, or on another host
// at $BROKER, the broker's backend address; all other IPv4, to or from
// anywhere (other clones, the kiosk LAN, the host's other addresses and
// ports, the internet), is dropped. The rules are stateless ebtables rules
// on the bridge: no br_netfilter, no conntrack.
func (p *Plan) FilterXML() (chain, root string) {
	chainName := p.Filter + "-ipv4"
	broker := "$GATEWAY"
	if p.broker.IsValid() {
		broker = "$BROKER"
	}
	chain = strings.ReplaceAll(fmt.Sprintf(`<filter name='%s' chain='ipv4' priority='-700'>
  <rule action='accept' direction='out' priority='100'><ip srcipaddr='0.0.0.0' dstipaddr='255.255.255.255' protocol='udp' srcportstart='68' dstportstart='67'/></rule>
  <rule action='accept' direction='out' priority='100'><ip dstipaddr='$GATEWAY' protocol='udp' srcportstart='68' dstportstart='67'/></rule>
  <rule action='accept' direction='in' priority='100'><ip srcipaddr='$GATEWAY' protocol='udp' srcportstart='67' dstportstart='68'/></rule>
  <rule action='accept' direction='out' priority='200'><ip dstipaddr='@BROKER' protocol='udp' dstportstart='53'/></rule>
  <rule action='accept' direction='in' priority='200'><ip srcipaddr='@BROKER' protocol='udp' srcportstart='53'/></rule>
  <rule action='accept' direction='out' priority='200'><ip dstipaddr='@BROKER' protocol='tcp' dstportstart='53'/></rule>
  <rule action='accept' direction='in' priority='200'><ip srcipaddr='@BROKER' protocol='tcp' srcportstart='53'/></rule>
  <rule action='accept' direction='out' priority='300'><ip dstipaddr='@BROKER' protocol='tcp' dstportstart='$PORT[@1]'/></rule>
  <rule action='accept' direction='in' priority='300'><ip srcipaddr='@BROKER' protocol='tcp' srcportstart='$PORT[@1]'/></rule>
  <rule action='drop' direction='inout' priority='1000'/>
</filter>
`, html.EscapeString(chainName)), "@BROKER", broker)
	root = fmt.Sprintf(`<filter name='%s' chain='root'>
  <filterref filter='no-mac-spoofing'/>
  <filterref filter='no-ip-spoofing'/>
  <filterref filter='no-arp-spoofing'/>
  <rule action='accept' direction='inout' priority='-500'><mac protocolid='arp'/></rule>
  <filterref filter='%s'/>
  <filterref filter='no-other-l2-traffic'/>
</filter>
`, html.EscapeString(p.Filter), html.EscapeString(chainName))
	return chain, root
}
