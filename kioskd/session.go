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

	usbAtStart []logout.Device
}

// Start implements Session.
func (s *LocalSession) Start(o kioskproto.Offer) (*viewer.Viewer, error) {
	home, run := filepath.Join(s.Dir, "home"), filepath.Join(s.Dir, "run")
	for _, d := range []string{home, run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if s.UID != 0 {
			if err := os.Chown(d, s.UID, s.GID); err != nil {
				return nil, err
			}
		}
	}
	if s.USB != nil {
		devs, err := s.USB.Devices()
		if err != nil {
			s.Log.Warn("cannot list USB devices at session start", "err", err)
		}
		s.usbAtStart = devs
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
	return viewer.Launch(viewer.Options{Binary: s.Viewer, Dir: run, Env: env, Kiosk: true, Extra: s.Extra,
		Output: s.Output, Credential: cred}, o)
}

// Logout implements Session: the viewer's process group and every process
// of the session user are killed, logind ends the user's sessions (on a
// systemd kiosk), the session tmpfs is wiped, the USB devices present
// during the session are reset, and the X server forgets the clipboard.
func (s *LocalSession) Logout(ctx context.Context, v *viewer.Viewer) error {
	plan := logout.Plan{UID: s.UID, Dir: s.Dir, USB: s.USB, USBAtStart: s.usbAtStart, Logind: s.Logind, Log: s.Log}
	if v != nil {
		plan.ViewerPGID = v.PID()
	}
	err := plan.Run(ctx)
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
