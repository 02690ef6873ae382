package pxe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// Run serves network boot for cfg until ctx is done: dnsmasq (DHCP and
// TFTP) as a child process, and the boot directory over HTTP on ln. If
// either stops by itself, Run stops the other and returns why; when ctx is
// done it stops both and returns nil. A zero cfg.HTTPPort takes ln's port.
// Without a cfg.LeaseFile, leases are kept in a temporary file: kiosks are
// disposable, and an isolated network's dnsmasq (authoritative) simply
// grants forgotten addresses again. Run closes ln.
func Run(ctx context.Context, cfg Config, ln net.Listener, log *slog.Logger) error {
	defer ln.Close()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPPort == 0 {
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			cfg.HTTPPort = a.Port
		}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := CheckBootDir(cfg.BootDir, !cfg.installOnly()); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "undervdi-pxe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if cfg.LeaseFile == "" {
		cfg.LeaseFile = filepath.Join(dir, "leases")
	}
	conf, err := cfg.Dnsmasq()
	if err != nil {
		return err
	}
	confFile := filepath.Join(dir, "dnsmasq.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return err
	}
	d := cfg.withDefaults()
	log.Info("network boot", "mode", d.Mode, "interface", d.Interface, "server", d.Server,
		"boot_script", d.BootURL(), "boot_dir", d.BootDir)
	// Neither returns before ctx is done unless it failed, and a failure
	// cancels ctx for the other.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return RunDnsmasq(ctx, confFile, log) })
	var h http.Handler = &Handler{Dir: cfg.BootDir, Log: log}
	if cfg.Install != nil {
		h = &installHandler{cfg: d, next: h, log: log}
		log.Info("server install", "boot_script", d.InstallURL(), "kickstart", d.KickstartURL(), "files", d.FilesURL(),
			"machines", len(cfg.Install.MACs))
	}
	g.Go(func() error { return Serve(ctx, ln, h, log) })
	return g.Wait()
}

// stopGrace is how long dnsmasq has to exit after SIGTERM.
const stopGrace = 5 * time.Second

// RunDnsmasq runs dnsmasq in the foreground with the configuration file
// conf until ctx is done, then stops it with SIGTERM and returns nil.
// dnsmasq exits by itself only on errors, which RunDnsmasq returns with
// dnsmasq's last words. dnsmasq logs to its stderr, each line to log.
func RunDnsmasq(ctx context.Context, conf string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// --conf-file keeps /etc/dnsmasq.conf out; an empty --pid-file writes
	// none; --log-facility=- logs to stderr, which we read.
	cmd := exec.CommandContext(ctx, "dnsmasq", "--keep-in-foreground", "--conf-file="+conf,
		"--log-facility=-", "--pid-file=")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	// If we die without stopping dnsmasq, the kernel stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting dnsmasq (apt-get install dnsmasq-base): %w", err)
	}
	log.Info("dnsmasq started", "pid", cmd.Process.Pid)
	// Read stderr to its end (dnsmasq exiting) before Wait closes it.
	last := &lastLines{n: 3}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.Info("dnsmasq", "msg", sc.Text())
		last.add(sc.Text())
	}
	io.Copy(io.Discard, stderr)
	err = cmd.Wait()
	if ctx.Err() != nil && !errors.Is(err, exec.ErrWaitDelay) {
		log.Info("dnsmasq stopped")
		return nil
	}
	if err == nil {
		return fmt.Errorf("dnsmasq exited: %s", last)
	}
	return fmt.Errorf("dnsmasq: %w: %s", err, last)
}

// lastLines keeps the last n lines written to it.
type lastLines struct {
	n     int
	lines []string
}

func (l *lastLines) add(s string) {
	l.lines = append(l.lines, s)
	if len(l.lines) > l.n {
		l.lines = l.lines[1:]
	}
}

func (l *lastLines) String() string {
	if len(l.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(l.lines, " / ")
}
