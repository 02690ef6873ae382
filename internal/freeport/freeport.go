// Package freeport finds TCP ports free on loopback, for tests and the demo
// that must name ports in a configuration before anything listens.
package freeport

import (
	"net"
	"testing"
)

// Get returns n distinct ports free on 127.0.0.1 now: each listener is
// held until all are chosen.
func Get(n int) ([]int, error) {
	var out []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// Port returns a port free on 127.0.0.1 now, failing t if there is none.
func Port(t testing.TB) int {
	t.Helper()
	ports, err := Get(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}
