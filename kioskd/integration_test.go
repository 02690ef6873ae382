//go:build integration

package kioskd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/session"
	"undervdi/server/siteca"

	"undervdi/internal/freeport"
	"undervdi/internal/poll"

	"github.com/digitalocean/go-libvirt"
	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"github.com/jezek/xgb/xtest"

	"undervdi/internal/brokertest"
	"undervdi/internal/testbed"
	"undervdi/internal/testlog"
	"undervdi/internal/xvfb"
	"undervdi/kioskd"
	"undervdi/kioskd/config"
	"undervdi/kioskd/screen"
	bconfig "undervdi/server/config"
)

// slideColor is the background image's colour: the slideshow is on screen
// when the screen's centre has it.
var slideColor = color.RGBA{0xf0, 0x80, 0x20, 0xff}

// rig is a kioskd under Xvfb, speaking to a real broker on real libvirt.
type rig struct {
	t      testing.TB
	bed    *testbed.Bed
	broker *brokertest.Broker
	x      *xvfb.Server
	cfg    *config.Config
	uid    int

	sessionViewer int // pid of the current session's viewer

	// What a crashed kioskd left before this one started: a process of
	// the session user and a visitor's file. The start must end both.
	leftover     *exec.Cmd
	leftoverGone chan struct{}
	leftoverFile string

	mu     sync.Mutex
	state  kioskd.State
	states []kioskd.State

	done   chan error // kioskd.Run's end
	exited bool       // a test took it
}

// startKiosk starts kioskd for the broker to come on kioskPort; mutate, if
// given, changes its configuration first.
func startKiosk(t testing.TB, bed *testbed.Bed, kioskPort int, mutate ...func(*config.Config)) *rig {
	r := &rig{t: t, bed: bed}
	var err error
	if r.x, err = xvfb.Start(context.Background(), 800, 600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.x.Stop)
	u := brokertest.KioskUser(t)
	r.uid, _ = strconv.Atoi(u.Uid)

	// The session's home is a tmpfs, as on the boot image.
	sessionDir, err := os.MkdirTemp("/run", "undervdi-e2e-session-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", sessionDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", sessionDir).Run(); os.Remove(sessionDir) })

	bg := t.TempDir()
	writePNG(t, filepath.Join(bg, "background.png"), slideColor)
	cfg := config.Default()
	cfg.Server, cfg.Port, cfg.Kiosk, cfg.Token = "127.0.0.1", kioskPort, "k1", brokertest.Token
	// The kiosk protocol is TLS, against the site CA: made before the
	// broker first runs, as an operator makes it (vdi-broker ca) to build
	// kiosk images.
	site := bed.Config(1).SiteCADir()
	if _, _, err := siteca.Ensure(site); err != nil {
		t.Fatal(err)
	}
	cfg.CA = filepath.Join(site, siteca.CAFile)
	cfg.Display, cfg.SessionUser, cfg.SessionDir = r.x.Display, u.Username, sessionDir
	cfg.AdsURL, cfg.AdsDir, cfg.BackgroundDir = "off", t.TempDir(), bg
	cfg.IdleLimit, cfg.IdleWarning = 25*time.Second, 10*time.Second
	// The host's USB devices stay the host's; each has tests of its own
	// (kioskd/logout, kioskd/usbaccess, image-build's TestKioskUSB).
	cfg.USBSysfs, cfg.USBAccess, cfg.Logind = "", "", "no"
	for _, m := range mutate {
		m(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r.cfg = cfg
	r.plantLeftovers()
	log := testlog.Logger()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	r.done = done
	go func() {
		done <- kioskd.Run(ctx, cfg, log, kioskd.Hooks{OnState: func(s kioskd.State) {
			r.mu.Lock()
			r.state = s
			r.states = append(r.states, s)
			r.mu.Unlock()
		}})
	}()
	t.Cleanup(func() {
		cancel()
		if r.exited {
			return
		}
		if err := <-done; err != nil {
			t.Errorf("kioskd.Run = %v", err)
		}
	})
	return r
}

// plantLeftovers leaves what a kioskd killed mid-session would: a process
// of the session user and a file in the session's tmpfs.
func (r *rig) plantLeftovers() {
	r.t.Helper()
	r.leftoverFile = filepath.Join(r.cfg.SessionDir, "home", "previous-visitor.txt")
	os.MkdirAll(filepath.Dir(r.leftoverFile), 0o700)
	if err := os.WriteFile(r.leftoverFile, []byte("the previous visitor's"), 0o600); err != nil {
		r.t.Fatal(err)
	}
	r.leftover = exec.Command("sleep", "600")
	r.leftover.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.uid)}}
	if err := r.leftover.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.leftoverGone = make(chan struct{})
	go func() { r.leftover.Wait(); close(r.leftoverGone) }()
	r.t.Cleanup(func() { r.leftover.Process.Kill() })
}

