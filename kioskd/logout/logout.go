// Package logout ends a visitor's session on the kiosk for good: it kills
// the viewer and every process of the session user, wipes the session's
// tmpfs and resets the USB devices the VM may have held. Each step runs
// even when an earlier one failed, and every failure is reported.
package logout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// DefaultGrace is how long processes get between SIGTERM and SIGKILL.
const DefaultGrace = 2 * time.Second

// A Plan says what to clean up after a session. Zero fields skip their step.
type Plan struct {
	UID        int           // the session's own user; 0: none
	ViewerPGID int           // the viewer's process group; 0: none
	Dir        string        // the session's tmpfs (HOME, .vv, caches); "": none
	USB        *USB          // nil: no USB reset
	USBAtStart []Device      // USB.Devices() at session start
	Logind     *Logind       // nil: not a systemd kiosk
	Grace      time.Duration // SIGTERM to SIGKILL; 0: DefaultGrace
	ProcRoot   string        // "": "/proc"
	Log        *slog.Logger  // nil: no logging
}

// Run logs the visitor out: it kills the viewer's process group, kills the
// session user's processes, has logind terminate the user, wipes the
// session directory, and resets every USB device present during the
// session (seen at start or now, and still plugged in). It tries every
// step whatever happened in the earlier ones, logs each failure, and
// returns them all. ctx bounds only the D-Bus call: the other steps always
// run to the end, lest something of the visitor survive.
func (p *Plan) Run(ctx context.Context) error {
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	grace := cmp.Or(p.Grace, DefaultGrace)
	procRoot := cmp.Or(p.ProcRoot, "/proc")
	steps := []struct {
		name string
		skip bool
		run  func() error
	}{
		{"kill-viewer", p.ViewerPGID == 0, func() error { return killGroup(procRoot, p.ViewerPGID, grace) }},
		{"kill-user", p.UID == 0, func() error { return KillUser(procRoot, p.UID, grace) }},
		{"logind", p.Logind == nil || p.UID <= 0, func() error { return p.Logind.terminateUser(ctx, uint32(p.UID)) }},
		{"wipe", p.Dir == "", func() error { return Wipe(p.Dir) }},
		{"usb-reset", p.USB == nil, func() error { return p.resetUSB(log) }},
	}
	var errs []error
	took := []any{}
	start := time.Now()
	for _, s := range steps {
		if s.skip {
			continue
		}
		t := time.Now()
		err := s.run()
		d := time.Since(t)
		took = append(took, slog.Duration(s.name, d))
		if err != nil {
			log.Error("logout step failed", "step", s.name, "uid", p.UID, "took", d, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	log.Debug("logout done", append(took, "total", time.Since(start), "failed", len(errs))...)
	return errors.Join(errs...)
}

// resetUSB resets the devices seen at session start or present now, and
// says which (what a visitor plugged in is worth a line).
func (p *Plan) resetUSB(log *slog.Logger) error {
	now, err := p.USB.Devices()
	devs := Union(p.USBAtStart, now)
	err = errors.Join(err, p.USB.Reset(devs))
	var names []string
	for _, d := range p.USB.Present(devs) {
		if !d.Hub {
			names = append(names, d.String())
		}
	}
	if len(names) > 0 {
		log.Info("USB devices reset", "devices", strings.Join(names, "; "))
	}
	return err
}
