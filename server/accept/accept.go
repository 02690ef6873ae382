// Package accept serves the broker's TCP ports: one goroutine per
// connection until the context ends, a cap on the connections one address
// may hold open, and an accept loop that outlives a flood (out of file
// descriptors, aborted connections) as net/http's does. It also gives the
// peer's address as the broker compares it (IPv4 unmapped).
package accept

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Port is how one of the broker's ports serves its connections.
type Port struct {
	// Handle runs one connection; Serve closes it when Handle returns.
	Handle func(context.Context, net.Conn)
	// MaxPerAddr caps the connections one address may have open at once;
	// 0 leaves them uncapped.
	MaxPerAddr int
	// Refuse, if set, runs (briefly, with a deadline set) for a connection
	// over the cap before it is closed: to say why, and to count it.
	Refuse func(c net.Conn, open int)
	// Name and Log, if set, report running out of file descriptors (at
	// most once a minute, with how often it happened meanwhile).
	Name string
	Log  *slog.Logger
}

// refuseTimeout bounds what Refuse may write.
const refuseTimeout = 2 * time.Second

// Serve accepts connections on ln until ctx ends. Connections reach
// Handle as the listener made them (a *net.TCPConn stays one: splice(2) and
// half-closes keep working).
func (p Port) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	caps := newCaps(p.MaxPerAddr, p.Refuse)
	var delay time.Duration
	var logged time.Time // when running out of descriptors was last logged
	missed := 0          // times since
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !Temporary(err) {
				return err
			}
			if p.Log != nil && (errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)) {
				if missed++; time.Since(logged) >= time.Minute {
					p.Log.Error("out of file descriptors: new connections wait until some close; "+
						"raise LimitNOFILE, or see who holds connections (ss -tnp)", "port", p.Name, "times", missed, "err", err)
					logged, missed = time.Now(), 0
				}
			}
			// Out of file descriptors, or a connection aborted before it
			// was accepted: wait a little and go on, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		release, ok := caps.take(c)
		if !ok {
			continue
		}
		go func() {
			defer release()
			defer c.Close()
			p.Handle(ctx, c)
		}()
	}
}

// Limit wraps ln, for an HTTP server, so that an address holds at most max
// connections open at once (0: no cap). A connection over the cap is
// passed to refuse (if not nil), with a short deadline, and closed; Accept
// goes on to the next.
func Limit(ln net.Listener, max int, refuse func(c net.Conn, open int)) net.Listener {
	if max <= 0 {
		return ln
	}
	return &limited{Listener: ln, caps: newCaps(max, refuse)}
}

type limited struct {
	net.Listener
	caps *caps
}

func (l *limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if release, ok := l.caps.take(c); ok {
			return &counted{Conn: c, release: release}, nil
		}
	}
}

// caps counts the connections open per address.
type caps struct {
	max    int
	refuse func(net.Conn, int)

	mu   sync.Mutex
	open map[netip.Addr]int
}

func newCaps(max int, refuse func(net.Conn, int)) *caps {
	return &caps{max: max, refuse: refuse, open: map[netip.Addr]int{}}
}

// take counts c against its address. Over the cap it refuses and closes c,
// in the background, and reports false; else it returns the function that
// gives the place back, once.
func (k *caps) take(c net.Conn) (release func(), ok bool) {
	if k.max <= 0 {
		return func() {}, true
	}
	addr := RemoteAddr(c)
	k.mu.Lock()
	n := k.open[addr]
	if n >= k.max {
		k.mu.Unlock()
		go func() {
			defer c.Close()
			if k.refuse != nil {
				c.SetDeadline(time.Now().Add(refuseTimeout)) // a refused peer may not even read
				k.refuse(c, n)
			}
		}()
		return nil, false
	}
	k.open[addr] = n + 1
	k.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			k.mu.Lock()
			defer k.mu.Unlock()
			if k.open[addr]--; k.open[addr] <= 0 {
				delete(k.open, addr)
			}
		})
	}, true
}

// counted is a connection that gives its place back once closed.
type counted struct {
	net.Conn
	release func()
}

func (c *counted) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// Serve accepts connections on ln and handles each with handle, with no
// cap per address, until ctx ends.
func Serve(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	return Port{Handle: handle}.Serve(ctx, ln)
}

// Temporary reports whether an Accept error passes: the process is out of
// file descriptors, the connection was aborted or reset before it was
// accepted, or a timeout.
func Temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
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
