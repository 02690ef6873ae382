package session

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"undervdi/internal/poll"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testlog"
	"undervdi/kioskproto"
	"undervdi/server/config"
	"undervdi/server/pool"
	"undervdi/server/pool/pooltest"
	"undervdi/server/siteca"
)

const token = "0123456789abcdef"

// harness runs a Manager on loopback with a fake pool.
type harness struct {
	t      testing.TB
	m      *Manager
	pool   *pooltest.Pool
	addr   string // kiosk protocol
	legacy string // signal port
	audit  *syncbuf.Buffer
}

// records decodes the audit log written so far.
func records(audit *syncbuf.Buffer) []AuditRecord {
	var out []AuditRecord
	sc := bufio.NewScanner(bytes.NewReader(audit.Bytes()))
	for sc.Scan() {
		var r AuditRecord
		json.Unmarshal(sc.Bytes(), &r)
		out = append(out, r)
	}
	return out
}

func testConfig() Config {
	return Config{
		ConnectWindow: 2 * time.Second, Grace: 100 * time.Millisecond,
		Heartbeat: time.Second, HeartbeatTimeout: 3 * time.Second, IdleLimit: time.Minute,
		QueueLimit: 100, GatewayPort: 5906,
	}
}

func logger() *slog.Logger { return testlog.Logger() }

func newHarness(t testing.TB, vms int, cfg Config) *harness {
	t.Helper()
	reg, err := NewRegistry([]config.Kiosk{
		{ID: "k1", Address: "127.0.0.1", Token: token},
		{ID: "far", Address: "10.9.9.9", Token: token},
		{ID: "pool-*", Address: "127.0.0.0/8", Token: token, MaxKiosks: 64},
		{ID: "few-*", Address: "127.0.0.0/8", Token: token, MaxKiosks: 2},
		{Address: "127.0.0.1", Legacy: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, pool: pooltest.New(vms, "/nonexistent/spice.sock", "pw"), audit: &syncbuf.Buffer{}}
	h.m = New(cfg, h.pool, reg, NewAudit(h.audit, logger()), logger())
	h.pool.Sink = h.m.VMEnded
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go h.m.Run(ctx)
	for _, s := range []struct {
		addr  *string
		serve func(context.Context, net.Listener) error
	}{{&h.addr, h.m.KioskPort().Serve}, {&h.legacy, h.m.LegacyPort().Serve}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*s.addr = ln.Addr().String()
		go s.serve(ctx, ln)
	}
	return h
}

// kiosk is a test client of the kiosk protocol.
type kiosk struct {
	t    testing.TB
	c    net.Conn
	msgs chan *kioskproto.Message
}

// dial connects from the loopback address from (127.0.0.x).
func (h *harness) dial(from string) *kiosk {
	h.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	return newKiosk(h.t, c)
}

// newKiosk is a test client on c, which it closes when t ends.
func newKiosk(t testing.TB, c net.Conn) *kiosk {
	t.Cleanup(func() { c.Close() })
	k := &kiosk{t: t, c: c, msgs: make(chan *kioskproto.Message, 64)}
	go func() {
		defer close(k.msgs)
		for {
			m, err := kioskproto.ReadMessage(c)
			if err != nil {
				return
			}
			k.msgs <- m
		}
	}()
	return k
}

func (k *kiosk) send(m *kioskproto.Message) {
	k.t.Helper()
	if err := kioskproto.WriteMessage(k.c, m); err != nil {
		k.t.Fatal(err)
	}
}

// next returns the next message that is not a heartbeat, or nil if the
// connection closed.
func (k *kiosk) next() *kioskproto.Message {
	k.t.Helper()
	for {
		select {
		case m, ok := <-k.msgs:
			if !ok {
				return nil
			}
			if m.Type != kioskproto.THeartbeat {
				return m
			}
		case <-time.After(10 * time.Second):
			k.t.Fatal("no message from the broker")
		}
	}
}

// until skips messages until one of type t.
func (k *kiosk) until(t kioskproto.Type) *kioskproto.Message {
	k.t.Helper()
	for {
		m := k.next()
		if m == nil {
			k.t.Fatalf("connection closed while waiting for %s", t)
		}
		if m.Type == t {
			return m
		}
	}
}

// session connects as id from 127.0.0.1, requests a VM and returns its offer.
func (h *harness) session(id, from string) (*kiosk, *kioskproto.Offer) {
	h.t.Helper()
	k := h.dial(from)
	k.send(kioskproto.NewHello(id, token, "test"))
	if m := k.next(); m == nil || m.Type != kioskproto.TWelcome {
		h.t.Fatalf("hello answered with %+v, want welcome", m)
	}
	k.send(kioskproto.NewRequest())
	return k, k.until(kioskproto.TOffer).Offer
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestHelloRefused(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	for _, tc := range []struct {
		hello *kioskproto.Message
		code  string
		says  string
	}{
		// The kiosk hears the same words for each: not whether the id
		// exists, nor which addresses it may use. The audit says which.
		{kioskproto.NewHello("nobody", token, ""), kioskproto.CodeUnknown, RefusedHello},
		{kioskproto.NewHello("k1", "wrong-token-0000", ""), kioskproto.CodeUnknown, RefusedHello},
		{kioskproto.NewHello("far", token, ""), kioskproto.CodeUnknown, RefusedHello},
		{&kioskproto.Message{Type: kioskproto.THello, Hello: &kioskproto.Hello{Version: 9, Kiosk: "k1", Token: token}}, kioskproto.CodeBadVersion, "version 9"},
		{kioskproto.NewRequest(), kioskproto.CodeBadMessage, "first message must be hello"},
	} {
		k := h.dial("127.0.0.1")
		k.send(tc.hello)
		m := k.next()
		if m == nil || m.Type != kioskproto.TError || m.Error.Code != tc.code || !strings.Contains(m.Error.Message, tc.says) {
			t.Errorf("%+v answered %+v, want error %s saying %q", tc.hello, m, tc.code, tc.says)
		}
		if m := k.next(); m != nil {
			t.Errorf("connection still open after a refusal: got %+v", m)
		}
	}
	refused := 0
	var reasons []string
	for _, r := range records(h.audit) {
		if r.Event == "refused" && r.What == "kiosk" {
			refused++
			reasons = append(reasons, r.Reason)
		}
		if strings.Contains(fmt.Sprint(r), token) {
			t.Errorf("audit record carries the token: %+v", r)
		}
	}
	if refused != 5 {
		t.Errorf("%d refusal audit lines, want 5", refused)
	}
	for _, want := range []string{`kiosk "nobody" is not known`, `wrong token for kiosk "k1"`, `may not connect from 127.0.0.1`} {
		if !strings.Contains(strings.Join(reasons, "\n"), want) {
			t.Errorf("audit reasons %q lack %q", reasons, want)
		}
	}
}

func TestSessionLifecycle(t *testing.T) {
	h := newHarness(t, 2, testConfig())
	k, offer := h.session("k1", "127.0.0.1")
	if offer.Host != "127.0.0.1" || offer.Port != 5906 || len(offer.Ticket) < 30 || !offer.Expires.After(time.Now()) {
		t.Errorf("offer = %+v", offer)
	}
	ctx := context.Background()
	noop := func() {}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), "wrong", "main:0", true, false, noop); !errors.Is(err, ErrBadTicket) {
		t.Errorf("Attach(wrong ticket) = %v, want ErrBadTicket", err)
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.2"), offer.Ticket, "main:0", true, false, noop); !errors.Is(err, ErrNoLease) {
		t.Errorf("Attach(other address) = %v, want ErrNoLease", err)
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "display:0", false, false, noop); !errors.Is(err, ErrNoMain) {
		t.Errorf("Attach(display before main) = %v, want ErrNoMain", err)
	}
	if h.pool.HasEvent("used") {
		t.Fatalf("VM marked used before any link: %v", h.pool.Log())
	}
	vm, _, detachMain, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, false, noop)
	if err != nil {
		t.Fatalf("Attach(main) = %v", err)
	}
	if !h.pool.HasEvent("used " + vm.Name) {
		t.Errorf("first link did not mark %s used: %v", vm.Name, h.pool.Log())
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, false, noop); !errors.Is(err, ErrTakeover) {
		t.Errorf("second Attach(main) = %v, want ErrTakeover", err)
	}
	_, _, detachDisplay, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "display:0", false, false, noop)
	if err != nil {
		t.Fatalf("Attach(display) = %v", err)
	}
	detachDisplay()
	detachMain()
	end := k.until(kioskproto.TEnd).End
	if end.Reason != "the viewer disconnected" {
		t.Errorf("end reason = %q", end.Reason)
	}
	poll.Until(t, 10*time.Second, "the VM destroyed", func() bool { return h.pool.HasEvent("ended " + vm.Name) })
	// A ticket replayed after its session ended is refused.
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, false, noop); !errors.Is(err, ErrNoLease) {
		t.Errorf("Attach(replayed ticket) = %v, want ErrNoLease", err)
	}
	poll.Until(t, 10*time.Second, "the audit record", func() bool {
		for _, r := range records(h.audit) {
			if r.Event == "session" && r.VM == vm.Name {
				return r.Wiped && r.Linked != nil && r.Kiosk == "k1" && r.Reason == "the viewer disconnected"
			}
		}
		return false
	})
}

