package kioskd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"undervdi/kioskd/adsync"
	"undervdi/kioskd/appliance"
	"undervdi/kioskd/config"
	"undervdi/kioskd/logout"
	"undervdi/kioskd/screen"
	"undervdi/kioskd/usbaccess"
	"undervdi/kioskproto"
	"undervdi/slideshow"
)

// Main runs kioskd until ctx ends: it starts (and restarts) the X server
// when it owns it, mirrors the ads, and runs the kiosk on the display.
func Main(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return Run(ctx, cfg, log, Hooks{})
}

// Hooks are what Run's caller adds to the kiosk.
type Hooks struct {
	// OnState hears every state the kiosk enters (tests, the appliance's
	// boot figures).
	OnState func(State)
	// Reboot restarts the machine when logouts keep failing (the appliance,
	// whose image is read-only); nil: the kiosk stays out of order and
	// keeps retrying.
	Reboot func(reason string)
	// Restart is an operator's reboot; Run sets it: Reboot where there is
	// one, else kioskd's exit with ErrRestart.
	Restart func(reason string)
	refresh func() // the ads mirror's Refresh; nil: no ads
}

// ErrRestart is Run's error when an operator asked for a reboot of a
// kiosk that is not the appliance: kioskd exits, and systemd starts it
// again (the unit's Restart=on-failure), wiping at its start.
var ErrRestart = errors.New("restarting, as an operator asked")

// Run is Main with hooks.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, hooks Hooks) error {
	ctx, restart := context.WithCancelCause(ctx)
	defer restart(nil)
	if hooks.Reboot != nil {
		hooks.Restart = hooks.Reboot
	} else {
		hooks.Restart = func(reason string) {
			log.Warn("kioskd restarts: an operator asked for a reboot", "reason", reason)
			restart(ErrRestart)
		}
	}
	err := run(ctx, cfg, log, hooks)
	if errors.Is(context.Cause(ctx), ErrRestart) {
		return ErrRestart
	}
	return err
}

