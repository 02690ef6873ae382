//go:build integration

package broker_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"undervdi/internal/brokertest"
	"undervdi/internal/poll"
	"undervdi/internal/procstat"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/config"
	"undervdi/server/pool"
)

// soakEnv sets how long TestSoak runs (a Go duration); unset, it is
// skipped. `make soak` runs it for 30 minutes.
const soakEnv = "UNDERVDI_SOAK"

// soakEnding is one way a visitor's session ends, and what its kiosk is told.
type soakEnding struct {
	name    string
	reasons []string // what the end's reason may say (any of them)
	end     func(s *soakSession)
}

// soakSession is one visitor's session of the soak.
type soakSession struct {
	t     *testing.T
	e     *e2e
	k     *kiosk
	offer *kioskproto.Offer
	link  net.Conn      // the SPICE main channel
	idle  *atomic.Int64 // what the kiosk's heartbeats say, ns
}

var soakEndings = []soakEnding{
	{"the visitor ends it", []string{"the kiosk ended the session: soak"}, func(s *soakSession) { s.k.c.End("soak") }},
	{"the viewer disconnects", []string{"the viewer disconnected"}, func(s *soakSession) { s.link.Close() }},
	{"the visitor walks away", []string{"idle for"}, func(s *soakSession) { s.idle.Store(int64(time.Hour)); s.k.c.Beat() }},
	{"an operator ends it", []string{"soak operator"}, func(s *soakSession) {
		for _, l := range s.e.b.Sessions.Leases() {
			if l.Kiosk == "k1" {
				s.e.b.Sessions.EndLease(l.ID, "soak operator")
			}
		}
	}},
	// The viewer's link ends with QEMU, and the grace after it may run
	// out before the wipe that announces the power-off is done.
	{"the guest powers off", []string{"guest powered off or rebooted", "the viewer disconnected"}, func(s *soakSession) {
		for _, l := range s.e.b.Sessions.Leases() {
			if l.Kiosk == "k1" {
				if _, err := s.e.b.Host.AgentCommand(context.Background(), l.VM, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
					s.t.Errorf("guest-shutdown: %v", err)
				}
			}
		}
	}},
	{"the session reaches max_session", []string{"maximum session time"}, func(*soakSession) {}},
	{"nobody links to the offer", nil, nil}, // the VM goes back to the pool
	{"the kiosk drops", nil, func(s *soakSession) { s.k.c.Close() }},
}

// TestSoak serves visitor sessions back to back on real libvirt for the
// time soakEnv says, ending them in every way a session ends, then checks
// that nothing is left beyond the pool and that the broker did not grow:
// goroutines, open files, resident memory.
func TestSoak(t *testing.T) {
	v := os.Getenv(soakEnv)
	if v == "" {
		t.Skipf("%s is not set: the soak runs only when asked (make soak)", soakEnv)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want how long to soak, such as 30m", soakEnv, v)
	}
	bed := testbed.New(t)
	rb := brokertest.Start(t, bed, 2, func(c *config.Config) {
		c.EncryptDisks = true // a site's default: keys made and undefined every session
		c.LogLevel = "info"
		c.Gateway.ConnectWindow = config.Duration(3 * time.Second)
		c.Sessions.MaxSession = config.Duration(25 * time.Second)
	})
	e := &e2e{t: t, bed: bed, b: rb.Broker, cfg: rb.Config, kiosk: rb.KioskAddr(), tls: rb.KioskTLS(), caFile: rb.CAFile()}

	var first, last soakSample
	done, start := 0, time.Now()
	for i := 0; time.Since(start) < d || i < len(soakEndings); i++ {
		ending := soakEndings[i%len(soakEndings)]
		t.Run(fmt.Sprintf("%03d %s", i, ending.name), func(t *testing.T) { soakOne(t, e, ending) })
		if t.Failed() {
			return
		}
		done++
		if i == len(soakEndings)-1 { // one of each ending: every path has made what it keeps
			e.settle(t)
			first = sample(t, e, done)
		}
		if i%len(soakEndings) == len(soakEndings)-1 {
			t.Logf("soak: %s", sample(t, e, done))
		}
	}
	e.settle(t)
	last = sample(t, e, done)
	t.Logf("soak: %d sessions in %v; after one of each ending %s; at the end %s",
		done, time.Since(start).Round(time.Second), first, last)

	if last.goroutines > first.goroutines+5 {
		t.Errorf("goroutines grew from %d to %d", first.goroutines, last.goroutines)
	}
	if last.fds > first.fds+5 {
		t.Errorf("open files grew from %d to %d", first.fds, last.fds)
	}
	if last.rss > first.rss+first.rss/4+8<<10 {
		t.Errorf("resident memory grew from %d to %d KiB", first.rss, last.rss)
	}
	checkOnlyPool(t, e, bed)
}

