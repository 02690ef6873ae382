package gateway

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"undervdi/server/siteca"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testlog"
	"undervdi/kioskproto"
	"undervdi/server/accept"
	"undervdi/server/config"
	"undervdi/server/pool/pooltest"
	"undervdi/server/session"
	"undervdi/server/spice"
)

const (
	vmPassword = "vm-secret"
	token      = "0123456789abcdef"
)

// fakeVM is a SPICE server on a unix socket: it links with vmPassword and
// then echoes. It counts the links that got past the ticket: a refused
// client must never add one.
type fakeVM struct {
	socket   string
	channels map[spice.ChannelType]bool
	authed   atomic.Int32
	stream   int64 // if set, a display link gets this many bytes, then EOF
	tcp      string
}

func startFakeVM(t testing.TB) *fakeVM {
	t.Helper()
	key, err := spice.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	vm := &fakeVM{socket: filepath.Join(t.TempDir(), "spice.sock"),
		channels: map[spice.ChannelType]bool{spice.ChannelMain: true, spice.ChannelDisplay: true, spice.ChannelInputs: true}}
	ln, err := net.Listen("unix", vm.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// SPICE on TCP too, as the original ran it: the baseline the gateway is
	// compared with.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	vm.tcp = tcp.Addr().String()
	go vm.serve(tcp, key)
	go vm.serve(ln, key)
	return vm
}

func (vm *fakeVM) serve(ln net.Listener, key *rsa.PrivateKey) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			s := spice.NewServerLink(c, key)
			m, err := s.ReadLinkMess()
			if err != nil {
				return
			}
			if !vm.channels[m.ChannelType] {
				return // as spice-server: no reply for a channel it lacks
			}
			if s.Reply(spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSpice, spice.CapMiniHeader), spice.Caps(uint(m.ChannelType))) != nil {
				return
			}
			pw, err := s.ReadTicket()
			if err != nil {
				return // a probe hangs up here
			}
			if pw != vmPassword {
				s.Finish(spice.LinkErrPermissionDenied)
				return
			}
			vm.authed.Add(1)
			s.Finish(spice.LinkErrOK)
			if vm.stream > 0 && m.ChannelType == spice.ChannelDisplay {
				chunk := make([]byte, 1<<20)
				for left := vm.stream; left > 0; left -= int64(len(chunk)) {
					if _, err := c.Write(chunk[:min(left, int64(len(chunk)))]); err != nil {
						return
					}
				}
				return
			}
			io.Copy(c, c)
		}()
	}
}

type harness struct {
	t        testing.TB
	vm       *fakeVM
	pool     *pooltest.Pool
	m        *session.Manager
	gw       *Gateway
	displays *Displays
	addr     string // the gateway
	kiosk    string // the kiosk protocol
	audit    *syncbuf.Buffer
	// tlsAddr is the gateway's TLS port, and clientTLS a kiosk's TLS to it.
	tlsAddr   string
	clientTLS *tls.Config
}

func logger() *slog.Logger { return testlog.Logger() }

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, vm: startFakeVM(t), audit: &syncbuf.Buffer{}}
	h.pool = pooltest.New(2, h.vm.socket, vmPassword)
	reg, _ := session.NewRegistry([]config.Kiosk{{ID: "k1", Address: "127.0.0.1", Token: token}})
	audit := session.NewAudit(h.audit, logger())
	h.m = session.New(session.Config{ConnectWindow: 5 * time.Second, Grace: 50 * time.Millisecond, Heartbeat: time.Second,
		HeartbeatTimeout: 5 * time.Second, IdleLimit: time.Minute, QueueLimit: 10, GatewayPort: 1}, h.pool, reg, audit, logger())
	h.pool.Sink = h.m.VMEnded
	h.displays = NewDisplays(SpiceDialer{})
	gw, err := New(h.m, h.displays, audit, logger())
	if err != nil {
		t.Fatal(err)
	}
	h.gw = gw
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The pool's last check before a VM is clean.
	for _, vm := range h.pool.VMs() {
		if err := h.displays.Prepare(ctx, vm); err != nil {
			t.Fatalf("Prepare(%s) = %v", vm.Name, err)
		}
	}
	go h.m.Run(ctx)
	site, _, err := siteca.Ensure(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	h.clientTLS = &tls.Config{RootCAs: site.Pool(), ServerName: siteca.ServerName}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{site.Certificate}}
	for _, s := range []struct {
		addr  *string
		serve func(net.Listener)
	}{
		{&h.addr, func(ln net.Listener) { gw.Serve(ctx, ln) }},
		{&h.tlsAddr, func(ln net.Listener) { gw.ServeTLS(ctx, tls.NewListener(ln, serverTLS)) }},
		{&h.kiosk, func(ln net.Listener) { accept.Serve(ctx, ln, h.m.ServeKiosk) }},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*s.addr = ln.Addr().String()
		go s.serve(ln)
	}
	return h
}

// offer gets a session for kiosk k1 and returns its ticket and the kiosk's
// client, which heartbeats for as long as the test runs.
func (h *harness) offer() (string, *kioskproto.Client) {
	h.t.Helper()
	c, err := kioskproto.Dialer{Addr: h.kiosk}.Dial(context.Background(), "k1", token, "test")
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	c.Request(time.Time{})
	for m := range c.Messages() {
		if m.Type == kioskproto.TOffer {
			return m.Offer.Ticket, c
		}
	}
	h.t.Fatalf("no offer: %v", c.Err())
	return "", nil
}