func TestConnectWindowReturnsVM(t *testing.T) {
	cfg := testConfig()
	cfg.ConnectWindow = 100 * time.Millisecond
	h := newHarness(t, 1, cfg)
	k, _ := h.session("k1", "127.0.0.1")
	if end := k.until(kioskproto.TEnd).End; !strings.Contains(end.Reason, "not linked within the connect window") {
		t.Errorf("end = %q", end.Reason)
	}
	poll.Until(t, 10*time.Second, "the unused VM released", func() bool { return h.pool.HasEvent("released vm-001") })
	if h.pool.HasEvent("ended") {
		t.Errorf("an unused VM was destroyed: %v", h.pool.Log())
	}
}

func TestLeaseLivesWithConnection(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	k, offer := h.session("k1", "127.0.0.1")
	if _, _, _, err := h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {}); err != nil {
		t.Fatal(err)
	}
	k.c.Close()
	poll.Until(t, 10*time.Second, "the used VM destroyed", func() bool { return h.pool.HasEvent("ended vm-001: kiosk connection lost") })
}

func TestHeartbeatsStop(t *testing.T) {
	cfg := testConfig()
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	h := newHarness(t, 1, cfg)
	_, offer := h.session("k1", "127.0.0.1")
	h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {})
	poll.Until(t, 10*time.Second, "the session ended", func() bool { return h.pool.HasEvent("ended vm-001: kiosk heartbeats stopped") })
}

func TestIdleFromHeartbeats(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	k, offer := h.session("k1", "127.0.0.1")
	h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {})
	k.send(kioskproto.NewHeartbeat(10*time.Second, ""))
	k.send(kioskproto.NewHeartbeat(61*time.Second, ""))
	if end := k.until(kioskproto.TEnd).End; end.Reason != "idle for 1m1s" {
		t.Errorf("end = %q, want idle for 1m1s", end.Reason)
	}
}

func TestGuestPowerOffTellsKiosk(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	k, offer := h.session("k1", "127.0.0.1")
	closed := make(chan struct{})
	vm, _, _, _ := h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() { close(closed) })
	h.pool.GuestStops(vm.Name)
	if end := k.until(kioskproto.TEnd).End; end.Reason != "guest powered off or rebooted" {
		t.Errorf("end = %q", end.Reason)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Errorf("the session's SPICE connection was not closed")
	}
}

func TestKioskEndsSession(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	k, offer := h.session("k1", "127.0.0.1")
	h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {})
	k.send(kioskproto.NewEnd("visitor pressed finish"))
	poll.Until(t, 10*time.Second, "the VM destroyed", func() bool {
		return h.pool.HasEvent("ended vm-001: the kiosk ended the session: visitor pressed finish")
	})
	// The connection stays for the next visitor.
	k.send(kioskproto.NewRequest())
	h.pool.Add()
	if o := k.until(kioskproto.TOffer).Offer; o.Ticket == offer.Ticket {
		t.Errorf("the next session reused the ticket")
	}
}

// TestOutOfOrderKiosk: a kiosk that reports a logout it could not complete
// is audited and shown out of order, and gets no session until it reports
// itself in order again.
func TestOutOfOrderKiosk(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, "test"))
	k.until(kioskproto.TWelcome)
	const fault = `logout incomplete: wipe /run/undervdi/session: still holds ["leftover"]`
	k.send(kioskproto.NewHeartbeat(0, fault))
	k.send(kioskproto.NewHeartbeat(0, fault)) // said again: audited once
	k.send(kioskproto.NewRequest())
	if e := k.until(kioskproto.TError).Error; e.Code != kioskproto.CodeUnavailable || !strings.Contains(e.Message, "out of order") {
		t.Errorf("request from an out-of-order kiosk: %+v", e)
	}
	ks := h.m.Kiosks()
	if len(ks) != 1 || ks[0].ID != "k1" || ks[0].Fault != fault || ks[0].FaultSince == nil {
		t.Errorf("status kiosks = %+v, want k1 out of order", ks)
	}
	k.send(kioskproto.NewHeartbeat(0, ""))
	k.send(kioskproto.NewRequest())
	k.until(kioskproto.TOffer)
	if ks := h.m.Kiosks(); len(ks) != 1 || ks[0].Fault != "" || !ks[0].Session {
		t.Errorf("status kiosks = %+v, want k1 in order, in a session", ks)
	}
	var events []string
	for _, r := range records(h.audit) {
		if r.Kiosk == "k1" {
			events = append(events, r.Event+": "+r.Reason)
		}
	}
	want := []string{"out-of-order: " + fault, "in-order: the kiosk completed its logout"}
	if !slices.Equal(events, want) {
		t.Errorf("audit = %q, want %q", events, want)
	}
}