// soakOne runs one visitor's session and ends it so.
func soakOne(t *testing.T, e *e2e, ending soakEnding) {
	idle := &atomic.Int64{}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := kioskproto.Dialer{Addr: e.kiosk, TLS: e.tls, Idle: func() time.Duration { return time.Duration(idle.Load()) }}.Dial(ctx, "k1", kioskToken, "soak")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := &soakSession{t: t, e: e, k: &kiosk{t: t, c: c}, idle: idle}
	s.offer = s.k.request()
	if ending.end == nil { // nobody links: the offer lapses, the VM stays clean
		if reason := s.k.waitEnd(30 * time.Second); !strings.Contains(reason, "not linked within the connect window") {
			t.Errorf("end reason = %q, want the connect window's", reason)
		}
		return
	}
	link, err := linkMain(e.dialTLS(t, s.offer), s.offer.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	s.link = link
	l := e.linkedLease(t, "k1")
	time.Sleep(time.Second) // a visitor's moment
	ending.end(s)
	if ending.reasons != nil {
		reason := s.k.waitEnd(time.Minute)
		if !slices.ContainsFunc(ending.reasons, func(r string) bool { return strings.Contains(reason, r) }) {
			t.Errorf("end reason = %q, want one of %q", reason, ending.reasons)
		}
	}
	e.checkWiped(t, l.VM)
}

// settle waits for the pool to be full with no session left, and for the
// garbage of the sessions to be collected.
func (e *e2e) settle(t *testing.T) {
	t.Helper()
	poll.Until(t, 5*time.Minute, "a full pool and no session", func() bool {
		s := e.b.Pool.Status()
		return len(e.b.Sessions.Leases()) == 0 && s.Counts[pool.Clean] == e.cfg.PoolSize && len(s.VMs) == e.cfg.PoolSize
	})
	runtime.GC()
}

// soakSample is what the soak watches of the broker's process (which is
// this test's).
type soakSample struct {
	sessions, goroutines, fds int
	rss                       int64 // KiB
}

func (s soakSample) String() string {
	return fmt.Sprintf("sessions=%d goroutines=%d fds=%d rss=%.1fMiB", s.sessions, s.goroutines, s.fds, float64(s.rss)/1024)
}

func sample(t *testing.T, e *e2e, sessions int) soakSample {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	rss, err := procstat.StatusKiB(0, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	return soakSample{sessions: sessions, goroutines: runtime.NumGoroutine(), fds: len(fds), rss: rss}
}

// checkOnlyPool checks that libvirt holds the pool's clean VMs and nothing
// else of the broker's: no other domain, overlay, disk key or guest
// network filter binding.
func checkOnlyPool(t *testing.T, e *e2e, bed *testbed.Bed) {
	t.Helper()
	st := e.b.Pool.Status()
	keep := map[string]bool{}
	for _, v := range st.VMs {
		keep[v.Name] = true
		for _, o := range v.Overlays {
			keep[o] = true
			keep["key:"+o] = true
		}
	}
	domains, files, err := bed.Leftovers(bed.L)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range append(domains, files...) {
		if !keep[x] {
			t.Errorf("left beyond the pool: %s", x)
		}
	}
	if len(domains) != e.cfg.PoolSize {
		t.Errorf("%d clones in libvirt, want the pool's %d", len(domains), e.cfg.PoolSize)
	}
	bindings, _, err := bed.L.ConnectListAllNwfilterBindings(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range bindings {
		if xml, err := bed.L.NwfilterBindingGetXMLDesc(b, 0); err == nil && strings.Contains(xml, e.cfg.PoolName+"-guest") {
			n++
		}
	}
	if n != e.cfg.PoolSize {
		t.Errorf("%d guest network filter bindings, want one per clean VM (%d)", n, e.cfg.PoolSize)
	}
}
