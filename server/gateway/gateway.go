// Package gateway is the SPICE gateway: the one TCP port through which a
// kiosk reaches its VM's screen. It answers each channel's link handshake
// itself, with its own RSA key, checks the client's ticket against the
// session's lease, and only then logs in to the VM (on its unix socket, or
// over TLS on another host's backend network, with the VM's own password)
// and splices bytes both ways. Displays
// (probe.go) learns each VM's SPICE capabilities before the VM is clean.
package gateway

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"undervdi/server/accept"
	"undervdi/server/pool"
	"undervdi/server/spice"
)

// handshakeTimeout bounds a link handshake, on either side.
const handshakeTimeout = 10 * time.Second

// Dialer reaches a VM's SPICE server.
type Dialer interface {
	DialSpice(ctx context.Context, t pool.SpiceTarget) (net.Conn, error)
}

// SpiceDialer reaches a VM's SPICE server on its unix socket when the VM
// runs on the broker's own host, or on its TLS port on another host's
// backend address (docs/hosts.md): QEMU's SPICE TLS with the certificate
// libvirt's spice_tls gives it, which must be signed by Hosts and name the
// address dialled. The zero SpiceDialer reaches unix sockets only.
type SpiceDialer struct {
	Hosts *x509.CertPool // the CA of the hosts' SPICE certificates
}

// DialSpice implements Dialer. A dial, with its TLS handshake, takes at
// most handshakeTimeout: a host that accepts and then says nothing does
// not hold the gateway.
func (d SpiceDialer) DialSpice(ctx context.Context, t pool.SpiceTarget) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	switch {
	case t.Socket != "":
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", t.Socket)
	case t.TLS == "":
		return nil, errors.New("the VM has no SPICE display")
	case d.Hosts == nil:
		return nil, fmt.Errorf("SPICE at %s is on another host, and no CA for the hosts' SPICE certificates is configured", t.TLS)
	}
	host, _, err := net.SplitHostPort(t.TLS)
	if err != nil {
		return nil, err
	}
	td := tls.Dialer{Config: &tls.Config{RootCAs: d.Hosts, ServerName: host, MinVersion: tls.VersionTLS12}}
	return td.DialContext(ctx, "tcp", t.TLS)
}

// Sessions is what the gateway asks of the broker's leases; the
// *session.Manager has it. It speaks of addresses, tickets and VMs only.
type Sessions interface {
	// Lookup returns the VM a client at addr would reach, before its ticket
	// is read: the gateway's reply carries that VM's capabilities.
	Lookup(addr netip.Addr) (pool.VM, error)
	// Attach admits a channel from addr with ticket; hangUp closes it when
	// the session ends. It returns the VM, input to call on the visitor's
	// input, and detach to call when the connection closes.
	Attach(ctx context.Context, addr netip.Addr, ticket, channel string, main, secure bool, hangUp func()) (vm pool.VM, input, detach func(), err error)
}

// Audit records refused connections; *session.Audit has it.
type Audit interface {
	Refused(what, addr, kiosk, reason string)
}

// Gateway is the SPICE gateway.
type Gateway struct {
	// MaxConnsPerAddr caps the connections one address may hold open (a
	// viewer opens one per channel); 0 leaves them uncapped.
	MaxConnsPerAddr int

	key      *rsa.PrivateKey
	sessions Sessions
	displays *Displays
	audit    Audit
	log      *slog.Logger
}

// New returns a gateway with a fresh RSA key. displays is the one the pool
// checks VMs with.
func New(sessions Sessions, displays *Displays, audit Audit, log *slog.Logger) (*Gateway, error) {
	key, err := spice.NewKey()
	if err != nil {
		return nil, err
	}
	return &Gateway{key: key, sessions: sessions, displays: displays, audit: audit, log: log}, nil
}

// Serve accepts SPICE clients on ln until ctx ends: plaintext, which only a
// legacy kiosk's session takes where the site has TLS.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error { return g.serve(ctx, ln, false) }

// ServeTLS accepts SPICE clients over TLS on ln (a tls listener).
func (g *Gateway) ServeTLS(ctx context.Context, ln net.Listener) error { return g.serve(ctx, ln, true) }

func (g *Gateway) serve(ctx context.Context, ln net.Listener, secure bool) error {
	return accept.Port{
		Handle:     func(ctx context.Context, c net.Conn) { g.handle(ctx, c, secure) },
		MaxPerAddr: g.MaxConnsPerAddr,
		Name:       map[bool]string{false: "gateway", true: "gateway-tls"}[secure],
		Log:        g.log,
		Refuse: func(c net.Conn, open int) {
			g.audit.Refused("spice-link", accept.RemoteAddr(c).String(), "", fmt.Sprintf("%d connections from this address are open already", open))
		},
	}.Serve(ctx, ln)
}

