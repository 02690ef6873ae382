package logout

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

// USB finds and resets the kiosk's USB devices through sysfs.
type USB struct {
	Root string // sysfs: "/sys"

	// write writes an attribute; nil: os.WriteFile. Tests record writes with it.
	write func(name string, data []byte) error
}

// A Device is a USB device (not an interface, not a root hub).
type Device struct {
	Name      string // sysfs name: "1-1.2"
	VendorID  string // idVendor: "0781"
	ProductID string // idProduct: "5567"
	Class     string // bDeviceClass in hex: "00" (see interfaces), "09" (hub)
	Product   string // product string, if the device has one
	Hub       bool   // Class "09"
	// Bus and Address (busnum, devnum: "1", "4") name its node,
	// /dev/bus/usb/001/004.
	Bus, Address string
}

func (d Device) String() string {
	s := fmt.Sprintf("%s %s:%s", d.Name, d.VendorID, d.ProductID)
	if d.Product != "" {
		s += " " + strings.ReplaceAll(d.Product, "\n", " ")
	}
	return s
}

// same reports whether d and e are one device: same port, same IDs.
func (d Device) same(e Device) bool {
	return d.Name == e.Name && d.VendorID == e.VendorID && d.ProductID == e.ProductID
}

// deviceName matches devices ("1-1", "1-1.2.4"), not root hubs ("usb1") or
// interfaces ("1-1:1.0").
var deviceName = regexp.MustCompile(`^[0-9]+-[0-9]+(\.[0-9]+)*$`)

func (u *USB) dir() string { return filepath.Join(u.Root, "bus", "usb", "devices") }

// Dir is device d's sysfs directory.
func (u *USB) Dir(d Device) string { return filepath.Join(u.dir(), d.Name) }

// Devices lists the USB devices present now, by name. kioskd lists them at
// session start too, to pass to Union at logout.
func (u *USB) Devices() ([]Device, error) {
	entries, err := os.ReadDir(u.dir())
	if err != nil {
		return nil, fmt.Errorf("logout: listing USB devices: %w", err)
	}
	var devs []Device
	var errs []error
	for _, e := range entries {
		if !deviceName.MatchString(e.Name()) {
			continue
		}
		d, err := u.device(e.Name())
		if errors.Is(err, fs.ErrNotExist) { // unplugged meanwhile
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		devs = append(devs, d)
	}
	if err := errors.Join(errs...); err != nil {
		return devs, fmt.Errorf("logout: listing USB devices: %w", err)
	}
	return devs, nil
}

// device reads the attributes of USB device name.
func (u *USB) device(name string) (Device, error) {
	d := Device{Name: name}
	for _, a := range []struct {
		file string
		v    *string
	}{{"idVendor", &d.VendorID}, {"idProduct", &d.ProductID}, {"bDeviceClass", &d.Class}, {"product", &d.Product},
		{"busnum", &d.Bus}, {"devnum", &d.Address}} {
		b, err := os.ReadFile(filepath.Join(u.dir(), name, a.file))
		if (a.file == "product" || a.file == "busnum" || a.file == "devnum") && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return d, err
		}
		*a.v = strings.TrimSpace(string(b))
	}
	d.Hub = d.Class == "09"
	return d, nil
}

// Union returns the devices in a or b, each once (by name, vendor and
// product), ordered by name: at logout, the devices seen at session start
// and those present now.
func Union(a, b []Device) []Device {
	var all []Device
	for _, d := range slices.Concat(a, b) {
		if !slices.ContainsFunc(all, d.same) {
			all = append(all, d)
		}
	}
	slices.SortStableFunc(all, func(x, y Device) int { return cmp.Compare(x.Name, y.Name) })
	return all
}

// Present returns those of devs still present: same name, same IDs.
func (u *USB) Present(devs []Device) []Device {
	var present []Device
	for _, d := range devs {
		if now, err := u.device(d.Name); err == nil && d.same(now) {
			present = append(present, d)
		}
	}
	return present
}

// Reset resets every device of devs except hubs by writing "0" and then
// "1" to its authorized attribute: the kernel unbinds all its drivers and
// enumerates it afresh, so nothing stays claimed. It skips devices no
// longer present and returns the failures.
func (u *USB) Reset(devs []Device) error {
	write := u.write
	if write == nil {
		write = func(name string, data []byte) error { return os.WriteFile(name, data, 0) }
	}
	var errs []error
	for _, d := range u.Present(devs) {
		if d.Hub {
			continue
		}
		authorized := filepath.Join(u.dir(), d.Name, "authorized")
		err := write(authorized, []byte("0"))
		if err == nil {
			err = write(authorized, []byte("1"))
		}
		if err != nil && !unplugged(err) {
			errs = append(errs, fmt.Errorf("logout: resetting USB device %v: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// unplugged reports whether err says the device has gone.
func unplugged(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}
