package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"

	"undervdi/server/accept"
)

// Listeners are the Guard's sockets on one of its addresses.
type Listeners struct {
	dnsUDP                net.PacketConn
	dnsTCP, http, tls, px net.Listener
}

// Listen opens the Guard's ports on addr, where clones reach the broker
// (a plan's Broker): DNS (UDP and TCP), 80, 443 and the explicit proxy's.
// The address must be up: a guest network's gateway once the network is
// started, or the broker's backend address. Ports under 1024 need
// CAP_NET_BIND_SERVICE (the unit grants it).
func (g *Guard) Listen(addr netip.Addr) (*Listeners, error) {
	at := func(port int) string { return netip.AddrPortFrom(addr, uint16(port)).String() }
	var ls Listeners
	var err error
	fail := func(what string, err error) (*Listeners, error) {
		ls.Close()
		return nil, fmt.Errorf("guest network: listening on %s for %s: %w", addr, what, err)
	}
	if ls.dnsUDP, err = net.ListenPacket("udp4", at(53)); err != nil {
		return fail("DNS", err)
	}
	if ls.dnsTCP, err = net.Listen("tcp4", at(53)); err != nil {
		return fail("DNS", err)
	}
	if ls.http, err = net.Listen("tcp4", at(PortHTTP)); err != nil {
		return fail("HTTP", err)
	}
	if ls.tls, err = net.Listen("tcp4", at(PortHTTPS)); err != nil {
		return fail("HTTPS", err)
	}
	if ls.px, err = net.Listen("tcp4", at(g.cfg.Plans[0].ProxyPort)); err != nil {
		return fail("the explicit proxy", err)
	}
	return &ls, nil
}

// Close closes every socket opened.
func (ls *Listeners) Close() {
	for _, c := range []interface{ Close() error }{ls.dnsUDP, ls.dnsTCP, ls.http, ls.tls, ls.px} {
		if c != nil {
			c.Close()
		}
	}
}

// maxConnsPerAddr caps the connections one clone holds open on each of
// the gateway's TCP ports: a guest cannot run the broker out of file
// descriptors, which kiosks and libvirt need too.
const maxConnsPerAddr = 64

// Serve serves on ls until ctx ends.
func (g *Guard) Serve(ctx context.Context, ls *Listeners) error {
	eg, ctx := errgroup.WithContext(ctx)
	capped := func(ln net.Listener) net.Listener { return accept.Limit(ln, maxConnsPerAddr, nil) }
	udp := &dns.Server{PacketConn: ls.dnsUDP, Handler: g}
	tcp := &dns.Server{Listener: capped(ls.dnsTCP), Handler: g, ReadTimeout: 5 * time.Second}
	srv := func() *http.Server {
		return &http.Server{Handler: g, ReadHeaderTimeout: handshakeWindow, IdleTimeout: time.Minute,
			ErrorLog: nil, BaseContext: func(net.Listener) context.Context { return ctx }}
	}
	web, proxy := srv(), srv()
	eg.Go(func() error { return ignoreClosed(udp.ActivateAndServe()) })
	eg.Go(func() error { return ignoreClosed(tcp.ActivateAndServe()) })
	eg.Go(func() error { return ignoreClosed(web.Serve(capped(ls.http))) })
	eg.Go(func() error { return ignoreClosed(proxy.Serve(capped(ls.px))) })
	eg.Go(func() error {
		return accept.Port{Handle: func(_ context.Context, c net.Conn) { g.ServeTLS(c) }, MaxPerAddr: maxConnsPerAddr,
			Name: "guest network HTTPS", Log: g.log}.Serve(ctx, ls.tls)
	})
	eg.Go(func() error {
		<-ctx.Done()
		ls.Close() // the DNS servers end on their closed sockets, started or not
		web.Close()
		proxy.Close()
		return nil
	})
	return eg.Wait()
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