// TestUnavailableIsTold: a request while the pool is unavailable (libvirt
// lost, a kiosk's host group down) is told so at once, and served once the
// pool is back.
func TestUnavailableIsTold(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	h.pool.SetDown(fmt.Errorf("%w: libvirt connection lost", pool.ErrUnavailable))
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, ""))
	k.until(kioskproto.TWelcome)
	k.send(kioskproto.NewRequest())
	if st := k.until(kioskproto.TStatus).Status; st.State != kioskproto.StateQueued || st.Message != "Service temporarily unavailable" {
		t.Errorf("status = %+v, want queued: unavailable", st)
	}
	h.pool.SetDown(nil)
	k.until(kioskproto.TOffer)
}

func TestFairQueue(t *testing.T) {
	h := newHarness(t, 0, testConfig())
	var ks []*kiosk
	for i := range 4 {
		k := h.dial("127.0.0.1")
		k.send(kioskproto.NewHello(fmt.Sprintf("pool-%d", i), token, ""))
		k.until(kioskproto.TWelcome)
		k.send(kioskproto.NewRequest())
		st := k.until(kioskproto.TStatus).Status
		if i == 0 && st.State != kioskproto.StatePreparing {
			t.Errorf("head's status = %+v, want preparing", st)
		}
		if i > 0 && (st.State != kioskproto.StateQueued || st.Ahead != i) {
			t.Errorf("kiosk %d status = %+v, want queued with %d ahead", i, st, i)
		}
		ks = append(ks, k)
	}
	// VMs become clean one by one: kiosks are served in arrival order.
	for i, k := range ks {
		vm := h.pool.Add()
		if l := k.until(kioskproto.TOffer).Offer; l == nil {
			t.Fatalf("kiosk %d got no offer", i)
		}
		_ = vm
		for _, later := range ks[i+1:] {
			select {
			case m := <-later.msgs:
				if m != nil && m.Type == kioskproto.TOffer {
					t.Fatalf("a later kiosk got an offer before kiosk %d", i)
				}
			default:
			}
		}
	}
}

func TestManyKiosksAtOnce(t *testing.T) {
	cfg := testConfig()
	cfg.ConnectWindow = time.Minute // no VM comes back unused during the test
	h := newHarness(t, 10, cfg)
	type result struct {
		vm     string
		queued bool
	}
	results := make(chan result, 50)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			k := h.dial("127.0.0.1")
			k.send(kioskproto.NewHello(fmt.Sprintf("pool-%02d", i), token, ""))
			k.until(kioskproto.TWelcome)
			k.send(kioskproto.NewRequest())
			for {
				m := k.next()
				switch {
				case m == nil:
					t.Errorf("kiosk %d: connection closed", i)
					return
				case m.Type == kioskproto.TOffer:
					results <- result{vm: m.Offer.Lease}
					return
				case m.Type == kioskproto.TStatus:
					results <- result{queued: true}
					return
				}
			}
		})
	}
	wg.Wait()
	close(results)
	offers, queued := 0, 0
	for r := range results {
		if r.queued {
			queued++
		} else {
			offers++
		}
	}
	if offers+queued != 50 || offers != 10 {
		t.Errorf("%d offers and %d queue positions for 50 kiosks and 10 VMs", offers, queued)
	}
	for vm, n := range h.pool.Claimed() {
		if n != 1 {
			t.Errorf("%s claimed %d times", vm, n)
		}
	}
}

func TestBusyAndQueueLimit(t *testing.T) {
	cfg := testConfig()
	cfg.QueueLimit = 1
	h := newHarness(t, 0, cfg)
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, ""))
	k.until(kioskproto.TWelcome)
	k.send(kioskproto.NewRequest())
	k.until(kioskproto.TStatus)
	k.send(kioskproto.NewRequest())
	if m := k.until(kioskproto.TError); m.Error.Code != kioskproto.CodeBusy {
		t.Errorf("second request = %+v, want busy", m.Error)
	}
	k2 := h.dial("127.0.0.1")
	k2.send(kioskproto.NewHello("pool-2", token, ""))
	k2.until(kioskproto.TWelcome)
	k2.send(kioskproto.NewRequest())
	if m := k2.until(kioskproto.TError); m.Error.Code != kioskproto.CodeUnavailable {
		t.Errorf("request beyond the queue limit = %+v, want unavailable", m.Error)
	}
}

// TestOneConnectionPerKiosk: a second hello for a kiosk that is connected
// and heartbeating is refused, and its session goes on; once the first has
// missed its heartbeats (a kiosk that rebooted), a hello replaces it.
func TestOneConnectionPerKiosk(t *testing.T) {
	h := newHarness(t, 2, testConfig())
	old, _ := h.session("k1", "127.0.0.1")
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, ""))
	if m := k.next(); m == nil || m.Type != kioskproto.TError || m.Error.Code != kioskproto.CodeBusy {
		t.Fatalf("second hello for a live kiosk = %+v, want it refused as busy", m)
	}
	if h.pool.HasEvent("released") || h.pool.HasEvent("ended") {
		t.Fatalf("the live kiosk's session was touched: %v", h.pool.Log())
	}
	// The test's kiosk sends no heartbeats: past two intervals it has
	// missed them, and the next hello replaces it.
	time.Sleep(2*testConfig().Heartbeat + 200*time.Millisecond)
	k = h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, ""))
	if m := k.next(); m == nil || m.Type != kioskproto.TWelcome {
		t.Fatalf("hello after the old connection went silent = %+v, want welcome", m)
	}
	for m := old.next(); m != nil; m = old.next() {
	}
	poll.Until(t, 10*time.Second, "the old offer's VM returned", func() bool { return h.pool.HasEvent("released vm-001") })
	var refused, replaced int
	for _, r := range records(h.audit) {
		switch {
		case r.Event == "refused" && strings.Contains(r.Reason, "connected already"):
			refused++
		case r.Event == "replaced" && r.Kiosk == "k1" && strings.Contains(r.Reason, "silent"):
			replaced++
		}
	}
	if refused != 1 || replaced != 1 {
		t.Errorf("audit has %d refusals and %d replacements, want one each:\n%+v", refused, replaced, records(h.audit))
	}
}

