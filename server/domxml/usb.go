package domxml

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// USBRule is one rule of a USB redirection filter, in spice-gtk's syntax
// class,vendor,product,version,allow: -1 matches anything. The kiosk's
// viewer applies the filter; each clone's domain gets it too, as a
// <redirfilter>, so QEMU refuses what the site does not allow even from a
// client that ignores the kiosk's filter.
type USBRule struct {
	Class, Vendor, Product, Version int // -1: any
	Allow                           bool
}

// ParseUSBFilter reads a spice-gtk USB filter: rules separated by '|', each
// class,vendor,product,version,allow with numbers in decimal or 0x-hex, -1
// for any, allow 0 or 1. First match wins.
func ParseUSBFilter(f string) ([]USBRule, error) {
	if f == "" {
		return nil, nil
	}
	var out []USBRule
	for i, rule := range strings.Split(f, "|") {
		fields := strings.Split(rule, ",")
		if len(fields) != 5 {
			return nil, fmt.Errorf("rule %d %q: want class,vendor,product,version,allow", i+1, rule)
		}
		var v [5]int
		for j, field := range fields {
			n, err := strconv.ParseInt(strings.TrimSpace(field), 0, 32)
			max := []int64{0xff, 0xffff, 0xffff, 0xffff, 1}[j]
			if err != nil || n < -1 || n > max || (j == 4 && n < 0) {
				return nil, fmt.Errorf("rule %d %q: field %d %q is not -1 or 0..%#x", i+1, rule, j+1, field, max)
			}
			v[j] = int(n)
		}
		out = append(out, USBRule{Class: v[0], Vendor: v[1], Product: v[2], Version: v[3], Allow: v[4] == 1})
	}
	return out, nil
}

// setRedirFilter makes rules the domain's <redirfilter>, if it has USB
// redirection at all; a golden's own filter gives way to the site's.
func setRedirFilter(devices *etree.Element, rules []USBRule) {
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