// leftoversGone checks the start ended what the last kioskd left.
func (r *rig) leftoversGone() {
	r.t.Helper()
	select {
	case <-r.leftoverGone:
	case <-time.After(10 * time.Second):
		r.t.Errorf("the session user's process (pid %d) left from before outlived kioskd's start", r.leftover.Process.Pid)
	}
	if _, err := os.Stat(r.leftoverFile); !os.IsNotExist(err) {
		r.t.Errorf("the previous visitor's file outlived kioskd's start: %v", err)
	}
}

// writeTestImage writes a 1024x768 photo-like image (gradients, so the
// PNG decoder and scaler work as they would on a real ad).
func writeTestImage(t testing.TB, path string, seed int) {
	img := image.NewRGBA(image.Rect(0, 0, 1024, 768))
	for y := 0; y < 768; y++ {
		for x := 0; x < 1024; x++ {
			img.Set(x, y, color.RGBA{uint8(x + seed*80), uint8(y), uint8(x ^ y), 0xff})
		}
	}
	var b bytes.Buffer
	png.Encode(&b, img)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writePNG(t testing.TB, path string, c color.RGBA) {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, c.A
	}
	var b bytes.Buffer
	png.Encode(&b, img)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitState waits until the kiosk is in state s, or has been since the
// last wait (transitions can be quicker than polling).
func (r *rig) waitState(s kioskd.State, d time.Duration) {
	r.t.Helper()
	poll.Until(r.t, d, "the kiosk to be "+s.String(), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i, st := range r.states {
			if st == s {
				r.states = r.states[i:] // the match is where the kiosk is now
				return true
			}
		}
		return false
	})
}

// touch puts a finger on the screen (XTest), as a visitor does.
func (r *rig) touch() {
	r.t.Helper()
	c, err := xgb.NewConnDisplay(r.x.Display)
	if err != nil {
		r.t.Fatal(err)
	}
	defer c.Close()
	if err := screen.UseExtension(c, "XTEST"); err != nil {
		r.t.Fatal(err)
	}
	root := xproto.Setup(c).DefaultScreen(c).Root
	xtest.FakeInput(c, xproto.MotionNotify, 0, 0, root, 400, 300, 0)
	xtest.FakeInput(c, xproto.ButtonPress, 1, 0, root, 400, 300, 0)
	xtest.FakeInput(c, xproto.ButtonRelease, 1, 0, root, 400, 300, 0)
	c.Sync()
}

func (r *rig) slideshowShown() {
	r.t.Helper()
	poll.Until(r.t, 10*time.Second, "the slideshow on screen", func() bool {
		img, err := r.x.Screenshot()
		if err != nil {
			return false
		}
		c := img.RGBAAt(400, 300)
		return c.R == slideColor.R && c.G == slideColor.G && c.B == slideColor.B
	})
}

func (r *rig) guestShown(name string) {
	r.t.Helper()
	path := filepath.Join(os.TempDir(), "undervdi-kioskd-"+name+".png")
	var why string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		img, err := r.x.Screenshot()
		if err != nil {
			why = err.Error()
			continue
		}
		xvfb.SavePNG(img, path)
		var ok bool
		if ok, why = xvfb.ConsoleFullScreen(img); ok {
			return
		}
	}
	r.t.Fatalf("the guest's console is not full screen after 2 minutes: %s; see %s", why, path)
}

