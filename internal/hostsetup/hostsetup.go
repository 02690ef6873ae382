// Package hostsetup starts the daemons the tests and the demo need on a
// machine without systemd: virtlogd and libvirtd, in the conditions a
// systemd server gives them:
//   - libvirtd runs under `tini -s`, a child subreaper, so that QEMU
//     processes are reaped the moment they exit; an init that reaps slowly
//     makes every VM destroy wait for libvirt's 200 ms polls;
//   - /run/libvirt is a tmpfs, as all of /run is on such a server; on disk,
//     every state change libvirt records costs an fsync.
package hostsetup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LibvirtSocket is where libvirtd listens for qemu:///system.
const LibvirtSocket = "/var/run/libvirt/libvirt-sock"

// EnsureLibvirt starts virtlogd and libvirtd unless they run, and waits for
// libvirtd's socket.
func EnsureLibvirt(ctx context.Context) error {
	if !running("/run/virtlogd.pid") && !running("/run/libvirtd.pid") {
		if err := runTmpfs("/run/libvirt"); err != nil {
			return err
		}
	}
	if !running("/run/virtlogd.pid") {
		if out, err := exec.CommandContext(ctx, "virtlogd", "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("starting virtlogd: %v: %s", err, out)
		}
	}
	if !running("/run/libvirtd.pid") {
		if err := StartLibvirtd(); err != nil {
			return err
		}
	}
	return waitSocket(ctx, LibvirtSocket)
}

// StartLibvirtd starts libvirtd in the background, in its own session, under
// a subreaper. It does not wait for it.
func StartLibvirtd() error {
	args := []string{"libvirtd"}
	if tini, err := exec.LookPath("tini"); err == nil {
		args = []string{tini, "-s", "--", "libvirtd"}
	}
	log, err := os.OpenFile("/var/log/undervdi-libvirtd.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting libvirtd: %w", err)
	}
	return cmd.Process.Release()
}

// restarting is set while RestartLibvirtd restarts libvirtd on purpose.
var restarting atomic.Bool

// SuperviseLibvirtd plays systemd's Restart=on-failure for libvirtd until
// ctx ends: if it dies (libvirt has crashed under a client killed in the
// middle of a call), it is started again and said is called with what
// happened. Tests run it, so one crash does not fail every test after it.
func SuperviseLibvirtd(ctx context.Context, said func(msg string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		if restarting.Load() || running("/run/libvirtd.pid") {
			continue
		}
		said("libvirtd is not running (crashed? see /var/log/undervdi-libvirtd.log and dmesg); starting it, as systemd would")
		if err := StartLibvirtd(); err != nil {
			said(err.Error())
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := waitSocket(wctx, LibvirtSocket); err != nil {
			said(err.Error())
		}
		cancel()
	}
}

// RestartLibvirtd stops the running libvirtd by the PID in its pid file and
// starts a new one. Running VMs survive it: QEMU outlives libvirtd.
func RestartLibvirtd(ctx context.Context) error {
	restarting.Store(true)
	defer restarting.Store(false)
	pid, err := readPID("/run/libvirtd.pid")
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping libvirtd %d: %w", pid, err)
	}
	for syscall.Kill(pid, 0) == nil {
		select {
		case <-ctx.Done():
			return fmt.Errorf("libvirtd %d did not stop: %w", pid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := StartLibvirtd(); err != nil {
		return err
	}
	return waitSocket(ctx, LibvirtSocket)
}

func running(pidFile string) bool {
	pid, err := readPID(pidFile)
	return err == nil && syscall.Kill(pid, 0) == nil
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func waitSocket(ctx context.Context, path string) error {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("waiting for %s", path), err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// runTmpfs mounts a tmpfs at dir unless /run already is one (or dir is).
func runTmpfs(dir string) error {
	for _, d := range []string{"/run", dir} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.TMPFS_MAGIC {
			return nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", dir, err)
	}
	return nil
}
