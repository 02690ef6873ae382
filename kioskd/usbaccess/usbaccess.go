// Package usbaccess lets the visitor's viewer open the USB devices the
// kiosk's filter allows, during a session, and nothing else.
//
// The viewer runs as the unprivileged session user, and USB device nodes
// belong to root. On a desktop, spice-gtk asks a setuid helper
// (spice-client-glib-usb-acl-helper) to grant it a device node after polkit
// said yes; Debian's spice-gtk runs that helper for every device it
// redirects. The kiosk has no polkit and no setuid programs: its helper is
// kioskd itself under the helper's name (Helper), which asks kioskd's
// Server over a unix socket only the session user can reach. The Server
// checks the device against the session's USB filter (and never grants a
// keyboard, mouse, touch screen or hub), hands the node to
// the session user for as long as the helper runs (spice-gtk opens the
// device meanwhile and keeps its file descriptor), then gives it back to
// root. At logout every grant is revoked and nothing more is granted until
// the next session starts.
package usbaccess

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"undervdi/kioskd/logout"
	"undervdi/kioskproto"
)

// HelperName is the name spice-gtk runs its ACL helper by; the kiosk image
// links it to kioskd.
const HelperName = "spice-client-glib-usb-acl-helper"

// EnvSocket names the environment variable that tells the helper where
// kioskd's socket is; the viewer's environment carries it, and spice-gtk
// passes it on.
const EnvSocket = "UNDERVDI_USB_ACCESS"

// Server grants device nodes to the session user.
type Server struct {
	Socket   string // the unix socket, made by Listen
	UID, GID int    // the session user; only it may connect
	Dev      string // devtmpfs: "/dev"
	Sys      string // sysfs: "/sys"
	Log      *slog.Logger

	mu      sync.Mutex
	filters [][]kioskproto.USBRule // the session's filters; nil: no session
	grants  map[string]owner       // node -> its owner before the grant
	ln      net.Listener
}

// owner is who a device node belonged to.
type owner struct {
	uid, gid int
	mode     os.FileMode
}

// Listen makes the socket, readable and writable by the session user only.
func (s *Server) Listen() error {
	if err := os.MkdirAll(filepath.Dir(s.Socket), 0o755); err != nil {
		return err
	}
	os.Remove(s.Socket) // a crashed kioskd's
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		return fmt.Errorf("usb access: %w", err)
	}
	if err := errors.Join(os.Chmod(s.Socket, 0o600), os.Chown(s.Socket, s.UID, s.GID)); err != nil {
		ln.Close()
		return fmt.Errorf("usb access: %w", err)
	}
	s.ln = ln
	return nil
}

// Serve answers helpers until ctx ends.
func (s *Server) Serve(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.ln.Close()
	}()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.Log.Error("usb access: the socket failed; no USB device can be redirected", "err", err)
			}
			return
		}
		go s.serve(c.(*net.UnixConn))
	}
}

// Allow starts a session: devices the filters allow (either of them: the
// viewer's auto-redirect and redirect-on-connect filters) may be granted.
func (s *Server) Allow(filters ...string) error {
	var parsed [][]kioskproto.USBRule
	for _, f := range filters {
		rules, err := kioskproto.ParseUSBFilter(f)
		if err != nil {
			return fmt.Errorf("usb access: %w", err)
		}
		parsed = append(parsed, rules)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.filters = append(parsed, nil) // never nil: a session with empty filters grants nothing, but is one
	return nil
}

// RevokeAll ends the session: every granted node goes back to its owner,
// and nothing is granted until Allow.
func (s *Server) RevokeAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.filters = nil
	var errs []error
	for node := range s.grants {
		errs = append(errs, s.restore(node))
	}
	return errors.Join(errs...)
}

// serve answers one helper: a line "BUS DEVICE", answered "SUCCESS" or
// "ERROR why"; the grant lasts until the helper hangs up.
func (s *Server) serve(c *net.UnixConn) {
	defer c.Close()
	if uid, err := peerUID(c); err != nil || uid != s.UID {
		s.Log.Warn("usb access: refused a connection not from the session user", "uid", uid, "err", err)
		return
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	node, err := s.grant(line)
	if err != nil {
		s.Log.Info("USB device not redirected", "why", err)
		fmt.Fprintf(c, "ERROR %s\n", err)
		return
	}
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.grants[node]; ok {
			if err := s.restore(node); err != nil {
				s.Log.Error("usb access: cannot give a device node back to root", "node", node, "err", err)
			}
		}
	}()
	if _, err := io.WriteString(c, "SUCCESS\n"); err != nil {
		return
	}
	io.Copy(io.Discard, c) // until the helper exits
}

// grant checks the device named by line ("BUS DEVICE") against the
// session's filters and hands its node to the session user.
func (s *Server) grant(line string) (string, error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", fmt.Errorf("bad request %q", strings.TrimSpace(line))
	}
	bus, err1 := strconv.Atoi(f[0])
	dev, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || bus < 1 || bus > 999 || dev < 1 || dev > 999 {
		return "", fmt.Errorf("bad request %q", strings.TrimSpace(line))
	}
	d, name, err := s.find(bus, dev)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filters == nil {
		return "", fmt.Errorf("%s: no session", name)
	}
	allowed := false
	for _, rules := range s.filters {
		allowed = allowed || kioskproto.USBAllowed(rules, d)
	}
	switch {
	case kioskInput(d):
		return "", fmt.Errorf("%s %04x:%04x: an input device; the kiosk's own touch screen and keyboard stay the kiosk's", name, d.Vendor, d.Product)
	case d.Class == 0x09:
		return "", fmt.Errorf("%s %04x:%04x: a hub", name, d.Vendor, d.Product)
	case !allowed:
		return "", fmt.Errorf("%s %04x:%04x: the kiosk's USB filter does not allow it", name, d.Vendor, d.Product)
	}
	node := filepath.Join(s.Dev, "bus", "usb", fmt.Sprintf("%03d", bus), fmt.Sprintf("%03d", dev))
	fi, err := os.Lstat(node)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode()&os.ModeCharDevice == 0 {
		return "", fmt.Errorf("%s is not a device node", node)
	}
	if _, held := s.grants[node]; !held {
		if s.grants == nil {
			s.grants = map[string]owner{}
		}
		s.grants[node] = owner{uid: int(st.Uid), gid: int(st.Gid), mode: fi.Mode().Perm()}
	}
	if err := errors.Join(os.Chown(node, s.UID, s.GID), os.Chmod(node, 0o600)); err != nil {
		s.restore(node)
		return "", err
	}
	s.Log.Info("USB device redirected", "device", name, "id", fmt.Sprintf("%04x:%04x", d.Vendor, d.Product))
	return node, nil
}