// TestGroupCap: one group token cannot mint unlimited kiosks.
func TestGroupCap(t *testing.T) {
	h := newHarness(t, 0, testConfig())
	for i := range 3 {
		k := h.dial("127.0.0.1")
		k.send(kioskproto.NewHello(fmt.Sprintf("few-%d", i), token, ""))
		m := k.next()
		switch {
		case i < 2 && (m == nil || m.Type != kioskproto.TWelcome):
			t.Fatalf("kiosk few-%d = %+v, want welcome", i, m)
		case i == 2 && (m == nil || m.Type != kioskproto.TError || !strings.Contains(m.Error.Message, `"few-*" has its 2 kiosks connected`)):
			t.Fatalf("a third kiosk of a group of 2 = %+v, want it refused", m)
		}
	}
}

func TestLegacySignalPort(t *testing.T) {
	cfg := testConfig()
	var legacyHandoffs, usedEnds, legacyLinks atomic.Int32
	cfg.Metrics = Metrics{
		TouchToLink: func(_ time.Duration, legacy bool) {
			if legacy {
				legacyLinks.Add(1)
			}
		},
		Handoff: func(_ time.Duration, legacy bool) {
			if legacy {
				legacyHandoffs.Add(1)
			}
		},
		Ended: func(used bool, _ string) {
			if used {
				usedEnds.Add(1)
			}
		},
	}
	h := newHarness(t, 1, cfg)
	c, err := net.Dial("tcp", h.legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lines := bufio.NewScanner(c)
	start := time.Now()
	if !lines.Scan() || lines.Text() != LegacyGo {
		t.Fatalf("first line = %q, want %q at once", lines.Text(), LegacyGo)
	}
	if d := time.Since(start); d > quietFor {
		t.Logf("first line after %v", d) // informative: remote.sh reads one line a second
	}
	if !lines.Scan() || lines.Text() != LegacyGo {
		t.Fatalf("second line = %q, want %q repeated", lines.Text(), LegacyGo)
	}
	// remote-viewer links without a password, from the kiosk's address.
	vm, _, detach, err := h.m.Attach(context.Background(), addr("127.0.0.1"), "", "main:0", true, false, func() {})
	if err != nil {
		t.Fatalf("legacy Attach = %v", err)
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	if len(rest) == 0 || rest[len(rest)-1] != vm.Name+" NOW in use!!!" {
		t.Errorf("after the link the port said %q, want it to end with %q", rest, vm.Name+" NOW in use!!!")
	}
	detach()
	poll.Until(t, 10*time.Second, "the session ended with the viewer", func() bool { return h.pool.HasEvent("ended " + vm.Name) })
	// The signal port's offer counts in the handoff figures and metrics.
	if n := h.m.Handoffs().Count; n != 1 {
		t.Errorf("status handoffs = %d, want the legacy offer counted", n)
	}
	if legacyHandoffs.Load() != 1 || usedEnds.Load() != 1 || legacyLinks.Load() != 1 {
		t.Errorf("metrics heard %d legacy handoffs, %d used sessions ended and %d legacy touch-to-link figures, want 1 of each",
			legacyHandoffs.Load(), usedEnds.Load(), legacyLinks.Load())
	}
}

func TestLegacyRefusesUnknownAddress(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", h.legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 256)
	n, _ := c.Read(b)
	if !strings.HasPrefix(string(b[:n]), "NOT ALLOWED: 127.0.0.2") {
		t.Errorf("unknown legacy kiosk got %q", b[:n])
	}
}

func TestLegacyIdleFromInput(t *testing.T) {
	cfg := testConfig()
	cfg.IdleLimit = 200 * time.Millisecond
	h := newHarness(t, 1, cfg)
	c, _ := net.Dial("tcp", h.legacy)
	defer c.Close()
	bufio.NewScanner(c).Scan()
	vm, input, _, err := h.m.Attach(context.Background(), addr("127.0.0.1"), "", "main:0", true, false, func() {})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // input keeps it alive
		time.Sleep(100 * time.Millisecond)
		input()
	}
	if h.pool.HasEvent("ended") {
		t.Fatalf("session ended despite input: %v", h.pool.Log())
	}
	poll.Until(t, 10*time.Second, "the idle session ended", func() bool { return h.pool.HasEvent("ended " + vm.Name + ": idle for 200ms") })
}

// TestRestartWritesInterruptedSessionsAuditLine: a VM a broker restart
// ended gets the audit line its session never had, once; announcements of
// VMs with no session write nothing.
func TestRestartWritesInterruptedSessionsAuditLine(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	linked := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	h.m.VMEnded(pool.Ended{VM: "t-0a1b2c3d", Reason: pool.ReasonRestart, Used: true, Wiped: true, At: linked.Add(time.Hour),
		Claim:  pool.Claim{Kiosk: "k1", Lease: "l-0123456789abcdef", Addr: "169.254.24.10", At: linked.Add(-time.Second)},
		Linked: linked, Restart: true})
	h.m.VMEnded(pool.Ended{VM: "t-ffffffff", Reason: "clone failed: boom", Wiped: true, At: linked})
	var got []AuditRecord
	poll.Until(t, 10*time.Second, "the audit line", func() bool { got = records(h.audit); return len(got) > 0 })
	time.Sleep(10 * time.Millisecond)
	if got = records(h.audit); len(got) != 1 {
		t.Fatalf("audit = %+v, want one line", got)
	}
	r := got[0]
	if r.Event != "session" || r.Lease != "l-0123456789abcdef" || r.Kiosk != "k1" || r.VM != "t-0a1b2c3d" ||
		r.Reason != "ended by a broker restart" || !r.Wiped || r.Linked == nil || !r.Linked.Equal(linked) || r.Offered == nil {
		t.Errorf("audit line = %+v", r)
	}
}

// TestOneLegacyRequestPerAddress: the signal port serves one request per
// address at a time, and tells a second one why it is refused.
func TestOneLegacyRequestPerAddress(t *testing.T) {
	h := newHarness(t, 0, testConfig()) // no VM: the first request waits
	first, err := net.Dial("tcp", h.legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	queued := func() int { h.m.mu.Lock(); defer h.m.mu.Unlock(); return len(h.m.queue) }
	poll.Until(t, 10*time.Second, "the first request queued", func() bool { return queued() == 1 })
	second, err := net.Dial("tcp", h.legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(second).ReadString('\n')
	if !strings.HasPrefix(line, "SERVICE UNAVAILABLE: a request from 127.0.0.1 is being served already") {
		t.Errorf("second request from the address was told %q", line)
	}
	poll.Until(t, 10*time.Second, "the refusal audited", func() bool {
		for _, r := range records(h.audit) {
			if r.Event == "refused" && r.What == "legacy" && strings.Contains(r.Reason, "being served already") {
				return true
			}
		}
		return false
	})
	if n := queued(); n != 1 {
		t.Errorf("queue = %d after the refusal, want the first request alone", n)
	}
}

// TestConnectionsPerAddressCapped: the kiosk port refuses an address's
// connections beyond max_conns_per_addr.
func TestConnectionsPerAddressCapped(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConnsPerAddr = 2
	h := newHarness(t, 0, cfg)
	for i := range 2 {
		k := h.dial("127.0.0.1")
		k.send(kioskproto.NewHello(fmt.Sprintf("pool-%d", i), token, ""))
		k.until(kioskproto.TWelcome)
	}
	k := h.dial("127.0.0.1")
	if m := k.next(); m == nil || m.Type != kioskproto.TError || !strings.Contains(m.Error.Message, "too many connections") {
		t.Errorf("a third connection from the address = %+v, want it refused", m)
	}
	other := h.dial("127.0.0.2")
	other.send(kioskproto.NewHello("pool-9", token, ""))
	if m := other.next(); m == nil || m.Type != kioskproto.TWelcome {
		t.Errorf("another address = %+v, want welcome", m)
	}
}

// TestChannelsBoundToSession: each channel of a session is open once — a
// second link of it replaces the first — and a session has at most
// MaxChannels open.
func TestChannelsBoundToSession(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	_, offer := h.session("k1", "127.0.0.1")
	ctx, noop := context.Background(), func() {}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, false, noop); err != nil {
		t.Fatal(err)
	}
	hungUp := make(chan struct{})
	_, _, detachOld, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "display:0", false, false, func() { close(hungUp) })
	if err != nil {
		t.Fatal(err)
	}
	_, _, detachDisplay, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "display:0", false, false, noop)
	if err != nil {
		t.Fatalf("display:0 again = %v, want it to replace the first", err)
	}
	select {
	case <-hungUp:
	case <-time.After(5 * time.Second):
		t.Errorf("the replaced display:0 connection was not hung up")
	}
	detachOld() // the replaced connection's own close comes after
	for i := 2; i < MaxChannels; i++ {
		if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, fmt.Sprintf("usbredir:%d", i), false, false, noop); err != nil {
			t.Fatalf("channel %d = %v", i, err)
		}
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "usbredir:99", false, false, noop); !errors.Is(err, ErrChannels) {
		t.Errorf("channel %d = %v, want ErrChannels", MaxChannels+1, err)
	}
	// A channel that closed may be opened again (a viewer reconnecting it),
	// from the lease's address only.
	detachDisplay()
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.2"), offer.Ticket, "display:0", false, false, noop); !errors.Is(err, ErrNoLease) {
		t.Errorf("display:0 from another address = %v, want ErrNoLease", err)
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "display:0", false, false, noop); err != nil {
		t.Errorf("display:0 again after it closed = %v", err)
	}
}

