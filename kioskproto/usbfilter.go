package kioskproto

import (
	"fmt"
	"strconv"
	"strings"
)

// USBRule is one rule of a USB redirection filter, in spice-gtk's syntax
// class,vendor,product,version,allow: -1 matches anything. The kiosk's
// viewer applies the filter (Viewer.USBAutoRedirect); the broker gives each
// clone's domain the same one, as a <redirfilter>, so QEMU refuses what the
// site does not allow even from a client that ignores the kiosk's filter.
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

// USBDevice is what a USB filter looks at: the device's class, IDs and
// release number (bcdDevice), and the interfaces of its active
// configuration.
type USBDevice struct {
	Class, Vendor, Product, Version int
	Interfaces                      []USBInterface
}

// USBInterface is one interface of a USB device.
type USBInterface struct{ Class, SubClass, Protocol int }

// USBAllowed reports whether rules let d through, decided as usbredir
// decides for spice-gtk and QEMU: the device's own class is checked unless
// it defers to its interfaces (0x00, 0xef), then every interface's class,
// all of which must be allowed. Each check takes the first matching rule;
// no match denies. Non-boot HID interfaces (class 3, subclass 0, protocol
// 0) of a device with other interfaces are skipped, as usbredir skips them,
// unless they are all it has.
func USBAllowed(rules []USBRule, d USBDevice) bool {
	return usbAllowed(rules, d, true)
}

func usbAllowed(rules []USBRule, d USBDevice, skipHID bool) bool {
	if d.Class != 0x00 && d.Class != 0xef && !usbMatch(rules, d.Class, d) {
		return false
	}
	skipped := 0
	for _, i := range d.Interfaces {
		if skipHID && len(d.Interfaces) > 1 && i.Class == 0x03 && i.SubClass == 0 && i.Protocol == 0 {
			skipped++
			continue
		}
		if !usbMatch(rules, i.Class, d) {
			return false
		}
	}
	if len(d.Interfaces) > 0 && skipped == len(d.Interfaces) {
		return usbAllowed(rules, d, false)
	}
	return true
}

// usbMatch is the first rule matching class and d's IDs: whether it allows.
func usbMatch(rules []USBRule, class int, d USBDevice) bool {
	for _, r := range rules {
		if (r.Class == -1 || r.Class == class) && (r.Vendor == -1 || r.Vendor == d.Vendor) &&
			(r.Product == -1 || r.Product == d.Product) && (r.Version == -1 || r.Version == d.Version) {
			return r.Allow
		}
	}
	return false
}
