//go:build integration

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/broker"
	"undervdi/server/config"
	"undervdi/server/domxml"
	"undervdi/server/spice"
)

var (
	buildOnce sync.Once
	brokerBin string
	buildErr  error
)

func brokerBinary(t *testing.T) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vdi-broker-test-")
		if err != nil {
			buildErr = err
			return
		}
		brokerBin = filepath.Join(dir, "vdi-broker")
		if out, err := exec.Command("go", "build", "-o", brokerBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return brokerBin
}

type brokerProc struct {
	cmd    *exec.Cmd
	log    *syncbuf.Buffer
	socket string
	done   chan struct{}
	ready  chan struct{} // closed when the broker sent READY=1 to systemd
}

func writeConfig(t *testing.T, cfg *config.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vdi-broker.toml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := toml.NewEncoder(f).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	return path
}

func startBroker(t *testing.T, cfgPath, socket string) *brokerProc {
	t.Helper()
	p := &brokerProc{log: &syncbuf.Buffer{}, socket: socket, done: make(chan struct{}), ready: make(chan struct{})}
	p.cmd = exec.Command(brokerBinary(t), "run", "-config", cfgPath)
	p.cmd.Stderr = p.log
	// Play systemd's part of Type=notify.
	notify := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if slices.Contains(strings.Split(string(buf[:n]), "\n"), "READY=1") {
				close(p.ready)
				return
			}
		}
	}()
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("vdi-broker log:\n%s", p.log.String())
		}
	})
	return p
}

func (p *brokerProc) status() *broker.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := broker.FetchStatus(ctx, p.socket)
	if err != nil {
		return nil
	}
	return s
}

func (p *brokerProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFull waits until the broker's pool is full and holds nothing else.
func (p *brokerProc) waitFull(t *testing.T, size int) *broker.Status {
	t.Helper()
	var s *broker.Status
	waitFor(t, 5*time.Minute, fmt.Sprintf("a full pool of %d", size), func() bool {
		s = p.status()
		return s != nil && s.Pool.Counts[domxml.Clean] == size && len(s.Pool.VMs) == size
	})
	select {
	case <-p.ready:
	default:
		t.Errorf("the broker never told systemd READY=1")
	}
	return s
}

// checkNoLeftovers checks libvirt and the overlay directory hold exactly the
// pool's VMs and their overlays.
func checkNoLeftovers(t *testing.T, bed *testbed.Bed, s *broker.Status) {
	t.Helper()
	var want, wantOverlays []string
	for _, v := range s.Pool.VMs {
		want = append(want, v.Name)
		wantOverlays = append(wantOverlays, v.Overlays...)
	}
	// Orphan overlays are deleted in the background right after the
	// reconcile; give that a moment.
	waitFor(t, time.Minute, "libvirt and the overlay directory to match the pool", func() bool {
		doms, overlays, err := bed.Leftovers(bed.L)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(doms)
		slices.Sort(want)
		slices.Sort(overlays)
		slices.Sort(wantOverlays)
		return slices.Equal(doms, want) && slices.Equal(overlays, wantOverlays)
	})
}

func TestKillDuringRefill(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 2)
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	waitFor(t, 2*time.Minute, "a clone being made", func() bool {
		s := first.status()
		return s != nil && s.Pool.Counts[domxml.Booting] > 0
	})
	first.kill9(t)
	doms, overlays, _ := bed.Leftovers(bed.L)
	if len(doms) == 0 || len(overlays) == 0 {
		t.Fatalf("nothing left behind by the kill (domains %v, overlays %v): the test did not hit a refill", doms, overlays)
	}
	t.Logf("killed mid-refill, leaving domains %v and overlays %v", doms, overlays)

	second := startBroker(t, path, cfg.AdminSocket)
	s := second.waitFull(t, 2)
	checkNoLeftovers(t, bed, s)
	for _, v := range s.Pool.VMs {
		if slices.Contains(doms, v.Name) {
			t.Errorf("VM %s, booting when the broker was killed, was kept: it was not provably clean", v.Name)
		}
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	<-second.done
	if code := second.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("vdi-broker exit status after SIGTERM = %d, want 0", code)
	}
}

func TestKillDuringSession(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 1)
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	first.waitFull(t, 1)

	// A kiosk takes a session and its viewer links: the VM is in use.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := kioskproto.Dialer{Addr: "127.0.0.1:" + port(cfg.Sessions.Listen)}.Dial(ctx, "k1", kioskToken, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	k.Request()
	var offer *kioskproto.Offer
	for m := range k.Messages() {
		if m.Type == kioskproto.TOffer {
			offer = m.Offer
			break
		}
	}
	if offer == nil {
		t.Fatalf("no offer: %v", k.Err())
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", offer.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
		CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapMiniHeader)}, offer.Ticket); err != nil {
		t.Fatalf("SPICE link through the gateway: %v", err)
	}
	s := first.status()
	if s == nil || len(s.Sessions) != 1 || s.Sessions[0].Linked == nil {
		t.Fatalf("status after the link = %+v, want one linked session", s)
	}
	vm := s.Sessions[0].VM
	overlays, _ := filepath.Glob(filepath.Join(bed.OverlayDir, vm+"-*"))
	if len(overlays) != 1 {
		t.Fatalf("overlays of %s: %v", vm, overlays)
	}

	first.kill9(t)
	if _, err := os.Stat(overlays[0]); err != nil {
		t.Fatalf("the session's overlay should outlive the killed broker until the restart: %v", err)
	}
	second := startBroker(t, path, cfg.AdminSocket)
	s = second.waitFull(t, 1)
	checkNoLeftovers(t, bed, s)
	if s.Pool.VMs[0].Name == vm {
		t.Errorf("the in-use VM %s of the killed broker was kept", vm)
	}
	if _, err := os.Stat(overlays[0]); !os.IsNotExist(err) {
		t.Errorf("the in-use VM's overlay %s: %v, want it deleted", overlays[0], err)
	}
}

// brokerConfig is the bed's configuration with free ports and one kiosk.
func brokerConfig(t *testing.T, bed *testbed.Bed, size int) *config.Config {
	cfg := bed.Config(size)
	cfg.Gateway.Listen = "127.0.0.1:" + freePort(t)
	cfg.Sessions.Listen = "127.0.0.1:" + freePort(t)
	cfg.Sessions.LegacyListen = ""
	cfg.Sessions.AuditLog = filepath.Join(bed.Root, "sessions.jsonl")
	cfg.Kiosks = []config.Kiosk{{ID: "k1", Address: "127.0.0.1", Token: kioskToken}}
	return cfg
}

const kioskToken = "kill-test-token-0123456789"

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return port(ln.Addr().String())
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
