package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"

	"undervdi/internal/bootlayout"
)

// settingsOption is the DHCP option with kiosk settings (bootlayout.DHCPOption).
var settingsOption = dhcpv4.GenericOptionCode(bootlayout.DHCPOption)

// Lease is what DHCP gave the kiosk.
type Lease struct {
	Interface string
	Address   string
	Settings  string // option 224: undervdi.<key>=<value> words, as on the kernel command line
}

// dhcp brings up the loopback and the wired interfaces and asks DHCP on all
// of them at once (the interface the kiosk booted from first, if BOOTIF
// names it); the first lease configures the kiosk. It returns nil, nil
// when no interface got a lease within timeout.
func dhcp(ctx context.Context, log *slog.Logger, bootif string, timeout time.Duration) (*Lease, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing network interfaces: %w", err)
	}
	var ifs []netlink.Link
	for _, l := range links {
		if l.Type() != "device" || l.Attrs().Name == "lo" || len(l.Attrs().HardwareAddr) != 6 {
			continue
		}
		if bootif != "" && strings.EqualFold(l.Attrs().HardwareAddr.String(), bootif) {
			ifs = append([]netlink.Link{l}, ifs...)
			continue
		}
		ifs = append(ifs, l)
	}
	if len(ifs) == 0 {
		return nil, fmt.Errorf("no network interface (is the network card's driver in the image?)")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cfg := dhclient.Config{
		Timeout: 3 * time.Second, Retries: int(timeout / (3 * time.Second)),
		Modifiers4: []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(settingsOption)},
	}
	for r := range dhclient.SendRequests(ctx, ifs, true, false, cfg, 10*time.Second) {
		if r.Err != nil {
			log.Debug("no DHCP lease", "interface", r.Interface.Attrs().Name, "err", r.Err)
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			log.Warn("cannot configure the DHCP lease", "interface", r.Interface.Attrs().Name, "err", err)
			continue
		}
		l := &Lease{Interface: r.Interface.Attrs().Name}
		if p, ok := r.Lease.(*dhclient.Packet4); ok {
			l.Address = p.Lease().String()
			m, _ := p.Message()
			l.Settings = string(m.Options.Get(settingsOption))
		}
		cancel() // the other interfaces' requests
		return l, nil
	}
	return nil, nil
}

// bootif turns BOOTIF=01-52-54-00-12-34-56 (pxelinux and our iPXE script)
// into a MAC address.
func bootif(cmdline string) string {
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, "BOOTIF="); ok {
			v = strings.TrimPrefix(v, "01-")
			return strings.ReplaceAll(v, "-", ":")
		}
	}
	return ""
}
