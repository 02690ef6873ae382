package kioskd_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/poll"

	"undervdi/internal/kioskuser"
	"undervdi/kioskd"
	"undervdi/kioskd/config"
)

// TestRestartsDeadXServer runs kioskd owning its X server (as on the boot
// image) and kills that server: kioskd must start a new one and carry on.
// No broker runs: the kiosk sits in "unreachable", on the slideshow.
func TestRestartsDeadXServer(t *testing.T) {
	display := freeDisplay(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0") // a port with no broker behind it
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := config.Default()
	cfg.Server, cfg.Port, cfg.Kiosk, cfg.Token = "127.0.0.1", port, "k", "t"
	cfg.TLS = false // no broker at all: nothing to verify
	cfg.Display = display
	cfg.XServer = "Xvfb " + display + " -screen 0 320x240x24 -nolisten tcp -noreset"
	cfg.AdsURL, cfg.AdsDir, cfg.BackgroundDir, cfg.SessionDir = "off", t.TempDir(), t.TempDir(), t.TempDir()
	cfg.USBSysfs, cfg.USBAccess, cfg.Logind = "", "", "no"
	cfg.SessionUser = sessionUser(t)

	var mu sync.Mutex
	var states []kioskd.State
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- kioskd.Run(ctx, cfg, slog.New(slog.DiscardHandler), kioskd.Hooks{OnState: func(s kioskd.State) {
			mu.Lock()
			states = append(states, s)
			mu.Unlock()
		}})
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	unreachable := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range states {
			if s == kioskd.Unreachable {
				n++
			}
		}
		return n
	}
	poll.Until(t, 30*time.Second, "the kiosk on its own X server", func() bool { return unreachable() == 1 && xPID(display) != 0 })
	first := xPID(display)
	syscall.Kill(first, syscall.SIGKILL)
	poll.Until(t, 30*time.Second, "a new X server and the kiosk back on it", func() bool {
		pid := xPID(display)
		return pid != 0 && pid != first && unreachable() == 2
	})
	cancel()
	stopped = true
	if err := <-done; err != nil {
		t.Errorf("kioskd.Run = %v", err)
	}
	if pid := xPID(display); pid != 0 {
		t.Errorf("the X server (pid %d) outlived kioskd", pid)
	}
}

// xPID is the pid of the Xvfb serving display, or 0.
func xPID(display string) int {
	out, _ := exec.Command("pgrep", "-f", "^Xvfb "+display+" ").Output()
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}

// sessionUser is the dedicated user kioskd's visitors run as here.
func sessionUser(t *testing.T) string {
	u, err := kioskuser.Ensure()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func freeDisplay(t *testing.T) string {
	for range 100 {
		n := 200 + rand.IntN(300)
		if _, err := os.Stat(fmt.Sprintf("/tmp/.X%d-lock", n)); os.IsNotExist(err) {
			return ":" + strconv.Itoa(n)
		}
	}
	t.Fatal("no free X display")
	return ""
}

// TestWithoutCAOutOfOrder: a kiosk whose broker's CA is missing does not
// fall back to plaintext: it shows the slideshow, unavailable, and never
// reaches the broker.
func TestWithoutCAOutOfOrder(t *testing.T) {
	display := freeDisplay(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a plaintext "broker" that counts who comes
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	came := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			came <- struct{}{}
			c.Close()
		}
	}()
	cfg := config.Default()
	cfg.Server, cfg.Port, cfg.Kiosk, cfg.Token = "127.0.0.1", ln.Addr().(*net.TCPAddr).Port, "k", "t"
	cfg.CA = filepath.Join(t.TempDir(), "no-such-ca.pem")
	cfg.Display = display
	cfg.XServer = "Xvfb " + display + " -screen 0 320x240x24 -nolisten tcp -noreset"
	cfg.AdsURL, cfg.AdsDir, cfg.BackgroundDir, cfg.SessionDir = "off", t.TempDir(), t.TempDir(), t.TempDir()
	cfg.USBSysfs, cfg.USBAccess, cfg.Logind = "", "", "no"
	cfg.SessionUser = sessionUser(t)
	var mu sync.Mutex
	var states []kioskd.State
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- kioskd.Run(ctx, cfg, slog.New(slog.DiscardHandler), kioskd.Hooks{OnState: func(s kioskd.State) {
			mu.Lock()
			states = append(states, s)
			mu.Unlock()
		}})
	}()
	defer func() { cancel(); <-done }()
	poll.Until(t, 30*time.Second, "the kiosk out of order", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0 && states[len(states)-1] == kioskd.Unreachable
	})
	select {
	case <-came:
		t.Errorf("a kiosk with no CA connected to the broker anyway")
	case <-time.After(2 * time.Second):
	}
}