// handle runs one SPICE channel connection from a client; secure says it
// came over TLS (the handshake happens at the first read, within the
// handshake deadline).
func (g *Gateway) handle(ctx context.Context, c net.Conn, secure bool) {
	defer c.Close()
	addr := accept.RemoteAddr(c)
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	s := spice.NewServerLink(c, g.key)
	m, err := s.ReadLinkMess()
	if err != nil {
		var pe *spice.ProtocolError
		if errors.As(err, &pe) {
			g.audit.Refused("spice-link", addr.String(), "", "malformed link message: "+err.Error())
		}
		return
	}
	// The audit line is written before the client hears the refusal, so the
	// record exists by the time anyone can act on the refusal.
	refuse := func(code spice.LinkError, reason string) {
		g.audit.Refused("spice-link", addr.String(), "", fmt.Sprintf("%v channel: %s", m.ChannelType, reason))
		s.Refuse(code)
	}
	// Before the ticket: an address without a lease never reaches a VM.
	vm, err := g.sessions.Lookup(addr)
	if err != nil {
		refuse(spice.LinkErrPermissionDenied, err.Error())
		return
	}
	caps, ok := g.displays.capsOf(vm.Name)
	if !ok {
		refuse(spice.LinkErrError, "the VM's SPICE capabilities are unknown")
		return
	}
	channelCaps, ok := caps[m.ChannelType]
	if !ok {
		refuse(spice.LinkErrChannelNotAvailable, "the VM has no such channel")
		return
	}
	common := spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSpice)
	if spice.HasCap(m.CommonCaps, spice.CapMiniHeader) {
		common = spice.SetCap(common, spice.CapMiniHeader) // the VM will agree: it decides from the client's caps
	}
	if err := s.Reply(common, channelCaps); err != nil {
		return
	}
	ticket, err := s.ReadTicket()
	if err != nil {
		g.audit.Refused("spice-link", addr.String(), "", fmt.Sprintf("%v channel: bad ticket: %v", m.ChannelType, err))
		return
	}
	conns := &closer{}
	conns.add(c)
	defer context.AfterFunc(ctx, conns.close)() // a stopping broker hangs up
	channel := fmt.Sprintf("%v:%d", m.ChannelType, m.ChannelID)
	vm, input, detach, err := g.sessions.Attach(ctx, addr, ticket, channel, m.ChannelType == spice.ChannelMain, secure, conns.close)
	if err != nil {
		g.audit.Refused("spice-link", addr.String(), "", fmt.Sprintf("%v channel: %v", m.ChannelType, err))
		s.Finish(spice.LinkErrPermissionDenied)
		return
	}
	defer detach()

	vmc, err := g.displays.dial.DialSpice(ctx, vm.Spice)
	if err != nil {
		s.Finish(spice.LinkErrError)
		g.log.Warn("cannot reach the VM's SPICE server", "vm", vm.Name, "err", err)
		return
	}
	if !conns.add(vmc) {
		return // the session ended meanwhile
	}
	vmc.SetDeadline(time.Now().Add(handshakeTimeout))
	reply, err := spice.Link(vmc, m, vm.Spice.Password)
	if err != nil {
		s.Finish(spice.LinkErrError)
		g.log.Warn("the VM refused the gateway's link", "vm", vm.Name, "channel", m.ChannelType, "err", err)
		return
	}
	if !capsEqual(reply.ChannelCaps, channelCaps) {
		g.log.Debug("VM's channel caps changed since the probe", "vm", vm.Name, "channel", m.ChannelType)
	}
	if err := s.Finish(spice.LinkErrOK); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	vmc.SetDeadline(time.Time{})
	g.log.Debug("linked", "vm", vm.Name, "channel", m.ChannelType, "id", m.ChannelID, "addr", addr)

	var toVM io.Reader = c
	if m.ChannelType == spice.ChannelInputs {
		// The visitor's keys and pointer: the idle clock of legacy kiosks.
		// Cheap to watch, and never bulk, so no zero-copy is lost.
		toVM = &activityReader{r: c, touch: input}
	}
	splice(c, vmc, toVM)
}

// splice copies both ways until either side closes. io.Copy between TCP and
// unix stream sockets uses splice(2) on Linux: no copy through user space.
func splice(client, vm net.Conn, fromClient io.Reader) {
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(vm, fromClient)
		closeWrite(vm)
		done <- struct{}{}
	}()
	go func() {
		io.Copy(client, vm)
		closeWrite(client)
		done <- struct{}{}
	}()
	<-done
	// One side is finished: a SPICE channel is over when either end leaves.
	client.Close()
	vm.Close()
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// closer closes a connection's two sockets when the session ends, including
// one opened after that.
type closer struct {
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func (c *closer) add(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		conn.Close()
		return false
	}
	c.conns = append(c.conns, conn)
	return true
}

func (c *closer) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, conn := range c.conns {
		conn.Close()
	}
}

// activityReader reports reads, at most once a second.
type activityReader struct {
	r     io.Reader
	touch func()
	last  time.Time
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 && time.Since(a.last) > time.Second {
		a.last = time.Now()
		a.touch()
	}
	return n, err
}
