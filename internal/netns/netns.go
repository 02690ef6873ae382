// Package netns makes a network namespace with a veth pair to the host: a
// second machine on the same box, for tests that need a client with another
// address. It uses iproute2 to set up and setns(2) to open sockets inside.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a network namespace linked to the host by a veth pair.
type NS struct {
	Name   string
	HostIP string // the host's end, e.g. 10.213.7.1
	NSIP   string // the namespace's end, e.g. 10.213.7.2
	host   string // host-side interface
	routes []string
}

// New creates a namespace; subnet picks 10.213.<subnet>.0/30 for the link.
func New(subnet int) (*NS, error) {
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	n := &NS{Name: "uvdi-" + id, HostIP: fmt.Sprintf("10.213.%d.1", subnet), NSIP: fmt.Sprintf("10.213.%d.2", subnet), host: "uv" + id}
	peer := "uvp" + id
	steps := [][]string{
		{"netns", "add", n.Name},
		{"link", "add", n.host, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", n.Name},
		{"addr", "add", n.HostIP + "/30", "dev", n.host},
		{"link", "set", n.host, "up"},
		{"-n", n.Name, "addr", "add", n.NSIP + "/30", "dev", peer},
		{"-n", n.Name, "link", "set", peer, "up"},
		{"-n", n.Name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			n.Close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return n, nil
}

// Route makes the namespace the host's way to prefix, whose addresses
// AddAddr gives it: a stand-in for a network beyond the host (the
// internet, say) that no packet of the test ever leaves the machine for.
func (n *NS) Route(prefix string, addrs ...string) error {
	for _, a := range addrs {
		if out, err := exec.Command("ip", "-n", n.Name, "addr", "add", a+"/32", "dev", "lo").CombinedOutput(); err != nil {
			return fmt.Errorf("ip -n %s addr add %s: %v: %s", n.Name, a, err, out)
		}
	}
	if out, err := exec.Command("ip", "route", "replace", prefix, "via", n.NSIP).CombinedOutput(); err != nil {
		return fmt.Errorf("ip route replace %s: %v: %s", prefix, err, out)
	}
	n.routes = append(n.routes, prefix)
	return nil
}

// Listen opens a listening socket inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Close removes the namespace, its link and its routes.
func (n *NS) Close() error {
	for _, r := range n.routes {
		exec.Command("ip", "route", "del", r, "via", n.NSIP).Run()
	}
	exec.Command("ip", "link", "del", n.host).Run()
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// Dial opens a connection from inside the namespace. The socket is made in
// the namespace (on a thread switched there for that moment); it then works
// from any goroutine.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// do runs f on a thread switched into the namespace, in a goroutine of its
// own: if the thread cannot be switched back, the goroutine ends still
// locked to it and Go retires the thread rather than reuse it.
func (n *NS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}
