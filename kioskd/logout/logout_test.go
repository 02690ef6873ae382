package logout

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// TestRun logs a visitor out for real: the viewer's process group and a
// process that left it, a session directory, the fake sysfs and a stand-in
// logind, with some steps failing.
func TestRun(t *testing.T) {
	uid, gid := testUserIDs(t)
	owned := func(p proc) bool { return p.uid == uid }
	if ps, _ := live("/proc", owned); len(ps) > 0 {
		t.Skipf("%s already runs processes we did not start: %v", testUser, ps)
	}
	t.Cleanup(func() { KillUser("/proc", uid, 0) })
	addr := privateBus(t)
	logind := serveLogind(t, addr)
	client := connect(t, addr)

	for _, c := range []struct {
		name       string
		logindErr  *dbus.Error
		missingDir bool
		missingUSB bool
		failed     []string // steps
	}{
		{name: "clean"},
		{name: "logind and wipe fail", logindErr: dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Access denied"}),
			missingDir: true, failed: []string{"logind", "wipe"}},
		{name: "no sysfs", missingUSB: true, failed: []string{"usb-reset"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			logind.fail(c.logindErr)
			group := asUser(uid, gid)
			group.Setpgid = true
			viewer := start(t, group, "sh", "-c", `trap "" TERM; sleep 300 & sleep 300 & wait`)
			pgid := viewer.cmd.Process.Pid
			escaped := asUser(uid, gid)
			escaped.Setsid = true
			start(t, escaped, "sleep", "300")
			waitFor(t, 3, func(p proc) bool { return p.uid == uid && p.name == "sleep" })

			dir := filepath.Join(t.TempDir(), "session")
			os.Mkdir(dir, 0o700)
			tree(t, dir, ".vv", "home/", "home/.cache/", "home/.cache/thumb.png", "home/Documents/", "home/Documents/cv.odt")
			os.Chmod(filepath.Join(dir, "home/Documents"), 0o500)
			if c.missingDir {
				dir += ".missing"
			}
			sysfs := newSysfs(t, hub, stick, keyboard)
			usb := sysfs.usb()
			if c.missingUSB {
				usb.Root = filepath.Join(sysfs.root, "missing")
			}
			var log bytes.Buffer
			p := &Plan{
				UID: uid, ViewerPGID: pgid, Dir: dir,
				USB: usb, USBAtStart: []Device{hub, scanner, keyboard},
				Logind: &Logind{Conn: client}, Grace: 200 * time.Millisecond,
				Log: newLogger(&log),
			}
			before := len(logind.calls())

			err := p.Run(context.Background())

			if len(c.failed) == 0 && err != nil {
				t.Errorf("Run() = %v, want nil", err)
			}
			for _, step := range c.failed {
				if err == nil || !strings.Contains(err.Error(), step+": ") {
					t.Errorf("Run() = %v, want an error from step %s", err, step)
				}
			}
			// Every step ran, failed or not.
			if ps, err := live("/proc", owned); len(ps) > 0 || err != nil {
				t.Errorf("live(/proc, uid %d) = %v, %v after Run, want none", uid, ps, err)
			}
			if sig := viewer.signal(t); sig != syscall.SIGKILL {
				t.Errorf("viewer ignoring SIGTERM ended by %v, want %v", sig, syscall.SIGKILL)
			}
			if got, want := logind.calls()[before:], []uint32{uint32(uid)}; !slices.Equal(got, want) {
				t.Errorf("Run() made logind see TerminateUser%v, want %v", got, want)
			}
			if !c.missingDir {
				if left, err := os.ReadDir(dir); len(left) > 0 || err != nil {
					t.Errorf("os.ReadDir(%s) = %v, %v after Run, want nothing", dir, left, err)
				}
			}
			var wantWrites []string
			if !c.missingUSB {
				wantWrites = resets(stick, keyboard)
			}
			if !slices.Equal(sysfs.writes, wantWrites) {
				t.Errorf("Run() wrote %q to sysfs, want %q", sysfs.writes, wantWrites)
			}

			var failed []string
			var done map[string]any
			for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				switch {
				case rec["level"] == "ERROR":
					failed = append(failed, rec["step"].(string))
				case rec["msg"] == "logout done":
					done = rec
				}
			}
			if !slices.Equal(failed, c.failed) {
				t.Errorf("Run() logged failures of %q, want %q:\n%s", failed, c.failed, log.String())
			}
			for _, step := range []string{"kill-viewer", "kill-user", "logind", "wipe", "usb-reset", "total"} {
				if _, ok := done[step]; !ok {
					t.Errorf("Run() logged no duration for %s:\n%s", step, log.String())
				}
			}
		})
	}
}

// newLogger logs everything to w as JSON.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
