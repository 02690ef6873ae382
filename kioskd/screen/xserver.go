package screen

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jezek/xgb"
)

// XServer is an X server kioskd started and owns (on the boot image).
type XServer struct {
	Display string
	cmd     *exec.Cmd
	done    chan struct{}
	stderr  lastLines
}

// lastLines keeps the end of what the X server says, for the error that
// tells why it did not start.
type lastLines struct {
	mu  sync.Mutex
	buf []byte
}

func (l *lastLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 8<<10 {
		l.buf = l.buf[len(l.buf)-4<<10:]
	}
	return len(p), nil
}

// tail returns Xorg's error lines, without its boilerplate, or else the
// last few lines.
func (l *lastLines) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all, errs []string
	for _, line := range strings.Split(string(l.buf), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		all = append(all, line)
		msg := strings.TrimSpace(strings.TrimPrefix(line, "(EE)"))
		if strings.HasPrefix(line, "(EE)") && msg != "" && !xorgBoilerplate(msg) {
			errs = append(errs, msg)
		}
	}
	if len(errs) == 0 {
		errs = all
	}
	if len(errs) > 4 {
		errs = errs[len(errs)-4:]
	}
	return strings.Join(errs, " / ")
}

func xorgBoilerplate(msg string) bool {
	for _, b := range []string{"Please also check the log", "Server terminated", "for help", "Please consult", "Fatal server error", "Backtrace", "fault address"} {
		if strings.Contains(msg, b) {
			return true
		}
	}
	return false
}

// StartX runs command (e.g. "Xorg :0 vt1 -nolisten tcp -noreset") and waits
// until display accepts clients.
func StartX(ctx context.Context, command, display string) (*XServer, error) {
	args := strings.Fields(command)
	if len(args) == 0 {
		return nil, errors.New("no X server command")
	}
	x := &XServer{Display: display, done: make(chan struct{})}
	x.cmd = exec.Command(args[0], args[1:]...)
	x.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	x.cmd.Stderr = &x.stderr
	if err := x.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the X server: %w", err)
	}
	go func() { x.cmd.Wait(); close(x.done) }()
	if err := WaitDisplay(ctx, display, x.done, 30*time.Second); err != nil {
		x.Stop()
		if tail := x.stderr.tail(); tail != "" {
			err = fmt.Errorf("%w: %s", err, tail)
		}
		return nil, err
	}
	return x, nil
}

// Done is closed when the X server has exited.
func (x *XServer) Done() <-chan struct{} { return x.done }

// Stop ends the X server (its process group).
func (x *XServer) Stop() {
	syscall.Kill(-x.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-x.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-x.cmd.Process.Pid, syscall.SIGKILL)
		<-x.done
	}
}

// WaitDisplay waits until display accepts clients, for up to d; exited is
// closed if the server dies meanwhile.
func WaitDisplay(ctx context.Context, display string, exited <-chan struct{}, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if c, err := xgb.NewConnDisplay(display); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the X server for %s exited", display)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("the X server for %s did not accept clients within %v", display, d)
}
