// Package broker is the vdi-broker daemon: it connects to libvirt, keeps the
// pool of disposable VMs, and serves the admin API that `vdi-broker status`
// reads. Sessions and the SPICE gateway build on the pool it owns.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"undervdi/server/config"
	"undervdi/server/domxml"
	"undervdi/server/pool"
	"undervdi/server/virt"
)

// ErrSetup marks errors an operator must fix before a restart can help: a
// bad golden VM, an unusable admin socket path. The daemon exits with status
// 2 for them, which the systemd unit does not restart.
var ErrSetup = errors.New("setup error")

// Broker is a running broker.
type Broker struct {
	Config *config.Config
	Log    *slog.Logger
	Pool   *pool.Pool
	Host   *virt.Host
}

// New prepares a broker; it starts connecting to libvirt at once, in the
// background, until ctx ends.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Broker, error) {
	host, err := virt.Open(ctx, cfg.LibvirtURI, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	return &Broker{
		Config: cfg,
		Log:    log,
		Host:   host,
		Pool: pool.New(pool.Config{
			Name:              cfg.PoolName,
			Golden:            cfg.Golden,
			Size:              cfg.PoolSize,
			MaxVMs:            cfg.MaxVMs,
			OverlayDir:        cfg.OverlayDir,
			MemoryReserve:     uint64(cfg.MemoryReserve),
			ReadyTimeout:      cfg.ReadyTimeout.D(),
			RefillConcurrency: cfg.RefillConcurrency,
			FailureLimit:      cfg.FailureLimit,
			ReconcileInterval: cfg.ReconcileInterval.D(),
		}, host, log),
	}, nil
}

// Run runs the broker until ctx ends. It tells systemd it is ready once the
// first reconcile with libvirt is done.
func (b *Broker) Run(ctx context.Context) error {
	admin, err := b.serveAdmin(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer admin.Close()

	daemon.SdNotify(false, "STATUS=connecting to libvirt and reconciling")
	if err := b.Pool.Start(ctx); err != nil {
		if errors.Is(err, domxml.ErrGolden) {
			return fmt.Errorf("%w: %w", ErrSetup, err)
		}
		return err
	}
	cfg := b.Config
	b.Log.Info("broker ready", "pool", cfg.PoolName, "golden", cfg.Golden, "size", cfg.PoolSize, "admin", cfg.AdminSocket)
	daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=serving")
	err = b.Pool.Run(ctx)
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// serveAdmin serves the admin API on the configured unix socket.
func (b *Broker) serveAdmin(ctx context.Context) (*http.Server, error) {
	path := b.Config.AdminSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	os.Remove(path) // a stale socket of an earlier run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: b.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.Log.Error("admin API stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return srv, nil
}