// TestPlaintextRefusedWhereTLS: where the gateway has a TLS port, a
// kiosk's session takes its SPICE over TLS only; a legacy kiosk's, which
// cannot do TLS, plaintext too.
func TestPlaintextRefusedWhereTLS(t *testing.T) {
	cfg := testConfig()
	cfg.GatewayTLSPort = 5909
	h := newHarness(t, 2, cfg)
	_, offer := h.session("k1", "127.0.0.1")
	if offer.TLSPort != 5909 {
		t.Errorf("offer's TLS port = %d, want 5909", offer.TLSPort)
	}
	ctx, noop := context.Background(), func() {}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, false, noop); !errors.Is(err, ErrPlaintext) {
		t.Errorf("a plaintext link to a TLS kiosk's session = %v, want ErrPlaintext", err)
	}
	if _, _, _, err := h.m.Attach(ctx, addr("127.0.0.1"), offer.Ticket, "main:0", true, true, noop); err != nil {
		t.Errorf("the same link over TLS = %v", err)
	}
}

// TestFleet: the broker keeps every kiosk it knows, with what each says of
// itself: connected ones with their latest heartbeat, gone ones offline
// with when they were last heard, configured ones never seen.
func TestFleet(t *testing.T) {
	h := newHarness(t, 0, testConfig())
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, "kioskd test"))
	if m := k.next(); m == nil || m.Type != kioskproto.TWelcome {
		t.Fatalf("hello answered %+v", m)
	}
	beat := kioskproto.NewHeartbeat(0, "")
	beat.Heartbeat.State, beat.Heartbeat.UptimeSeconds, beat.Heartbeat.LastError = "idle", 3600, "lost the broker: EOF"
	beat.Heartbeat.Screen = "1280x800"
	k.send(beat)
	find := func(id string) (KioskStatus, bool) {
		for _, s := range h.m.Fleet() {
			if s.ID == id {
				return s, true
			}
		}
		return KioskStatus{}, false
	}
	poll.Until(t, 10*time.Second, "k1's heartbeat in the fleet", func() bool {
		s, _ := find("k1")
		return s.State == "idle"
	})
	s, _ := find("k1")
	if !s.Online || s.Screen != "1280x800" || s.Software != "kioskd test" || s.UptimeSeconds != 3600 ||
		s.LastError != "lost the broker: EOF" || s.Addr != "127.0.0.1" || s.LastSeen.IsZero() {
		t.Errorf("k1 in the fleet = %+v", s)
	}
	if far, ok := find("far"); !ok || far.Online || !far.LastSeen.IsZero() {
		t.Errorf("a configured kiosk never seen = %+v, %v; want it listed offline, never seen", far, ok)
	}
	if _, ok := find("pool-*"); ok {
		t.Error("a group entry is listed as a kiosk")
	}
	k.c.Close()
	poll.Until(t, 10*time.Second, "k1 offline", func() bool {
		s, _ := find("k1")
		return !s.Online
	})
	s, _ = find("k1")
	if s.LastSeen.IsZero() || s.State != "idle" || s.Session {
		t.Errorf("k1 gone = %+v, want offline with its last heartbeat and when it was heard", s)
	}
	if len(h.m.Kiosks()) != 0 {
		t.Errorf("Kiosks() = %+v, want no connected kiosk", h.m.Kiosks())
	}
}