// kioskInput reports whether d is a keyboard, mouse or touch screen (HID
// as its class, a boot keyboard or mouse interface, or HID interfaces
// only). Whatever a filter says, they are never handed over: a kiosk whose
// viewer took its own touch screen could not be touched again. A scanner
// with a HID button interface beside its own is not one.
func kioskInput(d kioskproto.USBDevice) bool {
	if d.Class == 0x03 {
		return true
	}
	onlyHID := len(d.Interfaces) > 0
	for _, i := range d.Interfaces {
		if i.Class == 0x03 && i.SubClass == 1 {
			return true
		}
		onlyHID = onlyHID && i.Class == 0x03
	}
	return onlyHID
}

// restore gives node back to its owner; s.mu is held.
func (s *Server) restore(node string) error {
	o := s.grants[node]
	delete(s.grants, node)
	err := errors.Join(os.Chown(node, o.uid, o.gid), os.Chmod(node, o.mode))
	if errors.Is(err, os.ErrNotExist) {
		return nil // unplugged: the kernel removed the node
	}
	return err
}

// find reads, from sysfs, the device at bus and address dev.
func (s *Server) find(bus, dev int) (kioskproto.USBDevice, string, error) {
	usb := &logout.USB{Root: s.Sys}
	devs, err := usb.Devices()
	for _, d := range devs {
		if d.Bus == strconv.Itoa(bus) && d.Address == strconv.Itoa(dev) {
			desc, err := readDevice(usb.Dir(d), d)
			return desc, d.Name, err
		}
	}
	if err != nil {
		return kioskproto.USBDevice{}, "", err
	}
	return kioskproto.USBDevice{}, "", fmt.Errorf("no USB device %03d/%03d", bus, dev)
}

// readDevice is what a filter looks at of dev, whose sysfs directory is
// p: the class and IDs the listing read, its release and its interfaces'
// classes.
func readDevice(p string, dev logout.Device) (kioskproto.USBDevice, error) {
	var d kioskproto.USBDevice
	var errs []error
	for _, a := range []struct {
		hex string
		v   *int
	}{{dev.Class, &d.Class}, {dev.VendorID, &d.Vendor}, {dev.ProductID, &d.Product}} {
		n, err := strconv.ParseInt(a.hex, 16, 32)
		errs = append(errs, err)
		*a.v = int(n)
	}
	var err error
	d.Version, err = readHex(p, "bcdDevice")
	errs = append(errs, err)
	ifaces, _ := filepath.Glob(filepath.Join(p, filepath.Base(p)+":*"))
	for _, i := range ifaces {
		var in kioskproto.USBInterface
		for _, a := range []struct {
			file string
			v    *int
		}{{"bInterfaceClass", &in.Class}, {"bInterfaceSubClass", &in.SubClass}, {"bInterfaceProtocol", &in.Protocol}} {
			n, err := readHex(i, a.file)
			errs = append(errs, err)
			*a.v = n
		}
		d.Interfaces = append(d.Interfaces, in)
	}
	return d, errors.Join(errs...)
}

// readHex reads a sysfs attribute in hex ("0a", "046f").
func readHex(dir, file string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 32)
	return int(n), err
}

// peerUID is the user id of the process at the other end of c.
func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if credErr != nil {
		return -1, credErr
	}
	return int(cred.Uid), nil
}

// Helper is kioskd run by spice-gtk as its ACL helper: it reads "BUS
// DEVICE" on stdin, asks kioskd's socket, writes the answer on stdout, and
// holds the grant until stdin closes. It returns the exit status.
func Helper(stdin io.Reader, stdout io.Writer, socket string) int {
	in := bufio.NewReader(stdin)
	line, err := in.ReadString('\n')
	if err != nil {
		fmt.Fprintf(stdout, "ERROR reading the request: %v\n", err)
		return 1
	}
	if socket == "" {
		fmt.Fprintf(stdout, "ERROR %s is not set: this kiosk grants no USB devices\n", EnvSocket)
		return 1
	}
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		fmt.Fprintf(stdout, "ERROR kioskd: %v\n", err)
		return 1
	}
	defer c.Close()
	if _, err := io.WriteString(c, line); err != nil {
		fmt.Fprintf(stdout, "ERROR kioskd: %v\n", err)
		return 1
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, err := bufio.NewReader(io.LimitReader(c, 1024)).ReadString('\n')
	if err != nil {
		fmt.Fprintf(stdout, "ERROR kioskd did not answer: %v\n", err)
		return 1
	}
	io.WriteString(stdout, answer)
	if answer != "SUCCESS\n" {
		return 1
	}
	io.Copy(io.Discard, in) // spice-gtk closes stdin once it opened the device
	return 0
}
