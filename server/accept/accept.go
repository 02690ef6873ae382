// Package accept serves the broker's TCP ports: one goroutine per
// connection until the context ends, and the peer's address as the broker
// compares it (IPv4 unmapped).
package accept

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// Serve accepts connections on ln and handles each with handle, until ctx
// ends.
func Serve(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go handle(ctx, c)
	}
}

// RemoteAddr is the address c comes from, IPv4 unmapped.
func RemoteAddr(c net.Conn) netip.Addr { return addrOf(c.RemoteAddr()) }

// LocalAddr is the address c reached, IPv4 unmapped.
func LocalAddr(c net.Conn) netip.Addr { return addrOf(c.LocalAddr()) }

func addrOf(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