// link connects to the gateway as a SPICE client from address from.
func (h *harness) link(from string, t spice.ChannelType, ticket string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m := &spice.LinkMess{ChannelType: t, CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSASL, spice.CapMiniHeader)}
	if _, err := spice.Link(c, m, ticket); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	h.t.Cleanup(func() { c.Close() })
	return c, nil
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("echo through the gateway = %q, %v; want %q", b, err, msg)
	}
}

func TestLinkAndSplice(t *testing.T) {
	h := newHarness(t)
	ticket, _ := h.offer()
	main, err := h.link("127.0.0.1", spice.ChannelMain, ticket)
	if err != nil {
		t.Fatalf("main link = %v", err)
	}
	echo(t, main, "hello VM")
	display, err := h.link("127.0.0.1", spice.ChannelDisplay, ticket)
	if err != nil {
		t.Fatalf("display link = %v", err)
	}
	echo(t, display, "frames")
	if n := h.vm.authed.Load(); n != 2 {
		t.Errorf("the VM saw %d authenticated links, want 2", n)
	}
	if !h.pool.HasEvent("used vm-001") {
		t.Errorf("the first link did not mark the VM used: %v", h.pool.Log())
	}
}

func TestRefusedLinksNeverReachTheVM(t *testing.T) {
	h := newHarness(t)
	ticket, kiosk := h.offer()
	for _, tc := range []struct {
		name, from, ticket string
		ch                 spice.ChannelType
		want               spice.LinkError
	}{
		{"no lease for the address", "127.0.0.2", ticket, spice.ChannelMain, spice.LinkErrPermissionDenied},
		{"wrong ticket", "127.0.0.1", "not-the-ticket", spice.ChannelMain, spice.LinkErrPermissionDenied},
		{"display before main", "127.0.0.1", ticket, spice.ChannelDisplay, spice.LinkErrPermissionDenied},
		{"channel the VM lacks", "127.0.0.1", ticket, spice.ChannelUSBRedir, spice.LinkErrChannelNotAvailable},
	} {
		_, err := h.link(tc.from, tc.ch, tc.ticket)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: link = %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := h.vm.authed.Load(); n != 0 {
		t.Errorf("refused clients reached the VM %d times", n)
	}
	if h.pool.HasEvent("used") {
		t.Errorf("a refused link marked the VM used: %v", h.pool.Log())
	}

	// The right client gets in; a second one cannot take over.
	if _, err := h.link("127.0.0.1", spice.ChannelMain, ticket); err != nil {
		t.Fatalf("main link = %v", err)
	}
	if _, err := h.link("127.0.0.1", spice.ChannelMain, ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
		t.Errorf("takeover: link = %v, want permission denied", err)
	}
	// After the session, the ticket opens nothing.
	kiosk.Close()
	waitEnded(t, h)
	if _, err := h.link("127.0.0.1", spice.ChannelMain, ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
		t.Errorf("replayed ticket: link = %v, want permission denied", err)
	}
	if n := h.vm.authed.Load(); n != 1 {
		t.Errorf("the VM saw %d authenticated links, want only the kiosk's", n)
	}
	audit := h.audit.Bytes()
	if n := bytes.Count(audit, []byte(`"what":"spice-link"`)); n != 6 {
		t.Errorf("%d refused-link audit lines, want 6:\n%s", n, h.audit)
	}
	if bytes.Contains(audit, []byte(ticket)) {
		t.Errorf("the audit log contains the ticket")
	}
}

func waitEnded(t *testing.T, h *harness) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.pool.HasEvent("ended vm-001") {
		if time.Now().After(deadline) {
			t.Fatalf("session did not end: %v", h.pool.Log())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSessionEndClosesConnections(t *testing.T) {
	h := newHarness(t)
	ticket, _ := h.offer()
	main, err := h.link("127.0.0.1", spice.ChannelMain, ticket)
	if err != nil {
		t.Fatal(err)
	}
	h.pool.GuestStops("vm-001")
	main.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := main.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read after the guest stopped = %v, want EOF: the gateway must close the session's connections", err)
	}
}

func TestViewerGoneEndsSession(t *testing.T) {
	h := newHarness(t)
	ticket, _ := h.offer()
	main, err := h.link("127.0.0.1", spice.ChannelMain, ticket)
	if err != nil {
		t.Fatal(err)
	}
	main.Close()
	waitEnded(t, h)
	if !h.pool.HasEvent("ended vm-001: the viewer disconnected") {
		t.Errorf("pool log = %v", h.pool.Log())
	}
}

func TestProbeSeesOnlyExistingChannels(t *testing.T) {
	h := newHarness(t)
	h.offer()
	caps, ok := h.displays.capsOf("vm-001")
	if !ok {
		t.Fatal("no caps learned before the offer")
	}
	for _, ch := range []spice.ChannelType{spice.ChannelMain, spice.ChannelDisplay, spice.ChannelInputs} {
		if !spice.HasCap(caps[ch], uint(ch)) {
			t.Errorf("caps of %v = %v, want the VM's", ch, caps[ch])
		}
	}
	if _, ok := caps[spice.ChannelUSBRedir]; ok {
		t.Errorf("the probe found a usbredir channel the VM lacks")
	}
	if n := h.vm.authed.Load(); n != 0 {
		t.Errorf("probing authenticated %d times; it must hang up before the ticket", n)
	}
}
