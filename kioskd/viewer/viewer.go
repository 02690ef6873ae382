// Package viewer starts remote-viewer for a session and stops everything it
// started. The connection file (.vv), which holds the one-time ticket, is
// written to tmpfs readable by its owner only, and remote-viewer deletes it
// once read. The viewer runs in a process group of its own, so ending a
// session kills every process the viewer spawned.
package viewer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"undervdi/kioskd/logout"
	"undervdi/kioskproto"
)

// Options say how to run the viewer.
type Options struct {
	Binary string   // remote-viewer; default "remote-viewer"
	Dir    string   // where the .vv file goes: a tmpfs
	Env    []string // environment (DISPLAY, HOME in the session's tmpfs)
	Kiosk  bool     // --kiosk --kiosk-quit=on-disconnect: the visitor cannot leave it
	Extra  []string // more remote-viewer arguments (the operator's)
	Output io.Writer
	// Credential runs the viewer as another user (the session's), or nil.
	Credential *syscall.Credential
}

// Viewer is a running remote-viewer.
type Viewer struct {
	cmd  *exec.Cmd
	vv   string
	done chan struct{}
	err  error
}

// WriteVV writes the virt-viewer connection file for an offer.
func WriteVV(w io.Writer, o kioskproto.Offer) error {
	bw := bufio.NewWriter(w)
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(bw, "%s=%s\n", k, strings.NewReplacer("\n", "", "\r", "").Replace(v))
		}
	}
	fmt.Fprintln(bw, "[virt-viewer]")
	kv("type", "spice")
	kv("host", o.Host)
	kv("port", strconv.Itoa(o.Port))
	kv("password", o.Ticket)
	kv("title", o.Viewer.Title)
	kv("delete-this-file", "1")
	kv("fullscreen", "1")
	kv("disable-effects", o.Viewer.DisableEffects)
	kv("enable-usbredir", "1")
	if o.Viewer.USBAutoRedirect != "" {
		kv("enable-usb-autoshare", "1")
		kv("usb-filter", o.Viewer.USBAutoRedirect)
	}
	// No way out of the session from the keyboard.
	kv("release-cursor", "")
	kv("toggle-fullscreen", "")
	kv("secure-attention", "ctrl+alt+end")
	return bw.Flush()
}

// Args returns remote-viewer's command line for an offer, after the .vv file.
func Args(o kioskproto.Offer, kiosk bool) []string {
	var args []string
	if kiosk {
		args = append(args, "--kiosk", "--kiosk-quit=on-disconnect")
	}
	if o.Viewer.DisableAudio {
		args = append(args, "--spice-disable-audio")
	}
	if o.Viewer.Compression != "" {
		args = append(args, "--spice-preferred-compression="+o.Viewer.Compression)
	}
	if o.Viewer.USBAutoRedirect != "" {
		args = append(args, "--spice-usbredir-auto-redirect-filter="+o.Viewer.USBAutoRedirect)
	}
	if o.Viewer.USBRedirectConnect != "" {
		args = append(args, "--spice-usbredir-redirect-on-connect="+o.Viewer.USBRedirectConnect)
	}
	return args
}

// Launch writes the .vv file and starts remote-viewer on it.
func Launch(opts Options, o kioskproto.Offer) (*Viewer, error) {
	bin := opts.Binary
	if bin == "" {
		bin = "remote-viewer"
	}
	f, err := os.CreateTemp(opts.Dir, "session-*.vv")
	if err != nil {
		return nil, fmt.Errorf("viewer: connection file: %w", err)
	}
	if err := f.Chmod(0o600); err == nil && opts.Credential != nil {
		err = f.Chown(int(opts.Credential.Uid), int(opts.Credential.Gid))
	}
	if err == nil {
		err = WriteVV(f, o)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("viewer: connection file: %w", err)
	}
	v := &Viewer{vv: f.Name(), done: make(chan struct{})}
	args := append(append([]string{f.Name()}, Args(o, opts.Kiosk)...), opts.Extra...)
	v.cmd = exec.Command(bin, args...)
	v.cmd.Env = opts.Env
	v.cmd.Stdout, v.cmd.Stderr = opts.Output, opts.Output
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: opts.Credential}
	if err := v.cmd.Start(); err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("viewer: %w", err)
	}
	go func() {
		v.err = v.cmd.Wait()
		os.Remove(v.vv) // in case it died before reading it
		close(v.done)
	}()
	return v, nil
}

// PID is the viewer's process id, which is also its process group's.
func (v *Viewer) PID() int { return v.cmd.Process.Pid }

// Done is closed when the viewer has exited.
func (v *Viewer) Done() <-chan struct{} { return v.done }

// Err is how the viewer exited, once Done is closed.
func (v *Viewer) Err() error { return v.err }

// Stop ends the viewer's whole process group: SIGTERM, then SIGKILL after
// grace. It returns when the viewer itself has exited.
func (v *Viewer) Stop(grace time.Duration) {
	logout.KillGroup(v.PID(), grace)
	<-v.done
}

// Wait waits for the viewer to exit or ctx to end.
func (v *Viewer) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dir returns a default directory for connection files: XDG_RUNTIME_DIR or
// /run (tmpfs on both systemd hosts and the kiosk image).
func Dir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	return filepath.Join("/run", "undervdi")
}