func run(ctx context.Context, cfg *config.Config, log *slog.Logger, hooks Hooks) error {
	uid, gid, err := sessionUser(cfg.SessionUser)
	if err != nil {
		return err
	}
	for _, d := range []string{cfg.AdsDir, cfg.SessionDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if !isTmpfs(cfg.SessionDir) {
		log.Warn("the session directory is not a tmpfs: what a visitor writes touches the disk before it is wiped", "dir", cfg.SessionDir)
	}
	if url := cfg.Ads(); url != "" {
		m := &adsync.Mirror{URL: url, Dir: cfg.AdsDir, Log: log}
		go m.Run(ctx, cfg.AdsEvery)
		hooks.refresh = m.Refresh
	}
	var current atomic.Pointer[Kiosk] // for what heartbeats say
	link, err := newLink(cfg, log, func() time.Duration {
		if k := current.Load(); k != nil {
			return k.IdleTime()
		}
		return 0
	}, func() kioskproto.Report {
		r := kioskproto.Report{Uptime: appliance.Uptime(), State: Starting.String()}
		if k := current.Load(); k != nil {
			state, lastError := k.Said()
			r.State, r.LastError, r.Screen = state.String(), lastError, k.ScreenSize
		}
		return r
	})
	if err != nil {
		// A kiosk that cannot verify its broker serves nobody: it shows
		// the slideshow, out of order, and never speaks plaintext instead.
		log.Error("this kiosk cannot reach its broker safely; it stays out of order", "err", err)
		link = deadLink{err}
	}
	var logind *logout.Logind
	if cfg.Logind != "no" {
		if conn, err := dbus.ConnectSystemBus(); err == nil && logout.Available(conn) {
			logind = &logout.Logind{Conn: conn}
		} else if cfg.Logind == "yes" {
			return fmt.Errorf("logind = yes, but logind is not reachable on the system bus: %v", err)
		}
	}
	var usb *logout.USB
	if cfg.USBSysfs != "" {
		usb = &logout.USB{Root: cfg.USBSysfs}
	}
	var access *usbaccess.Server
	if cfg.USBAccess != "" {
		access = &usbaccess.Server{Socket: cfg.USBAccess, UID: uid, GID: gid, Dev: "/dev", Sys: "/sys", Log: log}
		if err := access.Listen(); err != nil {
			log.Error("no USB device can be redirected", "err", err)
			access = nil
		} else {
			go access.Serve(ctx)
		}
	}
	gst := gstRegistry(ctx, filepath.Join(filepath.Dir(cfg.SessionDir), "gstreamer-registry.bin"), log)
	for {
		var x *screen.XServer
		if cfg.XServer != "" {
			if x, err = screen.StartX(ctx, cfg.XServer, cfg.Display); err != nil {
				log.Error("cannot start the X server; retrying", "err", err)
				if sleep(ctx, 5*time.Second) != nil {
					return nil
				}
				continue
			}
		}
		err := runDisplay(ctx, cfg, log, link, &current, hooks, &LocalSession{
			Viewer: cfg.Viewer, Extra: strings.Fields(cfg.ViewerArgs), Dir: cfg.SessionDir, Display: cfg.Display,
			UID: uid, GID: gid, USB: usb, Logind: logind, Log: log, Output: viewerOutput(log), GStreamer: gst,
			USBFilter: cfg.USBRedirect, USBAccess: access,
		})
		if x != nil {
			x.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
		if cfg.XServer == "" {
			return err // not our X server: whoever runs kioskd restarts it
		}
		log.Error("the X server died; restarting it", "err", err)
		if sleep(ctx, time.Second) != nil {
			return nil
		}
	}
}

// runDisplay runs the kiosk on one X server's life.
func runDisplay(ctx context.Context, cfg *config.Config, log *slog.Logger, link Broker, current *atomic.Pointer[Kiosk],
	hooks Hooks, sess *LocalSession) error {
	scr, err := screen.Open(cfg.Display, log)
	if err != nil {
		return err
	}
	defer scr.Close()
	show, err := slideshow.Open(cfg.Display, slideshow.Config{
		Dirs: []string{cfg.AdsDir, cfg.BackgroundDir}, Interval: cfg.SlideInterval, Log: log,
		NoKeys: !strings.Contains(cfg.Touch, "key"), NoButtons: !strings.Contains(cfg.Touch, "button"),
	})
	if err != nil {
		return err
	}
	defer show.Close()
	sess.Screen = scr
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-scr.Done():
			cancel()
		case <-dctx.Done():
		}
	}()
	go show.Run(dctx)
	limit := cfg.IdleLimit
	if limit == 0 {
		limit = 5 * time.Minute // the broker's welcome may say otherwise
	}
	w, h := scr.Size()
	k := &Kiosk{Display: show, Screen: scr, Broker: link, Session: sess, Log: log,
		IdleLimit: limit, IdleLimitFixed: cfg.IdleLimit != 0, IdleWarning: cfg.IdleWarning, Reboot: hooks.Reboot,
		ScreenSize: fmt.Sprintf("%dx%d", w, h), Capture: scr.Screenshot, RefreshAds: hooks.refresh, Restart: hooks.Restart}
	k.OnState(hooks.OnState)
	current.Store(k)
	k.Run(dctx)
	select {
	case <-scr.Done():
		return fmt.Errorf("lost the X display %s", cfg.Display)
	default:
		return ctx.Err()
	}
}

func newLink(cfg *config.Config, log *slog.Logger, idle func() time.Duration, report func() kioskproto.Report) (Broker, error) {
	if cfg.Legacy() {
		log.Info("no kiosk id and token: speaking the original signal port", "server", cfg.Server, "port", cfg.LegacyPort)
		return &LegacyLink{Server: cfg.Server, SignalPort: cfg.LegacyPort, SpicePort: cfg.SpicePort, Log: log, Retry: 10 * time.Second}, nil
	}
	d := kioskproto.Dialer{Addr: cfg.BrokerAddr(), Idle: idle, Report: report, Commands: true, Image: appliance.ImageVersion()}
	link := &ProtocolLink{Dialer: d, ID: cfg.Kiosk, Token: cfg.Token, Software: "kioskd", Log: log, Server: cfg.Server}
	if !cfg.TLS {
		log.Warn("the kiosk protocol is in plaintext (tls = false): the token and the session's messages cross the LAN in clear")
		return link, nil
	}
	tc := &tls.Config{ServerName: cfg.BrokerName, MinVersion: tls.VersionTLS12}
	caFile := cfg.CA
	if caFile == "system" {
		caFile = systemCAs
	} else {
		tc.RootCAs = x509.NewCertPool()
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("ca: %w (the broker's CA: vdi-broker ca prints it, image-build -ca puts it on the boot media)", err)
	}
	if tc.RootCAs != nil && !tc.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca: no certificate in %s", cfg.CA)
	}
	link.Dialer.TLS, link.CA = tc, pem
	return link, nil
}