// TestTouchToLink: the touch a kiosk reports with its request is when the
// touch-to-link figure starts; it ends at the session's first link.
func TestTouchToLink(t *testing.T) {
	cfg := testConfig()
	got := make(chan time.Duration, 2)
	cfg.Metrics.TouchToLink = func(d time.Duration, legacy bool) {
		if !legacy {
			got <- d
		}
	}
	h := newHarness(t, 1, cfg)
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, "test"))
	if m := k.next(); m == nil || m.Type != kioskproto.TWelcome {
		t.Fatalf("hello answered with %+v", m)
	}
	req := kioskproto.NewRequest()
	req.Request.TouchAgoMS = 2000 // the kiosk was busy for 2 s after the touch
	k.send(req)
	offer := k.until(kioskproto.TOffer).Offer
	if _, _, _, err := h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if d < 2*time.Second || d > time.Minute {
			t.Errorf("touch to link = %v, want the 2 s the kiosk reported and the handoff", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no touch-to-link figure at the first link")
	}
	// More channels of the same session are not more links.
	h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "display:0", false, false, func() {})
	select {
	case d := <-got:
		t.Errorf("a second figure, %v, for a second channel", d)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestDrain: once drained, a running session goes on, a waiting kiosk is
// sent back to its slideshow, and new requests are refused with the reason
// until Resume.
func TestDrain(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	running, offer := h.session("k1", "127.0.0.1")
	waiting := h.dial("127.0.0.1")
	waiting.send(kioskproto.NewHello("pool-1", token, ""))
	waiting.until(kioskproto.TWelcome)
	waiting.send(kioskproto.NewRequest())
	waiting.until(kioskproto.TStatus)

	h.m.Drain("closing time", "Closed until 8 am")
	if h.m.Closed() != "closing time" {
		t.Errorf("Closed() = %q", h.m.Closed())
	}
	if m := waiting.until(kioskproto.TEnd); !strings.Contains(m.End.Reason, "closing time") {
		t.Errorf("the waiting kiosk was told %q", m.End.Reason)
	}
	waiting.send(kioskproto.NewRequest())
	if m := waiting.until(kioskproto.TError); m.Error.Code != kioskproto.CodeUnavailable || !strings.Contains(m.Error.Message, "closing time") {
		t.Errorf("request while drained = %+v, want unavailable: closing time", m.Error)
	}
	if ls := h.m.Leases(); len(ls) != 1 || ls[0].ID != offer.Lease {
		t.Errorf("leases while drained = %+v, want the running one", ls)
	}
	select {
	case m := <-running.msgs:
		if m != nil && m.Type == kioskproto.TEnd {
			t.Errorf("drain ended the running session: %+v", m.End)
		}
	default:
	}
	if !h.m.EndLease(offer.Lease, "ended by an admin") {
		t.Fatal("EndLease found no session")
	}
	running.until(kioskproto.TEnd)
	if h.m.EndLease(offer.Lease, "again") {
		t.Error("EndLease ended a session twice")
	}

	h.m.Resume()
	h.pool.Add()
	waiting.send(kioskproto.NewRequest())
	waiting.until(kioskproto.TOffer)
}

// TestRefusedDuringTake: a request served at once, whose kiosk is refused
// while the pool hands it a VM (the broker drained, the kiosk put out of
// order), is refused: no lease is left, no session recorded, and the VM is
// clean again.
func TestRefusedDuringTake(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		refuse     func(*Manager)
	}{
		{"drained", "closing time", func(m *Manager) { m.Drain("closing time", "") }},
		{"out of order", "screen broken", func(m *Manager) { m.SetOutOfOrder("k1", "screen broken") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.OutOfOrderFile = filepath.Join(t.TempDir(), "out-of-order.json")
			h := newHarness(t, 1, cfg)
			var once sync.Once
			h.pool.BeforeTake = func() { once.Do(func() { tc.refuse(h.m) }) }
			k := h.dial("127.0.0.1")
			k.send(kioskproto.NewHello("k1", token, "test"))
			k.until(kioskproto.TWelcome)
			k.send(kioskproto.NewRequest())
			if m := k.until(kioskproto.TError); m.Error.Code != kioskproto.CodeUnavailable || !strings.Contains(m.Error.Message, tc.want) {
				t.Errorf("request refused during its Take = %+v, want unavailable: %s", m.Error, tc.want)
			}
			if ls := h.m.Leases(); len(ls) != 0 {
				t.Errorf("leases = %+v, want none", ls)
			}
			if vms := h.pool.VMs(); len(vms) != 1 || vms[0].State != pool.Clean {
				t.Errorf("the pool's VMs = %+v, want the one clean again", vms)
			}
			if rs := records(h.audit); slices.ContainsFunc(rs, func(r AuditRecord) bool { return r.Lease != "" }) {
				t.Errorf("audit = %+v, want no session", rs)
			}
		})
	}
}

// commandKiosk connects as id taking commands, and returns it welcomed.
func (h *harness) commandKiosk(id string) *kiosk {
	h.t.Helper()
	k := h.dial("127.0.0.1")
	hello := kioskproto.NewHello(id, token, "kioskd")
	hello.Hello.Commands = true
	k.send(hello)
	k.until(kioskproto.TWelcome)
	return k
}

