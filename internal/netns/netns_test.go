package netns

import (
	"context"
	"net"
	"testing"
)

func TestDialFromNamespace(t *testing.T) {
	n, err := New(250)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ln, err := net.Listen("tcp", n.HostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	c, err := n.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := <-got; ip != n.NSIP {
		t.Errorf("connection came from %s, want the namespace's %s", ip, n.NSIP)
	}
	// Only that socket was the namespace's: this goroutine dials from the host.
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if ip := <-got; ip != n.HostIP {
		t.Errorf("a host connection came from %s, want the host's %s", ip, n.HostIP)
	}
}
