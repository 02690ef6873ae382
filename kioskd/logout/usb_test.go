package logout

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Devices of the fake sysfs: a hub with a stick behind it, a scanner, a keyboard.
var (
	hub      = Device{Name: "1-1", VendorID: "05e3", ProductID: "0610", Class: "09", Product: "USB2.0 Hub", Hub: true}
	stick    = Device{Name: "1-1.2", VendorID: "0781", ProductID: "5567", Class: "00", Product: "Cruzer Blade"}
	scanner  = Device{Name: "1-2", VendorID: "04a9", ProductID: "1909", Class: "ff", Product: "CanoScan"}
	keyboard = Device{Name: "2-3", VendorID: "046d", ProductID: "c31c", Class: "00"} // no product string
)

// fakeSysfs is a sysfs tree in a temporary directory.
type fakeSysfs struct {
	t    *testing.T
	root string

	mu     sync.Mutex
	writes []string // "1-1.2/authorized=0"
}

func newSysfs(t *testing.T, devs ...Device) *fakeSysfs {
	s := &fakeSysfs{t: t, root: t.TempDir()}
	for _, bus := range []string{"usb1", "usb2"} {
		s.add(bus, map[string]string{"idVendor": "1d6b", "idProduct": "0002", "bDeviceClass": "09"})
	}
	for _, d := range devs {
		s.plug(d)
	}
	return s
}

// add makes device directory name with attributes, behind a symlink in bus/usb/devices.
func (s *fakeSysfs) add(name string, attrs map[string]string) {
	s.t.Helper()
	real := filepath.Join("devices/pci0000:00/0000:00:14.0", name) // a root hub: usb1
	if bus, _, ok := strings.Cut(name, "-"); ok {
		real = filepath.Join("devices/pci0000:00/0000:00:14.0", "usb"+bus, name)
	}
	if err := os.MkdirAll(filepath.Join(s.root, real), 0o755); err != nil {
		s.t.Fatal(err)
	}
	for k, v := range attrs {
		if err := os.WriteFile(filepath.Join(s.root, real, k), []byte(v+"\n"), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(s.root, "bus/usb/devices"), 0o755)
	if err := os.Symlink(filepath.Join("../../..", real), filepath.Join(s.root, "bus/usb/devices", name)); err != nil {
		s.t.Fatal(err)
	}
}

// plug adds device d and its first interface.
func (s *fakeSysfs) plug(d Device) {
	attrs := map[string]string{"idVendor": d.VendorID, "idProduct": d.ProductID, "bDeviceClass": d.Class, "authorized": "1"}
	if d.Product != "" {
		attrs["product"] = d.Product
	}
	s.add(d.Name, attrs)
	s.add(d.Name+":1.0", map[string]string{"bInterfaceClass": "08"})
}

// unplug removes device d.
func (s *fakeSysfs) unplug(d Device) {
	for _, name := range []string{d.Name, d.Name + ":1.0"} {
		os.Remove(filepath.Join(s.root, "bus/usb/devices", name))
	}
}

// usb returns a USB on the fake tree that records each write, failing
// those to the devices in fail.
func (s *fakeSysfs) usb(fail ...Device) *USB {
	return &USB{Root: s.root, write: func(name string, data []byte) error {
		dev := filepath.Base(filepath.Dir(name))
		s.mu.Lock()
		s.writes = append(s.writes, fmt.Sprintf("%s/%s=%s", dev, filepath.Base(name), data))
		s.mu.Unlock()
		if slices.ContainsFunc(fail, func(d Device) bool { return d.Name == dev }) {
			return errors.New("write error")
		}
		return os.WriteFile(name, data, 0)
	}}
}

// authorized returns the content of d's authorized attribute.
func (s *fakeSysfs) authorized(d Device) string {
	b, err := os.ReadFile(filepath.Join(s.root, "bus/usb/devices", d.Name, "authorized"))
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// resets lists the writes each reset makes.
func resets(devs ...Device) []string {
	var w []string
	for _, d := range devs {
		w = append(w, d.Name+"/authorized=0", d.Name+"/authorized=1")
	}
	return w
}

func TestDevices(t *testing.T) {
	s := newSysfs(t, scanner, hub, keyboard, stick)
	devs, err := s.usb().Devices()
	if want := []Device{hub, stick, scanner, keyboard}; !slices.Equal(devs, want) || err != nil {
		t.Errorf("Devices() = %v, %v, want %v, nil", devs, err, want)
	}
	if _, err := (&USB{Root: t.TempDir()}).Devices(); err == nil {
		t.Errorf("Devices() without bus/usb/devices = nil error, want one")
	}
}

func TestReset(t *testing.T) {
	s := newSysfs(t, hub, stick, scanner, keyboard)
	u := s.usb()
	devs, _ := u.Devices()
	if err := u.Reset(devs); err != nil {
		t.Errorf("Reset(%v) = %v, want nil", devs, err)
	}
	if want := resets(stick, scanner, keyboard); !slices.Equal(s.writes, want) {
		t.Errorf("Reset(%v) wrote %q, want %q", devs, s.writes, want)
	}
	for _, d := range devs {
		if got := s.authorized(d); got != "1" {
			t.Errorf("%v authorized = %q after Reset, want 1", d, got)
		}
	}
}

func TestResetFailure(t *testing.T) {
	s := newSysfs(t, hub, stick, scanner, keyboard)
	u := s.usb(stick)
	err := u.Reset([]Device{stick, scanner})
	if err == nil || !strings.Contains(err.Error(), stick.String()) {
		t.Errorf("Reset(stick, scanner) failing for the stick = %v, want an error naming %v", err, stick)
	}
	if want := append([]string{"1-1.2/authorized=0"}, resets(scanner)...); !slices.Equal(s.writes, want) {
		t.Errorf("Reset(stick, scanner) failing for the stick wrote %q, want %q", s.writes, want)
	}
}

// TestSession resets the devices present during a session: the scanner,
// plugged in at session start, was unplugged; the stick was plugged in
// during the session; port 2-3 has a different keyboard now.
func TestSession(t *testing.T) {
	s := newSysfs(t, hub, scanner, keyboard)
	u := s.usb()
	atStart, err := u.Devices()
	if err != nil {
		t.Fatal(err)
	}
	s.unplug(scanner)
	s.plug(stick)
	s.unplug(keyboard)
	other := Device{Name: "2-3", VendorID: "04d9", ProductID: "1503", Class: "00", Product: "USB Keyboard"}
	s.plug(other)
	now, err := u.Devices()
	if err != nil {
		t.Fatal(err)
	}

	during := Union(atStart, now)
	if want := []Device{hub, stick, scanner, keyboard, other}; !slices.Equal(during, want) {
		t.Errorf("Union(%v, %v) = %v, want %v", atStart, now, during, want)
	}
	if present, want := u.Present(during), []Device{hub, stick, other}; !slices.Equal(present, want) {
		t.Errorf("Present(%v) = %v, want %v", during, present, want)
	}
	if err := u.Reset(during); err != nil {
		t.Errorf("Reset(%v) = %v, want nil", during, err)
	}
	if want := resets(stick, other); !slices.Equal(s.writes, want) {
		t.Errorf("Reset(%v) wrote %q, want %q", during, s.writes, want)
	}
}