// TestKioskCommands: a command reaches a kiosk that takes them, not one
// that does not; a screenshot comes back in parts while the kiosk is idle,
// and is refused, at the broker, once it has a session; a part out of
// order fails it.
func TestKioskCommands(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	old := h.dial("127.0.0.1")
	old.send(kioskproto.NewHello("pool-old", token, "kioskd 0"))
	old.until(kioskproto.TWelcome)
	if err := h.m.Command("pool-old", kioskproto.Command{Action: kioskproto.CmdReboot}); !errors.Is(err, ErrNoCommands) {
		t.Errorf("a command to a kiosk that takes none: %v", err)
	}
	if err := h.m.Command("pool-gone", kioskproto.Command{Action: kioskproto.CmdReboot}); !errors.Is(err, ErrKioskOffline) {
		t.Errorf("a command to a kiosk not connected: %v", err)
	}
	k := h.commandKiosk("k1")
	if err := h.m.Command("k1", kioskproto.Command{Action: kioskproto.CmdMessage, Text: "Back at 2 pm", Seconds: 60}); err != nil {
		t.Fatal(err)
	}
	if c := k.until(kioskproto.TCommand).Command; c.Action != kioskproto.CmdMessage || c.Text != "Back at 2 pm" {
		t.Errorf("command = %+v", c)
	}
	if n := h.m.Broadcast(kioskproto.Command{Action: kioskproto.CmdRefreshAds}); n != 1 {
		t.Errorf("Broadcast reached %d kiosks, want 1 (the other takes no commands)", n)
	}
	k.until(kioskproto.TCommand)
	if n := h.m.BroadcastSessions(kioskproto.Command{Action: kioskproto.CmdMessage, Text: "closing"}); n != 0 {
		t.Errorf("BroadcastSessions reached %d kiosks, none has a session", n)
	}

	// The kiosk answers a screenshot in two parts.
	var want bytes.Buffer
	jpeg.Encode(&want, image.NewGray(image.Rect(0, 0, 200, 100)), nil)
	go func() {
		c := k.until(kioskproto.TCommand).Command
		pic := want.Bytes()
		half := len(pic) / 2
		k.send(&kioskproto.Message{Type: kioskproto.TScreenshot, Screenshot: &kioskproto.Screenshot{ID: c.ID, Part: 0, Data: pic[:half]}})
		k.send(&kioskproto.Message{Type: kioskproto.TScreenshot, Screenshot: &kioskproto.Screenshot{ID: c.ID, Part: 1, Last: true, Data: pic[half:]}})
	}()
	got, err := h.m.Screenshot(context.Background(), "k1")
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("screenshot: %v, %d bytes, want %d", err, len(got), want.Len())
	}
	// Parts out of order fail it.
	go func() {
		c := k.until(kioskproto.TCommand).Command
		k.send(&kioskproto.Message{Type: kioskproto.TScreenshot, Screenshot: &kioskproto.Screenshot{ID: c.ID, Part: 1, Last: true, Data: want.Bytes()}})
	}()
	if _, err := h.m.Screenshot(context.Background(), "k1"); err == nil {
		t.Error("a screenshot whose parts came out of order was taken")
	}
	// The kiosk's own refusal.
	go func() {
		c := k.until(kioskproto.TCommand).Command
		k.send(&kioskproto.Message{Type: kioskproto.TScreenshot, Screenshot: &kioskproto.Screenshot{ID: c.ID, Last: true, Refused: "a visitor is here"}})
	}()
	if _, err := h.m.Screenshot(context.Background(), "k1"); !errors.Is(err, ErrInSession) {
		t.Errorf("a refused screenshot: %v", err)
	}
	// In a session, the broker refuses without asking.
	k.send(kioskproto.NewRequest())
	k.until(kioskproto.TOffer)
	if _, err := h.m.Screenshot(context.Background(), "k1"); !errors.Is(err, ErrInSession) {
		t.Errorf("a screenshot during a session: %v", err)
	}
	select {
	case m := <-k.msgs:
		if m != nil && m.Type == kioskproto.TCommand {
			t.Errorf("the kiosk in session was asked: %+v", m.Command)
		}
	case <-time.After(100 * time.Millisecond):
	}
	if n := h.m.BroadcastSessions(kioskproto.Command{Action: kioskproto.CmdMessage, Text: "closing", Seconds: 60}); n != 1 {
		t.Errorf("BroadcastSessions reached %d kiosks, want the one in session", n)
	}
	if c := k.until(kioskproto.TCommand).Command; c.Text != "closing" {
		t.Errorf("the kiosk in session got %+v", c)
	}
}

// TestOperatorOutOfOrder: a kiosk put out of order is told at once and at
// every hello, its requests are refused, it stays so across a broker
// restart (the file), and back in order it is served again.
func TestOperatorOutOfOrder(t *testing.T) {
	cfg := testConfig()
	cfg.OutOfOrderFile = filepath.Join(t.TempDir(), "out-of-order.json")
	h := newHarness(t, 1, cfg)
	if err := h.m.SetOutOfOrder("nobody", "x"); !errors.Is(err, ErrUnknownKiosk) {
		t.Errorf("an unknown kiosk: %v", err)
	}
	if err := h.m.SetOutOfOrder("pool-7", "card reader broken"); err != nil {
		t.Fatalf("a group's kiosk never seen: %v", err)
	}
	k := h.commandKiosk("k1")
	if err := h.m.SetOutOfOrder("k1", "screen cracked"); err != nil {
		t.Fatal(err)
	}
	if c := k.until(kioskproto.TCommand).Command; c.Action != kioskproto.CmdOutOfOrder || c.Text != "screen cracked" {
		t.Errorf("command = %+v", c)
	}
	k.send(kioskproto.NewRequest())
	if m := k.until(kioskproto.TError); m.Error.Code != kioskproto.CodeUnavailable || !strings.Contains(m.Error.Message, "out of order") {
		t.Errorf("request from a kiosk out of order = %+v", m.Error)
	}
	var fleet KioskStatus
	for _, s := range h.m.Fleet() {
		if s.ID == "k1" {
			fleet = s
		}
	}
	if fleet.Disabled != "screen cracked" || !fleet.Commands {
		t.Errorf("fleet entry = %+v", fleet)
	}

	// Another broker on the same file: the kiosk is told at its hello.
	h2 := newHarness(t, 1, cfg)
	k2 := h2.commandKiosk("k1")
	if c := k2.until(kioskproto.TCommand).Command; c.Action != kioskproto.CmdOutOfOrder || c.Text != "screen cracked" {
		t.Errorf("at hello after a restart: %+v", c)
	}
	if err := h2.m.SetOutOfOrder("k1", ""); err != nil {
		t.Fatal(err)
	}
	if c := k2.until(kioskproto.TCommand).Command; c.Action != kioskproto.CmdInOrder {
		t.Errorf("back in order: %+v", c)
	}
	k2.send(kioskproto.NewRequest())
	k2.until(kioskproto.TOffer)
	d, _ := loadDisabled(cfg.OutOfOrderFile)
	if len(d) != 1 || d["pool-7"] != "card reader broken" {
		t.Errorf("the file holds %v", d)
	}
}

// TestOldImageFlagged: a kiosk on an image the site no longer serves is
// flagged in the fleet; one on the current image, or on none, is not.
func TestOldImageFlagged(t *testing.T) {
	cfg := testConfig()
	cfg.CurrentImages = func() []string { return []string{"kiosk-bbbb", "kiosk-cccc"} }
	h := newHarness(t, 0, cfg)
	for id, image := range map[string]string{"pool-1": "kiosk-aaaa", "pool-2": "kiosk-cccc", "pool-3": ""} {
		k := h.dial("127.0.0.1")
		hello := kioskproto.NewHello(id, token, "kioskd")
		hello.Hello.Image = image
		k.send(hello)
		k.until(kioskproto.TWelcome)
	}
	got := map[string]bool{}
	for _, k := range h.m.Fleet() {
		got[k.ID] = k.OldImage
	}
	if !got["pool-1"] || got["pool-2"] || got["pool-3"] {
		t.Errorf("old image by kiosk = %v, want only pool-1", got)
	}
}