// session starts a session with a touch and returns its VM. The visitor
// leaves a file in their home.
func (r *rig) session(name string) string {
	r.t.Helper()
	r.waitState(kioskd.Idle, time.Minute)
	r.slideshowShown()
	r.touch()
	r.waitState(kioskd.InSession, 2*time.Minute)
	var vm string
	poll.Until(r.t, time.Minute, "the session linked at the broker", func() bool {
		for _, l := range r.broker.Sessions.Leases() {
			if l.Kiosk == "k1" && l.Linked != nil {
				vm = l.VM
				return true
			}
		}
		return false
	})
	r.guestShown(name)
	r.sessionViewer = r.viewerPID()
	marker := filepath.Join(r.cfg.SessionDir, "home", "visitor-data.txt")
	if err := os.WriteFile(marker, []byte("the visitor's"), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return vm
}

// loggedOut checks the session left nothing: the kiosk is back on the
// slideshow, the VM and its disk are gone, the session's viewer and every
// other process of the session user are gone (but for the next visitor's
// viewer, fresh and waiting), and nothing in the session's tmpfs is older
// than the logout.
func (r *rig) loggedOut(vm string) { r.t.Helper(); r.loggedOutTo(vm, kioskd.Idle) }

// loggedOutTo is loggedOut for a kiosk that goes to state after it.
func (r *rig) loggedOutTo(vm string, state kioskd.State) {
	r.t.Helper()
	r.waitState(kioskd.Ending, time.Minute)
	ending := time.Now()
	r.waitState(state, time.Minute)
	r.slideshowShown()
	poll.Until(r.t, time.Minute, vm+" destroyed with its disk", func() bool {
		_, err := r.bed.L.DomainLookupByName(vm)
		overlays, _ := filepath.Glob(filepath.Join(r.bed.OverlayDir, vm+"-*"))
		return libvirt.IsNotFound(err) && len(overlays) == 0
	})
	out, _ := exec.Command("pgrep", "-u", strconv.Itoa(r.uid), "-l").Output()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if pid, _ := strconv.Atoi(f[0]); pid == r.sessionViewer || f[1] != "remote-viewer" {
			r.t.Errorf("a process of the session survived the logout: %s", line)
		}
	}
	filepath.WalkDir(r.cfg.SessionDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == r.cfg.SessionDir {
			return nil
		}
		if d.Name() == "visitor-data.txt" {
			r.t.Errorf("the visitor's file survived the logout: %s", p)
		}
		if st, err := os.Lstat(p); err == nil && st.ModTime().Before(ending.Add(-time.Second)) {
			r.t.Errorf("%s (modified %v) is older than the logout (%v)", p, st.ModTime(), ending)
		}
		return nil
	})
}

func (r *rig) viewerPID() int {
	r.t.Helper()
	out, err := exec.Command("pgrep", "-u", strconv.Itoa(r.uid), "-x", "remote-viewer").Output()
	if err != nil {
		r.t.Fatalf("no remote-viewer of the session user: %v", err)
	}
	pid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	return pid
}

