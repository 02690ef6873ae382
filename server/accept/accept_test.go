package accept

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/syncbuf"
)

// flakyListener fails Accept with err the first n times, then accepts
// from the real listener.
type flakyListener struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.n.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.Listener.Accept()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestOutOfFilesIsNotTheEnd: a process out of file descriptors keeps
// accepting once it has some again; it does not stop serving the port.
func TestOutOfFilesIsNotTheEnd(t *testing.T) {
	ln := listen(t)
	fl := &flakyListener{Listener: ln, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
	fl.n.Store(8) // 5 ms doubling: about 1.3 s of backing off
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan struct{}, 1)
	done := make(chan error, 1)
	var log syncbuf.Buffer
	go func() {
		done <- Port{Handle: func(ctx context.Context, c net.Conn) { served <- struct{}{} },
			Name: "test", Log: slog.New(slog.NewTextHandler(&log, nil))}.Serve(ctx, fl)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-served:
	case err := <-done:
		t.Fatalf("Serve() = %v after EMFILE, want it to keep serving", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no connection served after the EMFILE errors")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve() after ctx ended = %v", err)
	}
	// Said once, for a person to act on; not once per failed accept.
	if n := strings.Count(log.String(), "out of file descriptors"); n != 1 || !strings.Contains(log.String(), "LimitNOFILE") {
		t.Errorf("log = %s\nwant one line about running out of file descriptors", log.String())
	}
}

func TestLasting(t *testing.T) {
	ln := listen(t)
	fl := &flakyListener{Listener: ln, err: errors.New("use of closed network connection, for real")}
	fl.n.Store(1)
	err := Port{Handle: func(context.Context, net.Conn) {}}.Serve(context.Background(), fl)
	if err == nil {
		t.Errorf("Serve() on a lasting error = nil, want the error")
	}
	ln.Close()
}

// TestCapPerAddress: an address over its cap is refused, told why, and may
// connect again once one of its connections closes.
func TestCapPerAddress(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	refused := make(chan int, 4)
	go Port{
		MaxPerAddr: 2,
		Handle: func(ctx context.Context, c net.Conn) {
			fmt.Fprintln(c, "welcome")
			<-release
		},
		Refuse: func(c net.Conn, open int) {
			fmt.Fprintln(c, "too many")
			refused <- open
		},
	}.Serve(ctx, ln)
	greet := func() (net.Conn, string) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, _ := io.ReadAtLeast(c, b, 1)
		return c, string(b[:n])
	}
	a, sa := greet()
	b, sb := greet()
	c, sc := greet()
	if sa != "welcome\n" || sb != "welcome\n" || sc != "too many\n" {
		t.Fatalf("three connections from one address were told %q %q %q, want the third refused", sa, sb, sc)
	}
	if open := <-refused; open != 2 {
		t.Errorf("Refuse saw %d open, want 2", open)
	}
	c.Close()
	release <- struct{}{} // one of the two ends
	a.Close()
	b.Close()
	time.Sleep(50 * time.Millisecond)
	d, sd := greet()
	defer d.Close()
	if sd != "welcome\n" {
		t.Errorf("after a connection closed the address was told %q, want welcome", sd)
	}
	close(release)
}
