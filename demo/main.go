// Command demo shows undervdi working on this machine, end to end: it
// builds the tiny golden VM, runs the real vdi-broker with a pool of 2
// disposable clones on libvirt, then a real kioskd (on this display, or on
// a private Xvfb) showing ads; it touches the kiosk, a visitor's session
// comes up, the visitor "finishes" (the guest powers off), and the VM is
// destroyed with its disk while the kiosk returns to its slideshow. Then it
// keeps running until Ctrl-C: on a real display, touch the screen yourself.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"undervdi/internal/freeport"
	"undervdi/internal/kioskuser"
	"undervdi/server/siteca"

	"github.com/BurntSushi/toml"
	"github.com/digitalocean/go-libvirt"
	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"
	"github.com/jezek/xgb/xtest"
	xdraw "golang.org/x/image/draw"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"

	"undervdi/internal/testbed"
	"undervdi/internal/xvfb"
	"undervdi/kioskd/screen"
	"undervdi/server/api"
	"undervdi/server/config"
	"undervdi/server/pool"
)

const token = "demo-kiosk-token-0123456789"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	out     io.Writer
	stderr  io.Writer
	bed     *testbed.Bed
	cfg     *config.Config
	display string
	shots   string // where screenshots go
	start   time.Time
}

func (d *demo) say(format string, a ...any) {
	fmt.Fprintf(d.out, "\n==> [+%s] %s\n", time.Since(d.start).Round(time.Second), fmt.Sprintf(format, a...))
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	size := fs.Int("pool", 2, "clean VMs to keep ready")
	once := fs.Bool("once", false, "stop after one kiosk session (for scripts)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{out: stdout, stderr: stderr, shots: filepath.Join(os.TempDir(), "undervdi-demo"), start: time.Now()}
	os.MkdirAll(d.shots, 0o755)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	d.say("building the tiny golden VM (Debian kernel + u-root + qemu-guest-agent) and defining it in libvirt")
	bed, err := testbed.Setup(ctx, "demo", log)
	if err != nil {
		return err
	}
	d.bed = bed
	defer func() {
		d.say("removing the demo's VMs, overlays and golden")
		if err := bed.Close(); err != nil {
			fmt.Fprintln(stderr, "cleanup:", err)
		}
	}()
	bins, err := d.build("vdi-broker", "./server/cmd/vdi-broker", "kioskd", "./kioskd/cmd/kioskd")
	if err != nil {
		return err
	}

	// The broker.
	d.cfg = bed.Config(*size)
	d.cfg.LogLevel = "info"
	d.cfg.EncryptDisks = true // as a site has it: crypto-erased overlays
	ports, err := freeport.Get(6)
	if err != nil {
		return err
	}
	d.cfg.Gateway.Listen = fmt.Sprintf("127.0.0.1:%d", ports[0])
	d.cfg.Gateway.TLSListen = fmt.Sprintf("127.0.0.1:%d", ports[4])
	d.cfg.Sessions.Listen = fmt.Sprintf("127.0.0.1:%d", ports[1])
	d.cfg.Sessions.LegacyListen = fmt.Sprintf("127.0.0.1:%d", ports[2])
	d.cfg.Ads.Listen = fmt.Sprintf("127.0.0.1:%d", ports[3])
	d.cfg.Sessions.AuditLog = filepath.Join(bed.Root, "sessions.jsonl")
	d.cfg.Kiosks = []config.Kiosk{{ID: "demo-kiosk", Address: "127.0.0.1", Token: token}}
	// The console, with a login for this run only.
	d.cfg.API.Listen = fmt.Sprintf("127.0.0.1:%d", ports[5])
	d.cfg.API.Accounts = filepath.Join(bed.Root, "accounts.json")
	password, err := oneTimeLogin(d.cfg.API.Accounts)
	if err != nil {
		return err
	}
	if err := writeAds(d.cfg.Ads.Dir); err != nil {
		return err
	}
	cfgPath := filepath.Join(bed.Root, "vdi-broker.toml")
	if err := writeTOML(cfgPath, d.cfg); err != nil {
		return err
	}
	d.say("starting vdi-broker: pool of %d clones of %s; kiosk protocol on %s, SPICE gateway on %s, ads on %s\n"+
		"    in another shell: %s status -socket %s",
		*size, d.cfg.Golden, d.cfg.Sessions.Listen, d.cfg.Gateway.Listen, d.cfg.Ads.Listen, bins["vdi-broker"], d.cfg.AdminSocket)
	brokerProc, err := start(ctx, stderr, "broker| ", bins["vdi-broker"], "run", "-config", cfgPath)
	if err != nil {
		return err
	}
	defer brokerProc()
	if err := d.watchPool(ctx, func(s *api.Status) bool { return s.Pool.Counts[pool.Clean] == *size }); err != nil {
		return err
	}
	d.say("pool full: %d clean VMs booted and waiting for visitors", *size)
	d.say("the web console: https://localhost:%d/console/\n"+
		"    user demo, password %s (this run's only; the certificate is the demo's site CA, %s)",
		ports[5], password, filepath.Join(d.cfg.SiteCADir(), siteca.CAFile))

	// The kiosk.
	closeDisplay, err := d.openDisplay(ctx)
	if err != nil {
		return err
	}
	defer closeDisplay()
	kioskConf, unmount, err := d.kioskConfig(ports)
	if err != nil {
		return err
	}
	defer unmount()
	d.say("starting kioskd on display %s (it mirrors the broker's ads and shows them)", d.display)
	kioskProc, err := start(ctx, stderr, "kiosk | ", bins["kioskd"], "-config", kioskConf, "-cmdline", "/dev/null")
	if err != nil {
		return err
	}
	defer kioskProc()
	time.Sleep(3 * time.Second)
	d.screenshot("1-slideshow")

	d.say("a visitor touches the screen")
	if err := d.touch(); err != nil {
		return err
	}
	var vm string
	if err := d.watchPool(ctx, func(s *api.Status) bool {
		for _, l := range s.Sessions {
			if l.Linked != nil {
				vm = l.VM
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	d.say("the visitor works in %s, a brand-new VM nobody used before", vm)
	d.screenshot("2-session")

	d.say("the visitor finishes: the guest powers off")
	if _, err := bed.L.QEMUDomainAgentCommand(mustDomain(bed, vm), `{"execute":"guest-shutdown"}`, 10, 0); !testbed.PoweredOff(err) {
		return err
	}
	if err := d.watchPool(ctx, func(s *api.Status) bool {
		for _, v := range s.Pool.VMs {
			if v.Name == vm {
				return false
			}
		}
		return len(s.Sessions) == 0
	}); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	d.screenshot("3-back-to-slideshow")
	audit, _ := os.ReadFile(d.cfg.Sessions.AuditLog)
	d.say("%s was destroyed with its disk; a replacement is booting; the kiosk shows the slideshow again.\n"+
		"    The session's audit line:\n    %s\n    Screenshots: %s",
		vm, strings.TrimSpace(string(audit)), d.shots)
	if *once {
		return nil
	}
	d.say("the demo keeps running; Ctrl-C ends it and removes everything it made")
	<-ctx.Done()
	return nil
}

// build compiles the project's binaries into the bed (name, package, ...).
func (d *demo) build(pairs ...string) (map[string]string, error) {
	out := map[string]string{}
	for i := 0; i < len(pairs); i += 2 {
		bin := filepath.Join(d.bed.Root, pairs[i])
		if b, err := exec.Command("go", "build", "-o", bin, pairs[i+1]).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v: %s", pairs[i+1], err, b)
		}
		out[pairs[i]] = bin
	}
	return out, nil
}

// watchPool prints the broker's status when it changes, until done holds.
func (d *demo) watchPool(ctx context.Context, done func(*api.Status) bool) error {
	last := ""
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := api.FetchStatus(qctx, d.cfg.AdminSocket)
		cancel()
		if err == nil {
			if shape := stateShape(s); shape != last {
				last = shape
				fmt.Fprintln(d.out)
				s.WriteTable(d.out, time.Now())
			}
			if done(s) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// stateShape is what changes in the status that is worth printing again.
func stateShape(s *api.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v %q %q|", s.Pool.Connected, s.Pool.Paused, s.Pool.Degraded)
	for _, v := range s.Pool.VMs {
		fmt.Fprintf(&b, "%s=%s,", v.Name, v.State)
	}
	for _, l := range s.Sessions {
		fmt.Fprintf(&b, "%s:%v,", l.VM, l.Linked != nil)
	}
	return b.String()
}

// openDisplay uses $DISPLAY if an X server answers there, else a private
// Xvfb; the returned function stops the Xvfb.
func (d *demo) openDisplay(ctx context.Context) (func(), error) {
	if disp := os.Getenv("DISPLAY"); disp != "" {
		if c, err := xgb.NewConnDisplay(disp); err == nil {
			c.Close()
			d.display = disp
			return func() {}, nil
		}
	}
	x, err := xvfb.Start(ctx, 1024, 768)
	if err != nil {
		return nil, err
	}
	d.display = x.Display
	return x.Stop, nil
}

// kioskConfig writes kioskd's configuration: this broker, this display, a
// tmpfs for sessions, and an unprivileged session user. The returned
// function unmounts the tmpfs.
func (d *demo) kioskConfig(ports []int) (string, func(), error) {
	session := filepath.Join(d.bed.Root, "kiosk-session")
	os.MkdirAll(session, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", session).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("mount tmpfs: %v: %s", err, out)
	}
	unmount := func() { exec.Command("umount", "-l", session).Run() }
	u, err := kioskuser.Ensure()
	if err != nil {
		unmount()
		return "", nil, err
	}
	userName := u.Username
	path := filepath.Join(d.bed.Root, "kioskd.conf")
	conf := fmt.Sprintf(`server = 127.0.0.1
port = %d
kiosk = demo-kiosk
token = %s
ca = %s
display = %s
ads_url = http://127.0.0.1:%d/ads/
ads_every = 1m
ads_dir = %s
background_dir = %s
session_user = %s
session_dir = %s
usb_sysfs =
usb_access =
logind = no
`, ports[1], token, filepath.Join(d.cfg.SiteCADir(), siteca.CAFile), d.display, ports[3], filepath.Join(d.bed.Root, "kiosk-ads"), d.cfg.Ads.Dir, userName, session)
	return path, unmount, os.WriteFile(path, []byte(conf), 0o644)
}

// touch puts a finger on the middle of the screen (XTest).
func (d *demo) touch() error {
	c, err := xgb.NewConnDisplay(d.display)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := screen.UseExtension(c, "XTEST"); err != nil {
		return err
	}
	s := xproto.Setup(c).DefaultScreen(c)
	x, y := int16(s.WidthInPixels/2), int16(s.HeightInPixels/2)
	xtest.FakeInput(c, xproto.MotionNotify, 0, 0, s.Root, x, y, 0)
	xtest.FakeInput(c, xproto.ButtonPress, 1, 0, s.Root, x, y, 0)
	xtest.FakeInput(c, xproto.ButtonRelease, 1, 0, s.Root, x, y, 0)
	c.Sync()
	return nil
}

func (d *demo) screenshot(name string) {
	c, err := xgb.NewConnDisplay(d.display)
	if err != nil {
		return
	}
	defer c.Close()
	img, err := xvfb.Capture(c, xproto.Drawable(xproto.Setup(c).DefaultScreen(c).Root))
	if err == nil {
		xvfb.SavePNG(img, filepath.Join(d.shots, name+".png"))
	}
}

func mustDomain(bed *testbed.Bed, name string) libvirt.Domain {
	dom, _ := bed.L.DomainLookupByName(name)
	return dom
}

// start runs a binary whose log lines go to w with a prefix; the returned
// function stops it (SIGTERM) and waits.
func start(ctx context.Context, w io.Writer, prefix, bin string, args ...string) (func(), error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = prefixWriter{w: w, prefix: prefix}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}, nil
}

// writeAds makes a few colourful ad images for the kiosk's slideshow.
// oneTimeLogin makes the demo's operator account, with a random password.
func oneTimeLogin(path string) (string, error) {
	b := make([]byte, 12)
	rand.Read(b)
	password := base64.RawURLEncoding.EncodeToString(b)
	var acc api.Accounts
	if err := acc.SetPassword("demo", api.Operator, password); err != nil {
		return "", err
	}
	return password, acc.Write(path)
}

// sampleAds are what the demo's slideshow shows: a library's notices.
var sampleAds = []struct {
	bg          color.RGBA
	title, line string
}{
	{color.RGBA{0x1f, 0x4e, 0x8c, 0xff}, "Open late on Thursdays", "The library stays open until 21:00"},
	{color.RGBA{0xb0, 0x3a, 0x2e, 0xff}, "Scan and print here", "Bring your USB stick: nothing of yours stays here"},
	{color.RGBA{0x2e, 0x7d, 0x4f, 0xff}, "Free Wi-Fi", "Ask at the desk for a guest pass"},
}

// writeAds writes the sample ads: a gradient with a title and a line of
// text, drawn with the Go fonts' fixed bitmap face and scaled up.
func writeAds(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i, ad := range sampleAds {
		const w, h = 960, 540
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		c := ad.bg
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				f := 0.6 + 0.4*float64(x+y)/float64(w+h)
				img.Set(x, y, color.RGBA{uint8(float64(c.R) * f), uint8(float64(c.G) * f), uint8(float64(c.B) * f), 0xff})
			}
		}
		text(img, ad.title, 140, 6)
		text(img, ad.line, 300, 3)
		text(img, "undervdi demo", 470, 2)
		var b bytes.Buffer
		png.Encode(&b, img)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ad-%d.png", i+1)), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// text draws s in white, centred, its baseline at y, scale times the
// bitmap face's size.
func text(img *image.RGBA, s string, y, scale int) {
	face := basicfont.Face7x13
	small := image.NewRGBA(image.Rect(0, 0, font.MeasureString(face, s).Ceil(), 13))
	(&font.Drawer{Dst: small, Src: image.White, Face: face, Dot: fixed.P(0, 10)}).DrawString(s)
	w, h := small.Bounds().Dx()*scale, small.Bounds().Dy()*scale
	x := (img.Bounds().Dx() - w) / 2
	xdraw.NearestNeighbor.Scale(img, image.Rect(x, y-h, x+w, y), small, small.Bounds(), xdraw.Over, nil)
}

func writeTOML(path string, v any) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := toml.NewEncoder(f).Encode(v); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// prefixWriter marks a program's log lines in the demo's output.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	var out strings.Builder
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			out.WriteString(p.prefix + l)
		}
	}
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
