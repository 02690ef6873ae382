package kioskproto

import "testing"

func TestParseUSBFilterRefuses(t *testing.T) {
	for _, bad := range []string{"0x03,-1,-1,-1", "0x100,-1,-1,-1,0", "3,-1,-1,-1,2", "x,-1,-1,-1,0", "-2,-1,-1,-1,1", "3,-1,-1,-1,-1"} {
		if _, err := ParseUSBFilter(bad); err == nil {
			t.Errorf("ParseUSBFilter(%q) = nil error", bad)
		}
	}
}

func TestUSBAllowed(t *testing.T) {
	// The broker's default: no HID, no hubs; storage, imaging, printers,
	// video and vendor-specific devices; nothing else.
	site := "0x03,-1,-1,-1,0|0x09,-1,-1,-1,0|0x08,-1,-1,-1,1|0x06,-1,-1,-1,1|0x07,-1,-1,-1,1|0x0e,-1,-1,-1,1|0xff,-1,-1,-1,1|-1,-1,-1,-1,0"
	stick := USBDevice{Vendor: 0x46f4, Product: 0x0001, Interfaces: []USBInterface{{Class: 0x08, SubClass: 6, Protocol: 0x50}}}
	keyboard := USBDevice{Vendor: 0x0627, Product: 0x0001, Interfaces: []USBInterface{{Class: 0x03, SubClass: 1, Protocol: 1}}}
	hub := USBDevice{Class: 0x09, Interfaces: []USBInterface{{Class: 0x09}}}
	// A scanner with a vendor control interface and a non-boot HID button
	// interface: the HID one is skipped, as usbredir skips it.
	scanner := USBDevice{Class: 0x00, Vendor: 0x04a9, Product: 0x1909, Interfaces: []USBInterface{{Class: 0xff}, {Class: 0x03}}}
	// A device whose only interface is non-boot HID is checked on it.
	button := USBDevice{Vendor: 1, Product: 2, Interfaces: []USBInterface{{Class: 0x03}}}
	// A composite device: storage and a boot keyboard. One denied
	// interface denies the whole device.
	combo := USBDevice{Class: 0xef, Interfaces: []USBInterface{{Class: 0x08}, {Class: 0x03, SubClass: 1, Protocol: 1}}}
	pinned := USBDevice{Class: 0x08, Vendor: 0x0781, Product: 0x5581, Version: 0x0100}
	for _, c := range []struct {
		filter string
		d      USBDevice
		want   bool
	}{
		{site, stick, true},
		{site, keyboard, false},
		{site, hub, false},
		{site, scanner, true},
		{site, button, false},
		{site, combo, false},
		{"-1,-1,-1,-1,1", keyboard, true},
		{"", stick, false}, // no rule matches: denied
		{"0x08,0x0781,0x5581,0x0100,1|-1,-1,-1,-1,0", pinned, true},
		{"0x08,0x0781,0x5581,0x0200,1|-1,-1,-1,-1,0", pinned, false},
		{"0x08,0x0781,-1,-1,1|-1,-1,-1,-1,0", stick, false}, // another vendor
		{"0x08,-1,-1,-1,0|-1,-1,-1,-1,1", stick, false},     // first match wins
	} {
		rules, err := ParseUSBFilter(c.filter)
		if err != nil {
			t.Fatal(err)
		}
		if got := USBAllowed(rules, c.d); got != c.want {
			t.Errorf("USBAllowed(%q, %+v) = %v, want %v", c.filter, c.d, got, c.want)
		}
	}
}
