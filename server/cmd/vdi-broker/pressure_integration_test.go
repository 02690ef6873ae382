//go:build integration

package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"undervdi/internal/brokertest"
	"undervdi/internal/freeport"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/config"
	"undervdi/server/siteca"
	"undervdi/server/spice"
)

// TestPressure puts the real vdi-broker process on real libvirt under the
// loads a machine on the kiosk LAN can make — slow clients on every port,
// many connections from one address, the process out of file descriptors,
// a flood of refused SPICE links — each bounded in count and time. After
// (or during) each, an honest kiosk gets its session and the process is up.
func TestPressure(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 1)
	// The honest visitor comes right after each flood, while the broker
	// recovers (an accept loop out of descriptors backs off up to a second
	// at a time): on a loaded machine its viewer can take longer to link
	// than the default window.
	cfg.Gateway.ConnectWindow = config.Duration(30 * time.Second)
	cfg.Sessions.LegacyListen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	cfg.Ads.Listen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	os.MkdirAll(cfg.Ads.Dir, 0o755)
	p := startBroker(t, writeConfig(t, cfg), cfg.AdminSocket)
	p.waitFull(t, 1)
	ports := map[string]string{ // what, address
		"kiosk": cfg.Sessions.Listen, "gateway": cfg.Gateway.Listen, "gateway-tls": cfg.Gateway.TLSListen,
		"ads": cfg.Ads.Listen, "legacy": cfg.Sessions.LegacyListen,
	}
	kioskTLS := brokertest.KioskTLS(t, filepath.Join(cfg.SiteCADir(), siteca.CAFile))
	alive := func() {
		t.Helper()
		select {
		case <-p.done:
			t.Fatalf("the broker process died: %v\n%s", p.cmd.ProcessState, p.log.String())
		default:
		}
	}

	t.Run("slow clients on every port", func(t *testing.T) {
		// Connections that say nothing (or half an HTTP request), within
		// the per-address caps, from a machine on the LAN.
		var slow []net.Conn
		for what, addr := range ports {
			n := map[string]int{"kiosk": 4, "gateway": 8, "gateway-tls": 8, "ads": 4, "legacy": 1}[what]
			for range n {
				c := dialFrom(t, "127.0.0.2", addr)
				if what == "ads" {
					c.Write([]byte("GET /ads/ HTTP/1.1\r\nHost: broker\r\n"))
				}
				slow = append(slow, c)
			}
		}
		s := honestSession(t, cfg, kioskTLS)
		alive()
		// The broker hangs up on every one of them, each phase having its
		// deadline (10 s for a hello, a SPICE or HTTP handshake).
		for _, c := range slow {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("a slow client of %s was never cut off", c.RemoteAddr())
			}
			c.Close()
		}
		s.end(t, p)
	})

	t.Run("many connections from one address", func(t *testing.T) {
		var wg sync.WaitGroup
		for what, addr := range ports {
			for range 150 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}).Dial("tcp", addr)
					if err != nil {
						return
					}
					defer c.Close()
					if what == "ads" {
						c.Write([]byte("GET /ads/ HTTP/1.1\r\nHost: broker\r\n"))
					}
					time.Sleep(time.Second)
				}()
			}
		}
		wg.Wait()
		alive()
		s := honestSession(t, cfg, kioskTLS)
		s.end(t, p)
		// Each port's refusals of that address are one line and a count,
		// not 150 lines.
		b, _ := os.ReadFile(cfg.Sessions.AuditLog)
		if n := strings.Count(string(b), `"addr":"127.0.0.3"`); n == 0 || n > 10 {
			t.Errorf("%d audit lines for 127.0.0.3's flood, want a few", n)
		}
	})

	t.Run("out of file descriptors", func(t *testing.T) {
		// A small limit, so a few hundred connections use it up.
		lim := unix.Rlimit{Cur: 300, Max: 300}
		if err := unix.Prlimit(p.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			t.Fatal(err)
		}
		var held []net.Conn
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 20 {
			for range 30 { // under the gateway's cap of 32 per address
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i))}, Timeout: 3 * time.Second}
					if c, err := d.Dial("tcp", cfg.Gateway.Listen); err == nil {
						mu.Lock()
						held = append(held, c)
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
		poll.Until(t, 30*time.Second, "the broker to log that it ran out of file descriptors", func() bool {
			return strings.Contains(p.log.String(), "out of file descriptors")
		})
		alive()
		for _, c := range held {
			c.Close()
		}
		s := honestSession(t, cfg, kioskTLS)
		alive()

		t.Run("a flood of refused links", func(t *testing.T) {
			// From the honest kiosk's own address, during its session:
			// plaintext links (this lease is TLS only) and TLS links with
			// a wrong ticket.
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 150 {
						addr, secure := cfg.Gateway.Listen, w%4 == 0
						if secure {
							addr = cfg.Gateway.TLSListen
						}
						c, err := net.DialTimeout("tcp", addr, 5*time.Second)
						if err != nil {
							continue
						}
						if secure {
							c = tls.Client(c, kioskTLS)
						}
						c.SetDeadline(time.Now().Add(10 * time.Second))
						spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
							CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapMiniHeader)}, fmt.Sprintf("wrong-%d-%d", w, i))
						c.Close()
					}
				}()
			}
			wg.Wait()
			alive()
			if n := strings.Count(p.log.String(), `msg="refused again" what=spice-link addr=127.0.0.1`); n < 1000 {
				t.Errorf("the broker refused %d links again, want the flood's 1200 less the first of each kind", n)
			}
			st := p.status()
			if st == nil || len(st.Sessions) != 1 || st.Sessions[0].Linked == nil || st.Sessions[0].Connections != 1 {
				t.Fatalf("the honest session after the flood: %+v", st)
			}
			s.main.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := s.main.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("the honest viewer's main channel: %v", err)
			}
			b, _ := os.ReadFile(cfg.Sessions.AuditLog)
			if n := strings.Count(string(b), `"what":"spice-link","addr":"127.0.0.1"`); n == 0 || n > 10 {
				t.Errorf("%d audit lines for 1200 refused links, want a few", n)
			}
		})
		s.end(t, p)
	})
	alive()
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// honest is a kiosk's session: its protocol connection and its viewer's
// main channel, linked through the TLS gateway.
type honest struct {
	k     *kioskproto.Client
	main  net.Conn
	lease string
	audit string // the broker's audit log
}

