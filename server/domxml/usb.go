package domxml

import (
	"fmt"

	"github.com/beevik/etree"

	"undervdi/kioskproto"
)

// setRedirFilter makes rules the domain's <redirfilter>, if it has USB
// redirection at all; a golden's own filter gives way to the site's.
func setRedirFilter(devices *etree.Element, rules []kioskproto.USBRule) {
	if len(rules) == 0 || devices.SelectElement("redirdev") == nil {
		return
	}
	for _, f := range devices.SelectElements("redirfilter") {
		devices.RemoveChild(f)
	}
	filter := devices.CreateElement("redirfilter")
	for _, r := range rules {
		dev := filter.CreateElement("usbdev")
		if r.Class >= 0 {
			dev.CreateAttr("class", fmt.Sprintf("0x%02x", r.Class))
		}
		if r.Vendor >= 0 {
			dev.CreateAttr("vendor", fmt.Sprintf("0x%04x", r.Vendor))
		}
		if r.Product >= 0 {
			dev.CreateAttr("product", fmt.Sprintf("0x%04x", r.Product))
		}
		if r.Version >= 0 { // bcdDevice, 0x0200 for 2.00
			dev.CreateAttr("version", fmt.Sprintf("%x.%02x", r.Version>>8, r.Version&0xff))
		}
		dev.CreateAttr("allow", map[bool]string{true: "yes", false: "no"}[r.Allow])
	}
}
