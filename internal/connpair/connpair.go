// Package connpair gives fuzz tests of network handlers a connection
// without a port: a pair of connected unix stream sockets, the server's end
// saying it comes from any address. Tens of thousands of TCP connections
// would leave the loopback's ports in TIME_WAIT.
package connpair

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
)

// New returns two connected unix stream sockets: the client's end (which
// can CloseWrite) and the server's end, whose RemoteAddr is from.
func New(t testing.TB, from netip.AddrPort) (client *net.UnixConn, server net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0].(*net.UnixConn), fromAddr{conns[1], net.TCPAddrFromAddrPort(from)}
}

// fromAddr is a connection that says it comes from addr.
type fromAddr struct {
	net.Conn
	addr net.Addr
}

func (c fromAddr) RemoteAddr() net.Addr { return c.addr }
