package logout

import (
	"bufio"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// privateBus starts a dbus-daemon of our own and returns its address.
func privateBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Skip("no dbus-daemon (Debian package dbus)")
	}
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address", "--address=unix:dir="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		if a == "" {
			t.Fatal("dbus-daemon printed no address")
		}
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon printed no address in 10s")
	}
	return ""
}

// connect connects to the bus at addr.
func connect(t *testing.T, addr string) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("dbus.Connect(%s): %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// fakeLogind stands in for org.freedesktop.login1.Manager.
type fakeLogind struct {
	mu   sync.Mutex
	uids []uint32    // TerminateUser calls
	err  *dbus.Error // the reply, if not nil
}

func (f *fakeLogind) TerminateUser(uid uint32) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uids = append(f.uids, uid)
	return f.err
}

func (f *fakeLogind) fail(err *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeLogind) calls() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.uids)
}

// serveLogind exports a fakeLogind on the bus at addr under logind's name.
func serveLogind(t *testing.T, addr string) *fakeLogind {
	t.Helper()
	conn := connect(t, addr)
	f := &fakeLogind{}
	if err := conn.Export(f, login1Path, login1Manager); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(login1, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName(%s) = %v, %v, want primary owner", login1, reply, err)
	}
	return f
}

func TestLogind(t *testing.T) {
	addr := privateBus(t)
	client := connect(t, addr)
	if Available(client) {
		t.Errorf("Available() = true before the stand-in logind is up, want false")
	}
	f := serveLogind(t, addr)
	if !Available(client) {
		t.Errorf("Available() = false, want true")
	}
	l := &Logind{Conn: client}

	if err := l.TerminateUser(4242); err != nil {
		t.Errorf("TerminateUser(4242) = %v, want nil", err)
	}
	if got, want := f.calls(), []uint32{4242}; !slices.Equal(got, want) {
		t.Errorf("TerminateUser(4242) made logind see %v, want %v", got, want)
	}

	f.fail(dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Access denied"}))
	err := l.TerminateUser(4243)
	var derr dbus.Error
	if !errors.As(err, &derr) || derr.Name != "org.freedesktop.DBus.Error.AccessDenied" {
		t.Errorf("TerminateUser(4243) = %v, want logind's AccessDenied", err)
	}

	f.fail(dbus.NewError("org.freedesktop.login1.NoSuchUser", []any{"User 4244 unknown"}))
	if err := l.TerminateUser(4244); err != nil {
		t.Errorf("TerminateUser(4244) of a user logind does not know = %v, want nil", err)
	}
	if got, want := f.calls(), []uint32{4242, 4243, 4244}; !slices.Equal(got, want) {
		t.Errorf("logind saw TerminateUser calls %v, want %v", got, want)
	}
}