func honestSession(t *testing.T, cfg *config.Config, kioskTLS *tls.Config) *honest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := kioskproto.Dialer{Addr: cfg.Sessions.Listen, TLS: kioskTLS}.Dial(ctx, "k1", kioskToken, "test")
	if err != nil {
		t.Fatalf("the honest kiosk cannot connect: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	k.Request(time.Time{})
	var offer *kioskproto.Offer
	for offer == nil {
		select {
		case m, ok := <-k.Messages():
			if !ok {
				t.Fatalf("no offer for the honest kiosk: %v", k.Err())
			}
			if m.Type == kioskproto.TOffer {
				offer = m.Offer
			}
		case <-ctx.Done():
			t.Fatal("no offer for the honest kiosk within 3 minutes")
		}
	}
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", offer.TLSPort), kioskTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
		CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapMiniHeader)}, offer.Ticket); err != nil {
		t.Fatalf("the honest viewer's link: %v", err)
	}
	c.SetDeadline(time.Time{})
	return &honest{k: k, main: c, lease: offer.Lease, audit: cfg.Sessions.AuditLog}
}

// end ends the session and waits for the pool to be full again.
func (s *honest) end(t *testing.T, p *brokerProc) {
	t.Helper()
	s.k.End("the visitor is done")
	s.main.Close()
	s.k.Close()
	poll.Until(t, time.Minute, "the session's audit line", func() bool { return len(auditLines(t, s.audit, s.lease)) == 1 })
	p.waitFull(t, 1)
}
