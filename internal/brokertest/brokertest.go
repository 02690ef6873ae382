// Package brokertest runs a real broker in-process for end-to-end tests:
// on a testbed's libvirt, on free loopback ports, with one test kiosk
// configured. It can be stopped and started again, as a crash or an
// upgrade would.
package brokertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"testing"
	"time"

	"undervdi/internal/kioskuser"
	"undervdi/server/siteca"

	"undervdi/internal/freeport"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/internal/testlog"
	"undervdi/server/broker"
	"undervdi/server/config"
	"undervdi/server/pool"
)

// Token is the test kiosks' secret.
const Token = "e2e-kiosk-token-0123456789"

// Broker is a broker under test.
type Broker struct {
	*broker.Broker
	Config *config.Config
	Bed    *testbed.Bed
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
	// stopped is closed when Run has returned runErr.
	stopped chan struct{}
	runErr  error
}

// Start runs a broker with a pool of size on the bed. Kiosk "k1" and the
// group "many-*" are known at 127.0.0.0/8, and 127.0.0.1 is also a legacy
// kiosk. mutate, if not nil, changes the configuration first.
func Start(t testing.TB, bed *testbed.Bed, size int, mutate func(*config.Config)) *Broker {
	t.Helper()
	cfg := bed.Config(size)
	cfg.Gateway.Listen = fmt.Sprintf("0.0.0.0:%d", freeport.Port(t))
	cfg.Gateway.TLSListen = fmt.Sprintf("0.0.0.0:%d", freeport.Port(t))
	cfg.Sessions.Listen = fmt.Sprintf("0.0.0.0:%d", freeport.Port(t))
	cfg.Sessions.LegacyListen = fmt.Sprintf("0.0.0.0:%d", freeport.Port(t))
	cfg.Sessions.AuditLog = filepath.Join(bed.Root, "sessions.jsonl")
	cfg.Sessions.MaxConnsPerAddr = 64 // the tests' kiosks all come from loopback
	cfg.Kiosks = []config.Kiosk{
		{ID: "k1", Address: "127.0.0.1", Token: Token},
		{ID: "many-*", Address: "127.0.0.0/8", Token: Token, MaxKiosks: 64},
		{Address: "127.0.0.1", Legacy: true},
	}
	if mutate != nil {
		mutate(cfg)
	}
	b := &Broker{Config: cfg, Bed: bed, t: t}
	b.Restart()
	t.Cleanup(b.Stop)
	b.WaitFull()
	return b
}

// Restart starts the broker (again), with the same configuration.
func (b *Broker) Restart() {
	b.t.Helper()
	log := testlog.Logger()
	ctx, cancel := context.WithCancel(context.Background())
	bb, err := broker.New(ctx, b.Config, log)
	if err != nil {
		cancel()
		b.t.Fatal(err)
	}
	b.Broker, b.cancel, b.done, b.stopped = bb, cancel, make(chan error, 1), make(chan struct{})
	go func() {
		err := bb.Run(ctx)
		b.runErr = err
		close(b.stopped)
		b.done <- err
	}()
}

// Stop stops the broker as a crash would: VMs are left to the next start.
func (b *Broker) Stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	if err := <-b.done; err != nil {
		b.t.Errorf("broker.Run = %v", err)
	}
	b.Broker.Wait()
	b.cancel = nil
}

// WaitFull waits until the pool has all its clean VMs.
func (b *Broker) WaitFull() {
	b.t.Helper()
	poll.Until(b.t, 5*time.Minute, "a full pool", func() bool {
		select {
		case <-b.stopped:
			b.t.Fatalf("the broker stopped: %v", b.runErr)
		default:
		}
		return b.Status().Counts[pool.Clean] == b.Config.PoolSize
	})
}

// CAFile is the site CA the broker made, which kiosks verify it with.
func (b *Broker) CAFile() string { return filepath.Join(b.Config.SiteCADir(), siteca.CAFile) }

// KioskTLS is a kiosk's TLS to this broker: its site CA, its name.
func (b *Broker) KioskTLS() *tls.Config {
	b.t.Helper()
	return KioskTLS(b.t, b.CAFile())
}

// KioskTLS is a kiosk's TLS to a broker whose site CA is in caFile.
func KioskTLS(t testing.TB, caFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", caFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: siteca.ServerName, MinVersion: tls.VersionTLS12}
}

// KioskAddr is the kiosk protocol's address; GatewayPort the SPICE gateway's.
func (b *Broker) KioskAddr() string { return "127.0.0.1:" + port(b.Config.Sessions.Listen) }

// LegacyPort is the signal port's number.
func (b *Broker) LegacyPort() string { return port(b.Config.Sessions.LegacyListen) }

// GatewayPort is the SPICE gateway's port number.
func (b *Broker) GatewayPort() string { return port(b.Config.Gateway.Listen) }

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// KioskUser is an unprivileged user for what a kiosk runs as its visitor
// (the original remote.sh, kioskd's viewer); it is made if missing.
func KioskUser(t testing.TB) *user.User {
	t.Helper()
	u, err := kioskuser.Ensure()
	if err != nil {
		t.Fatal(err)
	}
	return u
}
