package usbaccess

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/poll"
)

// site is the broker's default filter: no HID, no hubs, storage and more.
const site = "0x03,-1,-1,-1,0|0x09,-1,-1,-1,0|0x08,-1,-1,-1,1|0x06,-1,-1,-1,1|0xff,-1,-1,-1,1|-1,-1,-1,-1,0"

// rig is a sysfs and a /dev with real device nodes, owned by a stranger
// (uid 4242, mode 0640) until granted.
type rig struct {
	t      *testing.T
	s      *Server
	dev    string
	cancel context.CancelFunc
}

// newRig serves the session user uid.
func newRig(t *testing.T, uid int) *rig {
	if os.Getuid() != 0 {
		t.Skip("needs root: it makes device nodes")
	}
	dir := t.TempDir()
	r := &rig{t: t, dev: filepath.Join(dir, "dev")}
	// 1-1: a flash drive; 1-2: a boot keyboard; 1-3: a hub; 1-4: a sound
	// card; 1-5: a touch screen (HID, not boot); 1-6: a scanner with a
	// HID button interface.
	r.device(dir, "1-1", 1, 2, "00", "46f4", "0001", "08")
	r.device(dir, "1-2", 1, 3, "00", "0627", "0001", "03 01 01")
	r.device(dir, "1-3", 1, 4, "09", "0409", "55aa", "09")
	r.device(dir, "1-4", 1, 5, "00", "46f4", "0002", "01")
	r.device(dir, "1-5", 1, 6, "00", "0eef", "0001", "03 00 00")
	r.device(dir, "1-6", 1, 7, "00", "04a9", "1909", "ff", "03 00 00")
	r.s = &Server{Socket: filepath.Join(dir, "run", "usb.sock"), UID: uid, GID: uid,
		Dev: r.dev, Sys: filepath.Join(dir, "sys"), Log: slog.New(slog.DiscardHandler)}
	if err := r.s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.s.Serve(ctx)
	t.Cleanup(cancel)
	return r
}

