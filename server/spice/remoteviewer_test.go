package spice

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startXvfb starts a virtual X server and returns its DISPLAY. It is
// killed (by its PID) when the test ends.
func startXvfb(t *testing.T) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-nolisten", "tcp", "-screen", "0", "800x600x24")
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatalf("starting Xvfb: %v", err)
	}
	w.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case n := <-line:
		if n == "" {
			t.Fatal("Xvfb did not report a display number")
		}
		return ":" + n
	case <-time.After(30 * time.Second):
		t.Fatal("Xvfb did not start in time")
	}
	return ""
}

// TestRemoteViewer checks the server side against spice-gtk's real client:
// remote-viewer, given a password in a .vv file, links its main channel to
// a ServerLink, whose decrypted ticket must be that password.
func TestRemoteViewer(t *testing.T) {
	for _, bin := range []string{"remote-viewer", "Xvfb"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (make deps): %v", bin, err)
		}
	}
	const password = "lease-7f3a9c-token_with.punct!"
	dir := t.TempDir()
	display := startXvfb(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	vv := filepath.Join(dir, "kiosk.vv")
	content := fmt.Sprintf("[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=%d\npassword=%s\ndelete-this-file=0\n", port, password)
	if err := os.WriteFile(vv, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "remote-viewer.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command("remote-viewer", vv)
	cmd.Env = append(os.Environ(),
		"DISPLAY="+display,
		"HOME="+dir,
		"XDG_RUNTIME_DIR="+dir,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"),
		"GDK_BACKEND=x11",
		"NO_AT_BRIDGE=1",
		"DBUS_SESSION_BUS_ADDRESS=unix:path="+filepath.Join(dir, "no-bus"),
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting remote-viewer: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("remote-viewer output:\n%s", b)
		}
	})

	ln.(*net.TCPListener).SetDeadline(time.Now().Add(60 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("accepting remote-viewer's connection: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))

	s := NewServerLink(conn, testKey())
	m, err := s.ReadLinkMess()
	if err != nil {
		t.Fatalf("ReadLinkMess() from remote-viewer = %v, want nil", err)
	}
	t.Logf("remote-viewer link message: version %d.%d, %v/%d, connection id %d, common caps %#x, channel caps %#x",
		m.Major, m.Minor, m.ChannelType, m.ChannelID, m.ConnectionID, m.CommonCaps, m.ChannelCaps)
	if m.ChannelType != ChannelMain || m.ConnectionID != 0 {
		t.Errorf("remote-viewer's first link = %v/%d with connection id %d, want main with 0", m.ChannelType, m.ChannelID, m.ConnectionID)
	}
	// Reply like spice-server: its common caps, with MINI_HEADER only if
	// the client has it, and its main channel caps.
	common := Caps(CapProtocolAuthSelection, CapAuthSpice)
	if HasCap(m.CommonCaps, CapMiniHeader) {
		common = SetCap(common, CapMiniHeader)
	}
	if err := s.Reply(common, []uint32{0xf}); err != nil {
		t.Fatalf("Reply() = %v", err)
	}
	t.Logf("auth selection: %v, mini header: %v", s.AuthSelection(), s.MiniHeader())
	got, err := s.ReadTicket()
	if err != nil {
		t.Fatalf("ReadTicket() from remote-viewer = %v, want nil", err)
	}
	if got != password {
		t.Errorf("ReadTicket() from remote-viewer = %q, want %q", got, password)
	}
	if err := s.Finish(LinkErrOK); err != nil {
		t.Errorf("Finish(OK) = %v", err)
	}
}
