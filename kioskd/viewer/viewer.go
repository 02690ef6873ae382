// Package viewer starts remote-viewer for a session and stops everything it
// started. The viewer can start ahead of the visitor (Prepare): it
// initializes and waits for its connection file on stdin, where the offer
// arrives (Connect), so the one-time ticket never touches a file system and
// the visitor does not wait for GTK to start. The viewer runs in a process
// group of its own, so ending a session kills every process it spawned.
package viewer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
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
	Env    []string // environment (DISPLAY, HOME in the session's tmpfs)
	Kiosk  bool     // --kiosk --kiosk-quit=on-disconnect: the visitor cannot leave it
	Extra  []string // more remote-viewer arguments (the operator's)
	Output io.Writer
	// Credential runs the viewer as another user (the session's), or nil.
	Credential *syscall.Credential
}

// Viewer is a running remote-viewer.
type Viewer struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	settings kioskproto.Viewer
	done     chan struct{}
	err      error
}

// Secure is how the viewer verifies the SPICE gateway's TLS: the CA the
// kiosk verified its broker with, and the subject of the gateway's
// certificate, as the broker's welcome said it.
type Secure struct {
	CA      []byte // PEM
	Subject string
}

// WriteVV writes the virt-viewer connection file for an offer. With sec,
// every channel goes over TLS to the offer's TLS port, verified against
// sec; there is no plaintext port in the file at all.
func WriteVV(w io.Writer, o kioskproto.Offer, sec *Secure) error {
	bw := bufio.NewWriter(w)
	// A value is one line: no line break (which would start a key of its
	// own) and no NUL (where GLib's key-file parser stops).
	oneLine := strings.NewReplacer("\n", "", "\r", "", "\x00", "")
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(bw, "%s=%s\n", k, oneLine.Replace(v))
		}
	}
	fmt.Fprintln(bw, "[virt-viewer]")
	kv("type", "spice")
	kv("host", o.Host)
	if sec != nil {
		kv("tls-port", strconv.Itoa(o.TLSPort))
		// The key file's own escape for a newline: the CA is one line.
		ca := strings.ReplaceAll(strings.TrimSpace(string(sec.CA)), "\r", "")
		fmt.Fprintf(bw, "ca=%s\n", oneLine.Replace(strings.ReplaceAll(ca, "\n", `\n`)))
		kv("host-subject", sec.Subject)
		kv("secure-channels", "all")
	} else {
		kv("port", strconv.Itoa(o.Port))
	}
	kv("password", o.Ticket)
	kv("title", o.Viewer.Title)
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

// Args returns remote-viewer's options for the viewer settings of offers.
func Args(v kioskproto.Viewer, kiosk bool) []string {
	var args []string
	if kiosk {
		args = append(args, "--kiosk", "--kiosk-quit=on-disconnect")
	}
	if v.DisableAudio {
		args = append(args, "--spice-disable-audio")
	}
	if v.Compression != "" {
		args = append(args, "--spice-preferred-compression="+v.Compression)
	}
	if v.USBAutoRedirect != "" {
		args = append(args, "--spice-usbredir-auto-redirect-filter="+v.USBAutoRedirect)
	}
	if v.USBRedirectConnect != "" {
		args = append(args, "--spice-usbredir-redirect-on-connect="+v.USBRedirectConnect)
	}
	return args
}

// Prepare starts remote-viewer ahead of an offer with the given settings:
// it starts up and waits, with no window, for Connect.
func Prepare(opts Options, settings kioskproto.Viewer) (*Viewer, error) {
	bin := opts.Binary
	if bin == "" {
		bin = "remote-viewer"
	}
	v := &Viewer{settings: settings, done: make(chan struct{})}
	args := append(append([]string{"-"}, Args(settings, opts.Kiosk)...), opts.Extra...)
	v.cmd = exec.Command(bin, args...)
	v.cmd.Env = opts.Env
	v.cmd.Stdout, v.cmd.Stderr = opts.Output, opts.Output
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: opts.Credential}
	var err error
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("viewer: %w", err)
	}
	go func() {
		v.err = v.cmd.Wait()
		close(v.done)
	}()
	return v, nil
}

// Connect hands a prepared viewer its offer: the connection file goes to
// its stdin.
func (v *Viewer) Connect(o kioskproto.Offer, sec *Secure) error {
	if v.stdin == nil {
		return errors.New("viewer: already connected")
	}
	err := errors.Join(WriteVV(v.stdin, o, sec), v.stdin.Close())
	v.stdin = nil
	if err != nil {
		return fmt.Errorf("viewer: handing over the offer: %w", err)
	}
	return nil
}

// Launch starts remote-viewer on an offer: Prepare, then Connect.
func Launch(opts Options, o kioskproto.Offer, sec *Secure) (*Viewer, error) {
	v, err := Prepare(opts, o.Viewer)
	if err != nil {
		return nil, err
	}
	if err := v.Connect(o, sec); err != nil {
		v.Stop(time.Second)
		return nil, err
	}
	return v, nil
}

// Settings are the viewer settings it was started with.
func (v *Viewer) Settings() kioskproto.Viewer { return v.settings }

// Exited reports whether the viewer has exited.
func (v *Viewer) Exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
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
