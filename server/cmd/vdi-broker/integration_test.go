//go:build integration

package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
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

	"undervdi/internal/testbed"
	"undervdi/server/broker"
	"undervdi/server/config"
	"undervdi/server/domxml"
)

// sessionHolderEnv makes the test binary a process that runs the broker
// in-process, holds one VM in use as a session does, and waits to be killed.
const sessionHolderEnv = "UNDERVDI_TEST_SESSION_HOLDER"

func TestMain(m *testing.M) {
	if path := os.Getenv(sessionHolderEnv); path != "" {
		holdSession(path)
		return
	}
	os.Exit(m.Run())
}

func holdSession(configPath string) {
	cfg, err := config.Load(configPath)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	b, err := broker.New(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		panic(err)
	}
	go b.Run(ctx)
	for b.Pool.Status().Counts[domxml.Clean] == 0 {
		time.Sleep(100 * time.Millisecond)
	}
	v, err := b.Pool.Take(ctx)
	if err != nil {
		panic(err)
	}
	if err := b.Pool.MarkUsed(ctx, v.Name); err != nil {
		panic(err)
	}
	fmt.Printf("SESSION %s %s\n", v.Name, v.Overlays[0])
	select {}
}

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

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type brokerProc struct {
	cmd    *exec.Cmd
	log    *syncBuffer
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
	p := &brokerProc{log: &syncBuffer{}, socket: socket, done: make(chan struct{}), ready: make(chan struct{})}
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
	cfg := bed.Config(2)
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
	cfg := bed.Config(1)
	path := writeConfig(t, cfg)

	holder := exec.Command(os.Args[0], "-test.run=^$")
	holder.Env = append(os.Environ(), sessionHolderEnv+"="+path)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	holderLog := &syncBuffer{}
	holder.Stderr = holderLog
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "SESSION ") {
				lines <- sc.Text()
			}
		}
	}()
	var vm, overlay string
	select {
	case line := <-lines:
		fmt.Sscanf(line, "SESSION %s %s", &vm, &overlay)
	case <-time.After(5 * time.Minute):
		t.Fatalf("no session held; holder log:\n%s", holderLog.String())
	}
	holder.Process.Signal(syscall.SIGKILL)
	holder.Wait()
	if _, err := os.Stat(overlay); err != nil {
		t.Fatalf("the session's overlay should outlive the killed broker until the restart: %v", err)
	}

	b := startBroker(t, path, cfg.AdminSocket)
	s := b.waitFull(t, 1)
	checkNoLeftovers(t, bed, s)
	if s.Pool.VMs[0].Name == vm {
		t.Errorf("the in-use VM %s of the killed broker was kept", vm)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Errorf("the in-use VM's overlay %s: %v, want it deleted", overlay, err)
	}
}