// systemCAs is Debian's bundle of the system's CAs, which the viewer gets
// when ca = system.
const systemCAs = "/etc/ssl/certs/ca-certificates.crt"

// deadLink is the broker link of a kiosk that cannot verify its broker
// (no CA): it never connects, so the kiosk shows the slideshow, unavailable.
type deadLink struct{ err error }

func (d deadLink) Run(ctx context.Context, events chan<- Event) {
	select {
	case events <- BrokerDown{Err: d.err}:
	case <-ctx.Done():
	}
	<-ctx.Done()
}

func (d deadLink) Request(time.Time) error         { return d.err }
func (deadLink) End(string)                        {}
func (deadLink) Fault(string)                      {}
func (deadLink) Screenshot(string, []byte, string) {}

// sessionUser resolves the session user: a name or a numeric uid. Visitors
// never run as root; "" is kioskd's own user, allowed only when kioskd is
// not root (then no process is killed by uid at logout: they would be
// kioskd's own).
func sessionUser(spec string) (uid, gid int, err error) {
	if spec == "" {
		if os.Geteuid() == 0 {
			return 0, 0, fmt.Errorf("session_user is empty and kioskd runs as root: visitors must not run as root; "+
				"name a dedicated unprivileged user (the default is %q)", config.DefaultSessionUser)
		}
		return 0, 0, nil
	}
	if n, err := strconv.Atoi(spec); err == nil {
		if n <= 0 {
			return 0, 0, fmt.Errorf("session_user = %d: visitors must not run as root", n)
		}
		return ownIsZero(n), ownIsZero(n), nil
	}
	u, err := user.Lookup(spec)
	if err != nil {
		return 0, 0, fmt.Errorf("session_user %q: %w: create it (useradd --system --no-create-home %s) or name another unprivileged user", spec, err, spec)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if uid == 0 {
		return 0, 0, fmt.Errorf("session_user %q is root: visitors must not run as root", spec)
	}
	if ownIsZero(uid) == 0 {
		return 0, 0, nil
	}
	return uid, gid, nil
}

// ownIsZero maps kioskd's own uid to 0, which LocalSession takes as "run
// as kioskd, kill by process group only".
func ownIsZero(uid int) int {
	if uid == os.Geteuid() {
		return 0
	}
	return uid
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// viewerOutput passes the viewer's messages to the log at debug level.
func viewerOutput(log *slog.Logger) io.Writer {
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		return nil
	}
	return os.Stderr
}

// gstRegistry builds GStreamer's plugin registry once, as root, outside the
// session's tmpfs, and returns its path ("" if it cannot). Without it every
// session starts with a wiped cache, and remote-viewer spends a second and
// more scanning plugins before it shows anything. Sessions read it and
// cannot change it, so no visitor leaves anything there for the next.
func gstRegistry(ctx context.Context, path string, log *slog.Logger) string {
	tool, err := exec.LookPath("gst-inspect-1.0")
	if err != nil {
		log.Info("no gst-inspect-1.0: remote-viewer will scan GStreamer's plugins at every session (slower start)")
		return ""
	}
	cmd := exec.CommandContext(ctx, tool)
	cmd.Env = append(os.Environ(), "GST_REGISTRY="+path)
	if err := cmd.Run(); err != nil {
		log.Warn("cannot build GStreamer's plugin registry", "err", err)
		return ""
	}
	if err := os.Chmod(path, 0o644); err != nil {
		log.Warn("cannot share GStreamer's plugin registry with the session user", "err", err)
		return ""
	}
	return path
}
