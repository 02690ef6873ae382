//go:build integration

package imagebuild

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"undervdi/internal/brokertest"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/server/config"
)

// TestKioskUSB proves the mission's USB promise end to end, on real parts:
// the kiosk image booted from its card in QEMU, a session on a pool VM of
// real libvirt, and devices plugged into the kiosk machine. A flash drive
// reaches the VM and its contents are readable there; a keyboard never
// does — by the kiosk's filter, and, on a kiosk whose filter lets
// everything through, because kioskd hands the viewer no input device (the
// kiosk's own touch screen among them). A sound card such a kiosk does
// redirect is refused by the <redirfilter> QEMU enforces for the broker.
// The checks in the guest see what they look for: the VM's own tablet is
// among its input devices and its USB devices.
func TestKioskUSB(t *testing.T) {
	bed := testbed.New(t)
	rb := brokertest.Start(t, bed, 1, func(c *config.Config) {
		c.Gateway.PublicHost = "10.0.2.2" // the host, as the kiosk inside QEMU reaches it
	})
	stick, marker := stickImage(t)

	t.Run("the kiosk's filter", func(t *testing.T) {
		k := bootKiosk(t, rb, "")
		k.session(t)
		vm := sessionVM(t, rb)
		// spice-gtk redirects a device plugged in only while its display
		// has the keyboard focus: once the guest is on screen.
		k.guestShown(t)
		if err := k.vm.PlugUSBStick("stick", stick); err != nil {
			t.Fatal(err)
		}
		waitStick(t, rb, k, vm, marker)
		// The viewer runs as the unprivileged session user: kioskd handed
		// it the stick's device node, as its filter allows (kioskd/usbaccess).
		if consoleLines(k, `msg="USB device redirected"`, "id=46f4:0001") == 0 {
			t.Errorf("kioskd did not say it granted the flash drive; console:\n%s", usbLines(k.vm.Tail(4000)))
		}
		if err := k.vm.PlugUSBKeyboard("kbd"); err != nil {
			t.Fatal(err)
		}
		neverKeyboard(t, rb, vm)

		// After the session the VM is gone, and the kiosk has reset what
		// the visitor plugged in.
		if !rb.Sessions.EndVM(vm, "the visitor is done") {
			t.Fatalf("no session on %s to end", vm)
		}
		if _, err := k.vm.WaitFor(context.Background(), "USB devices reset", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		if line := k.vm.Tail(200); !strings.Contains(line, "46f4:0001") { // QEMU's usb-storage
			t.Errorf("the kiosk's logout did not reset the flash drive; console:\n%s", line)
		}
		poll.Until(t, time.Minute, vm+" destroyed", func() bool {
			_, err := bed.L.DomainLookupByName(vm)
			return err != nil
		})
		k.stop(t)
	})

	// A kiosk whose own filter lets every device through, as a tampered or
	// misconfigured kiosk would. The devices are plugged in before each
	// session: spice-gtk tries those present at connect, one per free
	// redirection channel (the tiny golden has two), so each session has
	// two: the kiosk's own tablet and one more.
	t.Run("a kiosk that lets everything through", func(t *testing.T) {
		rb.WaitFull()
		k := bootKiosk(t, rb, "usb_redirect = -1,-1,-1,-1,1\n")
		// A keyboard: kioskd refuses it and the tablet (both 0627:0001).
		if err := k.vm.PlugUSBKeyboard("kbd"); err != nil {
			t.Fatal(err)
		}
		k.session(t)
		vm := sessionVM(t, rb)
		waitConsole(t, k, 2, `msg="USB device not redirected"`, "0627:0001: an input device")
		neverKeyboard(t, rb, vm)
		rb.Sessions.EndVM(vm, "the visitor is done")
		if _, err := k.vm.WaitFor(context.Background(), "to=idle", 2*time.Minute); err != nil {
			t.Fatal(err)
		}

		// A sound card: kioskd grants it, the VM's <redirfilter> refuses
		// it. The session starts with a touch: the tablet is still the
		// kiosk's.
		if err := errors.Join(k.vm.Unplug("kbd"), k.vm.PlugUSBAudio("snd")); err != nil {
			t.Fatal(err)
		}
		k.session(t)
		vm = sessionVM(t, rb)
		waitConsole(t, k, 1, `msg="USB device redirected"`, "id=46f4:0002")
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
			ids := guestUSB(rb, vm)
			if slices.Contains(ids, "46f4:0002") {
				t.Fatalf("the sound card reached the VM: its USB devices are %v", ids)
			}
			if !slices.Contains(ids, "0627:0001") {
				t.Fatalf("the VM's USB devices %v lack its own tablet (0627:0001): the check sees nothing", ids)
			}
		}
		rb.Sessions.EndVM(vm, "the visitor is done")
		k.stop(t)
	})
}

// waitConsole waits until n lines of the kiosk's console contain all of
// subs.
func waitConsole(t *testing.T, k *kioskRig, n int, subs ...string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); consoleLines(k, subs...) < n; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d console lines with %q; the kiosk's console:\n%s", n, subs, usbLines(k.vm.Tail(4000)))
		}
	}
}