func TestKiosk(t *testing.T) {
	bed := testbed.New(t)
	kioskPort := freeport.Port(t)

	// The kiosk starts first, with the broker down: it says so, and
	// recovers by itself when the broker comes.
	r := startKiosk(t, bed, kioskPort)
	r.waitState(kioskd.Unreachable, time.Minute)
	r.leftoversGone()
	r.slideshowShown()
	r.broker = brokertest.Start(t, bed, 2, func(c *bconfig.Config) {
		c.Sessions.Listen = fmt.Sprintf("0.0.0.0:%d", kioskPort)
		// An idle kiosk's heartbeat, which the fleet view shows, comes
		// within the tests' waits (30 s by default: as long as they).
		c.Sessions.IdleHeartbeat = bconfig.Duration(10 * time.Second)
	})
	r.waitState(kioskd.Idle, time.Minute)

	t.Run("a touch gets a session; a killed viewer ends it", func(t *testing.T) {
		vm := r.session("viewer")
		if err := syscall.Kill(r.viewerPID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		r.loggedOut(vm)
	})

	t.Run("the guest powering off ends the session", func(t *testing.T) {
		r.broker.WaitFull()
		vm := r.session("poweroff")
		if _, err := r.broker.Host.AgentCommand(context.Background(), vm, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
			t.Fatal(err)
		}
		r.loggedOut(vm)
	})

	t.Run("an idle visitor is warned, then logged out", func(t *testing.T) {
		r.broker.WaitFull()
		vm := r.session("idle")
		start := time.Now()
		poll.Until(t, 30*time.Second, "the idle warning over the session", func() bool {
			img, err := r.x.Screenshot()
			if err != nil {
				return false
			}
			// The banner is the bottom seventh: dark with white text,
			// where the guest's console was black.
			white := 0
			for y := 600 - 600/7; y < 600; y++ {
				for x := 0; x < 800; x++ {
					if c := img.RGBAAt(x, y); c.R > 0xe0 && c.G > 0xe0 && c.B > 0xe0 {
						white++
					}
				}
			}
			return white > 100
		})
		if warned := time.Since(start); warned < 5*time.Second {
			t.Errorf("warned %v after the session started; the warning is for the last %v of %v", warned, r.cfg.IdleWarning, r.cfg.IdleLimit)
		}
		r.loggedOut(vm)
	})

	t.Run("the broker lost mid-session, then back", func(t *testing.T) {
		r.broker.WaitFull()
		r.session("broker-lost")
		r.broker.Stop()
		r.waitState(kioskd.Unreachable, time.Minute)
		r.slideshowShown()
		if left, _ := os.ReadDir(r.cfg.SessionDir); len(left) > 0 {
			t.Errorf("files left in the session's tmpfs after the broker was lost: %v", left)
		}
		r.broker.Restart()
		r.waitState(kioskd.Idle, 2*time.Minute)
		r.broker.WaitFull()
		vm := r.session("after-broker-back")
		syscall.Kill(r.viewerPID(), syscall.SIGKILL)
		r.loggedOut(vm)
	})

	t.Run("a logout that cannot complete puts the kiosk out of order", func(t *testing.T) {
		r.broker.WaitFull()
		vm := r.session("out-of-order")
		// Something the wipe cannot remove: a filesystem mounted in the
		// session's home (the wipe never crosses into one).
		stuck := filepath.Join(r.cfg.SessionDir, "home", "stuck")
		os.MkdirAll(stuck, 0o755)
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", stuck).CombinedOutput(); err != nil {
			t.Fatalf("mount: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", "-l", stuck).Run() })
		os.WriteFile(filepath.Join(stuck, "visitor-data.txt"), []byte("the visitor's"), 0o600)
		syscall.Kill(r.viewerPID(), syscall.SIGKILL)
		r.waitState(kioskd.OutOfOrder, time.Minute)
		poll.Until(t, 30*time.Second, "the broker's status showing the kiosk out of order", func() bool {
			for _, k := range r.broker.Sessions.Kiosks() {
				if k.ID == "k1" && strings.Contains(k.Fault, "logout incomplete") {
					return true
				}
			}
			return false
		})
		// Nobody is served: a touch asks for nothing, and no viewer waits
		// for the next visitor.
		leases := func() (n int) {
			for _, l := range r.broker.Sessions.Leases() {
				if l.Kiosk == "k1" {
					n++
				}
			}
			return n
		}
		poll.Until(t, 30*time.Second, "the visitor's lease ended", func() bool { return leases() == 0 })
		r.touch()
		time.Sleep(2 * time.Second)
		if n := leases(); n > 0 {
			t.Errorf("an out-of-order kiosk got a session")
		}
		if out, err := exec.Command("pgrep", "-u", strconv.Itoa(r.uid), "-l").Output(); err == nil {
			t.Errorf("processes of the session user while out of order: %s", out)
		}
		// Once the wipe can complete, the retry brings the kiosk back.
		if out, err := exec.Command("umount", stuck).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v: %s", err, out)
		}
		r.waitState(kioskd.Idle, time.Minute)
		poll.Until(t, 30*time.Second, "the broker's status showing the kiosk in order", func() bool {
			ks := r.broker.Sessions.Kiosks()
			return len(ks) == 1 && ks[0].Fault == ""
		})
		// The broker's fleet view has what the kiosk says of itself, and
		// the out-of-order spell as its latest error.
		poll.Until(t, 30*time.Second, "the kiosk's heartbeat in the fleet", func() bool {
			for _, k := range r.broker.Sessions.Fleet() {
				if k.ID == "k1" && k.Online && k.State == "idle" && k.Screen != "" && k.UptimeSeconds > 0 &&
					strings.Contains(k.LastError, "logout incomplete") {
					return true
				}
			}
			return false
		})
		poll.Until(t, time.Minute, vm+" destroyed", func() bool {
			_, err := r.bed.L.DomainLookupByName(vm)
			return libvirt.IsNotFound(err)
		})
		if _, err := os.Stat(stuck); !os.IsNotExist(err) {
			t.Errorf("the wipe left %s once it could remove it: %v", stuck, err)
		}
	})

	t.Run("an operator's commands: screenshot of the slideshow only, message, out of order, reboot", func(t *testing.T) {
		r.waitState(kioskd.Idle, time.Minute)
		r.slideshowShown()
		sessions := r.broker.Sessions
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pic, err := sessions.Screenshot(ctx, "k1")
		if err != nil {
			t.Fatal(err)
		}
		img, err := jpeg.Decode(bytes.NewReader(pic))
		if err != nil {
			t.Fatalf("the screenshot is no JPEG: %v", err)
		}
		if b := img.Bounds(); b.Dx() != 640 || b.Dy() != 480 {
			t.Errorf("screenshot %v, want 640x480 (the 800x600 screen scaled)", b)
		}
		if cr, cg, cb, _ := img.At(320, 240).RGBA(); !near(cr>>8, slideColor.R) || !near(cg>>8, slideColor.G) || !near(cb>>8, slideColor.B) {
			t.Errorf("the screenshot's centre is %d,%d,%d, not the slideshow's %v", cr>>8, cg>>8, cb>>8, slideColor)
		}

		before, _ := r.x.Screenshot()
		if err := sessions.Command("k1", kioskproto.Command{Action: kioskproto.CmdMessage, Text: "Back at 2 pm", Seconds: 60}); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 30*time.Second, "the message on the slideshow", func() bool {
			after, err := r.x.Screenshot()
			return err == nil && differing(before, after) > 200
		})

		vm := r.session("screenshot")
		if _, err := sessions.Screenshot(ctx, "k1"); !errors.Is(err, session.ErrInSession) {
			t.Errorf("a screenshot during a session: %v, want refused", err)
		}
		// Out of order while the visitor is there: the session goes on,
		// and after it the kiosk serves nobody.
		if err := sessions.SetOutOfOrder("k1", "the card reader is broken"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if len(sessions.Leases()) != 1 {
			t.Errorf("putting the kiosk out of order ended its session")
		}
		syscall.Kill(r.viewerPID(), syscall.SIGKILL)
		r.loggedOutTo(vm, kioskd.Closed)
		r.touch()
		time.Sleep(2 * time.Second)
		if len(sessions.Leases()) != 0 {
			t.Errorf("a kiosk out of order got a session")
		}
		if err := sessions.SetOutOfOrder("k1", ""); err != nil {
			t.Fatal(err)
		}
		r.waitState(kioskd.Idle, time.Minute)

		if err := sessions.Command("k1", kioskproto.Command{Action: kioskproto.CmdReboot, Text: "the test"}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-r.done:
			r.exited = true
			if !errors.Is(err, kioskd.ErrRestart) {
				t.Errorf("kioskd.Run after a reboot command = %v, want ErrRestart (systemd starts it again)", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("kioskd did not restart")
		}
	})
}

// near reports whether a JPEG's channel is close to want.
func near(got uint32, want uint8) bool { return got+24 >= uint32(want) && got <= uint32(want)+24 }

// differing counts the pixels that differ between two screenshots.
func differing(a, b *image.RGBA) int {
	if a == nil || b == nil || a.Bounds() != b.Bounds() {
		return 1 << 30
	}
	n := 0
	for i := 0; i+3 < len(a.Pix); i += 4 {
		if a.Pix[i] != b.Pix[i] || a.Pix[i+1] != b.Pix[i+1] || a.Pix[i+2] != b.Pix[i+2] {
			n++
		}
	}
	return n
}
