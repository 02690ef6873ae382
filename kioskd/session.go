package kioskd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"undervdi/kioskd/logout"
	"undervdi/kioskd/usbaccess"
	"undervdi/kioskd/viewer"
	"undervdi/kioskproto"
)

// LocalSession runs a visitor's session on this kiosk: remote-viewer as the
// session user, with its home and runtime files in the session tmpfs, and
// the forced logout that undoes it all.
type LocalSession struct {
	Viewer  string
	Extra   []string // more remote-viewer arguments
	Dir     string   // the session tmpfs, wiped at every logout
	Display string
	// UID and GID the viewer runs as; 0 runs it as kioskd's own user, and
	// then only its process group is killed at logout.
	UID, GID int
	USB      *logout.USB    // nil: no USB reset
	Logind   *logout.Logind // nil: not a systemd kiosk
	Screen   interface{ ClearSession() error }
	Output   io.Writer // the viewer's messages
	Log      *slog.Logger
	// GStreamer is a prebuilt plugin registry the viewer reads, or "".
	GStreamer string
	// USBFilter, if set, is the USB filter the viewer uses instead of the
	// one the broker's offers carry (kioskd's usb_redirect).
	USBFilter string
	// USBAccess grants the viewer the USB devices the session's filter
	// allows; nil: none (the viewer must be able to open them itself).
	USBAccess *usbaccess.Server

	usbAtStart []logout.Device
	prepared   *viewer.Viewer // the next visitor's viewer, waiting for an offer
}

// Prepare implements Session: a viewer starts now, as the session user,
// and waits on stdin for the next visitor's offer.
func (s *LocalSession) Prepare(settings kioskproto.Viewer) {
	settings = s.local(settings)
	if v := s.prepared; v != nil {
		if !v.Exited() && v.Settings() == settings {
			return
		}
		v.Stop(time.Second)
		s.prepared = nil
	}
	v, err := viewer.Prepare(s.options(), settings)
	if err != nil {
		s.Log.Warn("cannot start the viewer ahead of time", "err", err)
		return
	}
	s.prepared = v
}

// Start implements Session: the prepared viewer gets the offer, or, if its
// settings differ (the broker's configuration changed), a new one starts.
func (s *LocalSession) Start(o kioskproto.Offer, sec *viewer.Secure) (*viewer.Viewer, error) {
	o.Viewer = s.local(o.Viewer)
	v := s.prepared
	s.prepared = nil
	if v != nil && (v.Exited() || v.Settings() != o.Viewer) {
		v.Stop(time.Second)
		v = nil
	}
	if s.USB != nil {
		devs, err := s.USB.Devices()
		if err != nil {
			s.Log.Warn("cannot list USB devices at session start", "err", err)
		}
		s.usbAtStart = devs
	}
	if s.USBAccess != nil {
		if err := s.USBAccess.Allow(o.Viewer.USBAutoRedirect, o.Viewer.USBRedirectConnect); err != nil {
			s.Log.Warn("no USB device will be redirected", "err", err)
		}
	}
	if v == nil {
		return viewer.Launch(s.options(), o, sec)
	}
	if err := v.Connect(o, sec); err != nil {
		v.Stop(time.Second)
		return nil, err
	}
	return v, nil
}

// local is the broker's viewer settings with this kiosk's own USB filter.
func (s *LocalSession) local(v kioskproto.Viewer) kioskproto.Viewer {
	if s.USBFilter != "" {
		v.USBAutoRedirect, v.USBRedirectConnect = s.USBFilter, s.USBFilter
	}
	return v
}

// options are how the session's viewer runs: as the session user, with its
// home and runtime directories in the session tmpfs.
func (s *LocalSession) options() viewer.Options {
	home, run := filepath.Join(s.Dir, "home"), filepath.Join(s.Dir, "run")
	for _, d := range []string{home, run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			s.Log.Warn("cannot make the session's directories", "err", err)
		}
		if s.UID != 0 {
			os.Chown(d, s.UID, s.GID)
		}
	}
	var cred *syscall.Credential
	if s.UID != 0 {
		cred = &syscall.Credential{Uid: uint32(s.UID), Gid: uint32(s.GID)}
	}
	env := []string{
		"DISPLAY=" + s.Display, "HOME=" + home, "XDG_RUNTIME_DIR=" + run,
		"XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"PATH=/usr/bin:/bin", "LANG=C.UTF-8",
	}
	if s.GStreamer != "" {
		env = append(env, "GST_REGISTRY="+s.GStreamer, "GST_REGISTRY_UPDATE=no")
	}
	if s.USBAccess != nil {
		env = append(env, usbaccess.EnvSocket+"="+s.USBAccess.Socket)
	}
	return viewer.Options{Binary: s.Viewer, Env: env, Kiosk: true, Extra: s.Extra, Output: s.Output, Credential: cred}
}

// Logout implements Session: the viewer's process group and every process
// of the session user are killed, logind ends the user's sessions (on a
// systemd kiosk), the session tmpfs is wiped, the USB devices present
// during the session are reset, and the X server forgets the clipboard.
func (s *LocalSession) Logout(ctx context.Context, v *viewer.Viewer) error {
	var err error
	if s.USBAccess != nil {
		err = s.USBAccess.RevokeAll() // first: nothing more is granted while the rest runs
	}
	plan := logout.Plan{UID: s.UID, Dir: s.Dir, USB: s.USB, USBAtStart: s.usbAtStart, Logind: s.Logind, Log: s.Log}
	if v != nil {
		plan.ViewerPGID = v.PID()
	}
	err = errors.Join(err, plan.Run(ctx))
	if v != nil {
		select {
		case <-v.Done():
		case <-time.After(5 * time.Second):
			err = errors.Join(err, fmt.Errorf("the viewer (pid %d) did not exit", v.PID()))
		}
	}
	s.usbAtStart = nil
	if s.Screen != nil {
		err = errors.Join(err, s.Screen.ClearSession())
	}
	return err
}