// consoleLines counts the kiosk's console lines that contain every one of
// subs.
func consoleLines(k *kioskRig, subs ...string) int {
	n := 0
	for _, line := range strings.Split(k.vm.Tail(1<<20), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// stickImage writes a flash drive's disk: 8 MiB, a marker in its first
// sector.
func stickImage(t *testing.T) (path, marker string) {
	b := make([]byte, 8)
	rand.Read(b)
	marker = "undervdi-usb-stick-" + hex.EncodeToString(b)
	disk := make([]byte, 8<<20)
	copy(disk, marker)
	path = filepath.Join(t.TempDir(), "stick.img")
	if err := os.WriteFile(path, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, marker
}

// sessionVM is the VM of kiosk k1's linked session.
func sessionVM(t *testing.T, rb *brokertest.Broker) string {
	t.Helper()
	var vm string
	poll.Until(t, 4*time.Minute, "the kiosk's viewer linked to a pool VM", func() bool {
		for _, l := range rb.Sessions.Leases() {
			if l.Kiosk == "k1" && l.Linked != nil {
				vm = l.VM
				return true
			}
		}
		return false
	})
	return vm
}

// waitStick waits until the flash drive is a disk in the VM (/dev/sda: the
// VM's own disk is virtio) and reads the marker from its first sector,
// through the guest agent.
func waitStick(t *testing.T, rb *brokertest.Broker, k *kioskRig, vm, marker string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(90 * time.Second)
	for {
		got, err := readGuestFile(rb, vm, "/dev/sda", 512)
		if err == nil && strings.HasPrefix(got, marker) {
			t.Logf("the flash drive's marker read in %s; USB in the VM:\n%s", vm, usbDevices(t, rb.Bed, vm))
			return
		}
		last = fmt.Sprintf("%q, %v", got, err)
		if time.Now().After(deadline) {
			t.Fatalf("the flash drive never showed up in %s (last read: %s); USB in the VM:\n%s\nthe kiosk's console:\n%s",
				vm, last, usbDevices(t, rb.Bed, vm), usbLines(k.vm.Tail(4000)))
		}
		time.Sleep(2 * time.Second)
	}
}

// usbLines are the lines of a console about USB.
func usbLines(console string) string {
	var out []string
	for _, line := range strings.Split(console, "\n") {
		if l := strings.ToLower(line); (strings.Contains(l, "usb") || strings.Contains(l, "focus") || strings.Contains(l, "redirect") || strings.Contains(l, "error") || strings.Contains(l, "warn")) &&
			!strings.Contains(l, "_callback") && !strings.Contains(l, "usbi_wait") && !strings.Contains(l, "event handling") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// readGuestFile reads the first n bytes of path in the guest.
func readGuestFile(rb *brokertest.Broker, vm, path string, n int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := rb.Host.AgentCommand(ctx, vm, fmt.Sprintf(`{"execute":"guest-file-open","arguments":{"path":%q,"mode":"r"}}`, path))
	if err != nil {
		return "", err
	}
	var open struct{ Return int }
	if err := json.Unmarshal([]byte(out), &open); err != nil {
		return "", fmt.Errorf("guest-file-open: %s", out)
	}
	defer rb.Host.AgentCommand(ctx, vm, fmt.Sprintf(`{"execute":"guest-file-close","arguments":{"handle":%d}}`, open.Return))
	out, err = rb.Host.AgentCommand(ctx, vm, fmt.Sprintf(`{"execute":"guest-file-read","arguments":{"handle":%d,"count":%d}}`, open.Return, n))
	if err != nil {
		return "", err
	}
	var read struct {
		Return struct {
			Buf string `json:"buf-b64"`
		}
	}
	if err := json.Unmarshal([]byte(out), &read); err != nil {
		return "", fmt.Errorf("guest-file-read: %s", out)
	}
	b, err := base64.StdEncoding.DecodeString(read.Return.Buf)
	return string(b), err
}

// usbDevices is QEMU's list of the USB devices attached to the VM.
func usbDevices(t *testing.T, bed *testbed.Bed, vm string) string {
	t.Helper()
	dom, err := bed.L.DomainLookupByName(vm)
	if err != nil {
		return err.Error()
	}
	out, err := bed.L.QEMUDomainMonitorCommand(dom, "info usb", 1) // HMP
	if err != nil {
		return err.Error()
	}
	return out
}

// guestKeyboard reports whether a USB keyboard is an input device of the
// guest (the tiny golden's kernel binds HID), and what the guest lists.
func guestKeyboard(rb *brokertest.Broker, vm string) (bool, string) {
	devs, err := readGuestFile(rb, vm, "/proc/bus/input/devices", 16<<10)
	if err != nil {
		return false, err.Error()
	}
	return strings.Contains(devs, "USB Keyboard"), devs
}

// neverKeyboard watches the VM for a while after a keyboard was plugged
// into the kiosk: it must never reach it. The guest's own tablet shows the
// check reads the VM's input devices.
func neverKeyboard(t *testing.T, rb *brokertest.Broker, vm string) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		kbd, devs := guestKeyboard(rb, vm)
		if kbd {
			t.Fatalf("the keyboard reached the VM; its input devices:\n%s\nits USB:\n%s", devs, usbDevices(t, rb.Bed, vm))
		}
		if !strings.Contains(devs, "QEMU USB Tablet") {
			t.Fatalf("the VM's input devices lack its own tablet: the check sees nothing:\n%s", devs)
		}
	}
}

// guestUSB lists the vendor:product of the USB devices the guest's kernel
// sees on the first ports of its first buses, read from sysfs through the
// guest agent (the tiny guest has no shell to list a directory).
func guestUSB(rb *brokertest.Broker, vm string) []string {
	var ids []string
	for bus := 1; bus <= 4; bus++ {
		for port := 1; port <= 4; port++ {
			dir := fmt.Sprintf("/sys/bus/usb/devices/%d-%d/", bus, port)
			v, err := readGuestFile(rb, vm, dir+"idVendor", 16)
			if err != nil {
				continue
			}
			p, _ := readGuestFile(rb, vm, dir+"idProduct", 16)
			ids = append(ids, strings.TrimSpace(v)+":"+strings.TrimSpace(p))
		}
	}
	return ids
}