// device writes a device's sysfs attributes (each interface "08", or
// "03 01 01" for its class, subclass and protocol) and its node.
func (r *rig) device(dir, name string, bus, num int, class, vendor, product string, ifaces ...string) {
	p := filepath.Join(dir, "sys", "bus", "usb", "devices", name)
	attrs := map[string]string{
		"busnum": strconv.Itoa(bus), "devnum": strconv.Itoa(num), "bDeviceClass": class, "idVendor": vendor, "idProduct": product,
		"bcdDevice": "0100",
	}
	for n, iface := range ifaces {
		i := fmt.Sprintf("%s:1.%d/", name, n)
		f := append(strings.Fields(iface), "00", "00")
		attrs[i+"bInterfaceClass"], attrs[i+"bInterfaceSubClass"], attrs[i+"bInterfaceProtocol"] = f[0], f[1], f[2]
	}
	for file, v := range attrs {
		os.MkdirAll(filepath.Dir(filepath.Join(p, file)), 0o755)
		if err := os.WriteFile(filepath.Join(p, file), []byte(v+"\n"), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	node := r.node(bus, num)
	os.MkdirAll(filepath.Dir(node), 0o755)
	if err := syscall.Mknod(node, syscall.S_IFCHR|0o640, 189<<8|num); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Chown(node, 4242, 4242); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) node(bus, num int) string {
	return filepath.Join(r.dev, "bus", "usb", fmt.Sprintf("%03d", bus), fmt.Sprintf("%03d", num))
}

// owner is the node's uid and mode.
func (r *rig) owner(bus, num int) (int, os.FileMode) {
	fi, err := os.Stat(r.node(bus, num))
	if err != nil {
		r.t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid), fi.Mode().Perm()
}

// helper runs Helper as spice-gtk would: the request on stdin, the answer
// read from stdout; close ends it.
type helper struct {
	answer string
	stdin  *io.PipeWriter
	done   chan int
}

func (r *rig) ask(req string) *helper {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &helper{stdin: inW, done: make(chan int, 1)}
	go func() {
		h.done <- Helper(inR, outW, r.s.Socket)
		outW.Close()
	}()
	go inW.Write([]byte(req))
	line, _ := bufio.NewReader(outR).ReadString('\n')
	go io.Copy(io.Discard, outR)
	h.answer = line
	return h
}

// close closes the helper's stdin, as spice-gtk does once it opened the
// device, and returns its exit status.
func (h *helper) close() int {
	h.stdin.Close()
	select {
	case code := <-h.done:
		return code
	case <-time.After(10 * time.Second):
		return -1
	}
}

func TestGrantsWhatTheFilterAllowsDuringASession(t *testing.T) {
	r := newRig(t, os.Getuid())
	if h := r.ask("1 2\n"); !strings.HasPrefix(h.answer, "ERROR ") || !strings.Contains(h.answer, "no session") || h.close() != 1 {
		t.Errorf("before any session: %q, want an error saying there is no session", h.answer)
	}
	if err := r.s.Allow(site, site); err != nil {
		t.Fatal(err)
	}
	h := r.ask("1 2\n")
	if h.answer != "SUCCESS\n" {
		t.Fatalf("the flash drive: %q, want SUCCESS", h.answer)
	}
	if uid, mode := r.owner(1, 2); uid != os.Getuid() || mode != 0o600 {
		t.Errorf("granted node: uid %d mode %v, want the session user's, 0600", uid, mode)
	}
	if code := h.close(); code != 0 {
		t.Errorf("the helper exited %d after a grant, want 0", code)
	}
	poll.Until(t, 5*time.Second, "the node given back once the helper exits", func() bool {
		uid, mode := r.owner(1, 2)
		return uid == 4242 && mode == 0o640
	})

	for _, c := range []struct{ req, want string }{
		{"1 3\n", "input device"},   // a keyboard
		{"1 4\n", "a hub"},          // a hub
		{"1 5\n", "does not allow"}, // a sound card
		{"1 6\n", "input device"},   // a touch screen
		{"1 9\n", "no USB device"},
		{"1\n", "bad request"},
		{"../1 2\n", "bad request"},
	} {
		h := r.ask(c.req)
		if !strings.HasPrefix(h.answer, "ERROR ") || !strings.Contains(h.answer, c.want) {
			t.Errorf("request %q: %q, want an error with %q", c.req, h.answer, c.want)
		}
		if code := h.close(); code != 1 {
			t.Errorf("request %q: the helper exited %d, want 1", c.req, code)
		}
	}
	if h := r.ask("1 7\n"); h.answer != "SUCCESS\n" || h.close() != 0 {
		t.Errorf("a scanner with a HID button: %q, want SUCCESS", h.answer)
	}
	for _, n := range []int{3, 4, 5, 6} {
		if uid, _ := r.owner(1, n); uid != 4242 {
			t.Errorf("refused device 1/%d: node now owned by %d", n, uid)
		}
	}
}

func TestLogoutRevokesEveryGrant(t *testing.T) {
	r := newRig(t, os.Getuid())
	r.s.Allow("-1,-1,-1,-1,1") // anything, but never input devices or hubs
	for _, n := range []string{"1 3\n", "1 4\n", "1 6\n"} {
		if h := r.ask(n); !strings.HasPrefix(h.answer, "ERROR ") || h.close() != 1 {
			t.Errorf("request %q under an allow-all filter: %q, want an error", n, h.answer)
		}
	}
	held := r.ask("1 5\n")
	if held.answer != "SUCCESS\n" {
		t.Fatalf("a sound card under an allow-all filter: %q", held.answer)
	}
	if err := r.s.RevokeAll(); err != nil {
		t.Fatal(err)
	}
	if uid, mode := r.owner(1, 5); uid != 4242 || mode != 0o640 {
		t.Errorf("after logout the node is uid %d mode %v, want its owner's again", uid, mode)
	}
	if h := r.ask("1 2\n"); !strings.Contains(h.answer, "no session") {
		t.Errorf("after logout: %q, want no session", h.answer)
	}
	held.close()
	if uid, _ := r.owner(1, 5); uid != 4242 {
		t.Errorf("the late helper's exit changed the node: uid %d", uid)
	}
}

func TestOnlyTheSessionUserMayAsk(t *testing.T) {
	r := newRig(t, 4243) // the session user is someone else than this test
	r.s.Allow(site)
	h := r.ask("1 2\n")
	if !strings.HasPrefix(h.answer, "ERROR ") {
		t.Errorf("a stranger's request: %q, want an error", h.answer)
	}
	h.close()
	if uid, _ := r.owner(1, 2); uid != 4242 {
		t.Errorf("a stranger's request changed the node: uid %d", uid)
	}
	fi, err := os.Stat(r.s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != r.s.UID || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket: uid %d mode %v, want the session user's, 0600", st.Uid, fi.Mode().Perm())
	}
}

func TestHelperWithoutKioskd(t *testing.T) {
	var out strings.Builder
	if code := Helper(strings.NewReader("1 2\n"), &out, ""); code != 1 || !strings.HasPrefix(out.String(), "ERROR ") {
		t.Errorf("no socket: %d %q", code, out.String())
	}
	out.Reset()
	if code := Helper(strings.NewReader("1 2\n"), &out, filepath.Join(t.TempDir(), "none.sock")); code != 1 || !strings.HasPrefix(out.String(), "ERROR kioskd") {
		t.Errorf("kioskd not listening: %d %q", code, out.String())
	}
}