// TestBrokerAnswersHeartbeats: the broker's heartbeat answers the kiosk's —
// the welcome comes first even when a heartbeat follows the hello at once —
// and the broker sends none unprompted.
func TestBrokerAnswersHeartbeats(t *testing.T) {
	h := newHarness(t, 1, testConfig()) // heartbeat: 1 s
	k := h.dial("127.0.0.1")
	k.send(kioskproto.NewHello("k1", token, "test"))
	k.send(kioskproto.NewHeartbeat(0, ""))
	if m := <-k.msgs; m == nil || m.Type != kioskproto.TWelcome {
		t.Fatalf("first message %+v, want the welcome", m)
	}
	heartbeats := func(d time.Duration) (n int) {
		deadline := time.After(d)
		for {
			select {
			case m := <-k.msgs:
				if m != nil && m.Type == kioskproto.THeartbeat {
					n++
				}
			case <-deadline:
				return n
			}
		}
	}
	if n := heartbeats(500 * time.Millisecond); n != 1 {
		t.Errorf("%d heartbeats for the one after the hello, want 1", n)
	}
	for range 3 {
		k.send(kioskproto.NewHeartbeat(0, ""))
	}
	if n := heartbeats(500 * time.Millisecond); n != 3 {
		t.Errorf("%d heartbeats for 3, want 3", n)
	}
	if n := heartbeats(2500 * time.Millisecond); n != 0 {
		t.Errorf("%d heartbeats in 2.5 heartbeat periods without the kiosk's, want none", n)
	}
}

// TestIdleHeartbeatRate: a kiosk that says idle_beats is told the idle rate
// and may be silent for the idle timeout while it has no session, for the
// heartbeat timeout while it has one, and for the idle timeout again once
// the broker has ended it; a second hello does not replace it while it
// keeps the idle rate. A kiosk that does not say so is told no idle rate.
func TestIdleHeartbeatRate(t *testing.T) {
	cfg := testConfig()
	cfg.Heartbeat, cfg.HeartbeatTimeout, cfg.IdleHeartbeat = 100*time.Millisecond, 300*time.Millisecond, 2*time.Second
	h := newHarness(t, 2, cfg) // idle timeout: 6s
	hello := func(k *kiosk, id string, idleBeats bool) *kioskproto.Welcome {
		t.Helper()
		m := kioskproto.NewHello(id, token, "test")
		m.Hello.IdleBeats = idleBeats
		k.send(m)
		w := k.next()
		if w == nil || w.Type != kioskproto.TWelcome {
			t.Fatalf("hello answered with %+v", w)
		}
		return w.Welcome
	}
	alive := func(k *kiosk, what string) {
		t.Helper()
		k.send(kioskproto.NewHeartbeat(0, ""))
		for {
			select {
			case m, ok := <-k.msgs:
				if !ok {
					t.Fatalf("%s: the broker dropped the kiosk", what)
				}
				if m.Type == kioskproto.THeartbeat {
					return
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: no answer to a heartbeat", what)
			}
		}
	}

	old := h.dial("127.0.0.1")
	if w := hello(old, "pool-old", false); w.IdleHeartbeatSeconds != 0 {
		t.Errorf("a kiosk without idle_beats was told idle_heartbeat_seconds %d", w.IdleHeartbeatSeconds)
	}
	k := h.dial("127.0.0.1")
	if w := hello(k, "pool-1", true); w.IdleHeartbeatSeconds != 2 {
		t.Errorf("welcome's idle_heartbeat_seconds = %d, want 2", w.IdleHeartbeatSeconds)
	}
	time.Sleep(time.Second) // past the heartbeat timeout, within the idle one
	alive(k, "idle, silent for 1s")
	again := h.dial("127.0.0.1")
	again.send(kioskproto.NewHello("pool-1", token, "test"))
	if m := again.next(); m == nil || m.Type != kioskproto.TError || m.Error.Code != kioskproto.CodeBusy {
		t.Errorf("a second hello for an idle kiosk beating at the idle rate = %+v, want it refused as busy", m)
	}
	if m, ok := <-old.msgs; ok {
		t.Errorf("a kiosk without idle_beats, silent for 1s: %+v, want the connection dropped", m)
	}

	// In a session the heartbeat timeout holds; after the broker ends it,
	// the idle one again.
	k.send(kioskproto.NewRequest())
	offer := k.until(kioskproto.TOffer).Offer
	vm, _, _, err := h.m.Attach(context.Background(), addr("127.0.0.1"), offer.Ticket, "main:0", true, false, func() {})
	if err != nil {
		t.Fatal(err)
	}
	h.pool.GuestStops(vm.Name)
	k.until(kioskproto.TEnd)
	time.Sleep(time.Second)
	alive(k, "silent for 1s after the broker ended its session")
	k.send(kioskproto.NewRequest())
	k.until(kioskproto.TOffer)
	poll.Until(t, 5*time.Second, "the silent kiosk's session ended", func() bool {
		for _, r := range records(h.audit) {
			if r.Kiosk == "pool-1" && r.Reason == "kiosk heartbeats stopped (nothing for 300ms)" {
				return true
			}
		}
		return false
	})
}

// TestTLSRecords: over TLS, messages that share a record, and a message
// split across records, are all read and answered: the broker reads what a
// record holds before it waits on the socket again (kioskread.go).
func TestTLSRecords(t *testing.T) {
	h := newHarness(t, 1, testConfig())
	site, _, err := siteca.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go h.m.KioskPort().Serve(ctx, tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{site.Certificate}}))
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: siteca.ServerName, RootCAs: site.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	k := newKiosk(t, c)
	oneRecord := func(msgs ...*kioskproto.Message) {
		var b bytes.Buffer
		for _, m := range msgs {
			if err := kioskproto.WriteMessage(&b, m); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Write(b.Bytes()); err != nil { // one Write: one TLS record
			t.Fatal(err)
		}
	}
	want := func(types ...kioskproto.Type) {
		t.Helper()
		for _, typ := range types {
			select {
			case m := <-k.msgs:
				if m == nil || m.Type != typ {
					t.Fatalf("got %+v, want %s", m, typ)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("no %s from the broker", typ)
			}
		}
	}
	oneRecord(kioskproto.NewHello("k1", token, "test"), kioskproto.NewHeartbeat(0, ""))
	want(kioskproto.TWelcome, kioskproto.THeartbeat)
	oneRecord(kioskproto.NewHeartbeat(0, ""), kioskproto.NewRequest(), kioskproto.NewHeartbeat(0, ""))
	want(kioskproto.THeartbeat, kioskproto.TOffer, kioskproto.THeartbeat)

	var b bytes.Buffer
	kioskproto.WriteMessage(&b, kioskproto.NewHeartbeat(0, ""))
	frame := b.Bytes()
	c.Write(frame[:3])
	time.Sleep(200 * time.Millisecond)
	c.Write(frame[3:])
	want(kioskproto.THeartbeat)
}
