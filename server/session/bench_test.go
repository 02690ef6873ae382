package session

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/config"
	"undervdi/server/pool/pooltest"
)

// BenchmarkHandoff200 measures the broker's handoff: 200 kiosks, connected
// and welcomed, ask for a session at the same moment; each times its
// request until its offer arrives. The pool has 200 clean VMs and is
// in-memory, so this is the broker's own cost (queue, claim, lease, ticket,
// protocol over loopback TCP); libvirt's metadata write, done concurrently
// per offer, is measured apart (BenchmarkOfferRecord in server/pool).
func BenchmarkHandoff200(b *testing.B) {
	const kiosks = 200
	cfg := testConfig()
	cfg.QueueLimit = kiosks
	cfg.ConnectWindow = time.Minute
	reg, _ := NewRegistry([]config.Kiosk{{ID: "k-*", Address: "127.0.0.0/8", Token: token}})
	p := pooltest.New(kiosks, "/nonexistent", "pw")
	m := New(cfg, p, reg, NewAudit(nil, logger()), logger())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go Serve(ctx, ln, m.ServeKiosk)

	clients := make([]*kioskproto.Client, kiosks)
	for i := range clients {
		c, err := kioskproto.Dialer{Addr: ln.Addr().String()}.Dial(ctx, fmt.Sprintf("k-%03d", i), token, "bench")
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
	}
	var all []time.Duration
	for b.Loop() {
		lat := make([]time.Duration, kiosks)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, c := range clients {
			wg.Go(func() {
				<-start
				t0 := time.Now()
				c.Request()
				for msg := range c.Messages() {
					if msg.Type == kioskproto.TOffer {
						lat[i] = time.Since(t0)
						return
					}
				}
			})
		}
		close(start)
		wg.Wait()
		b.StopTimer()
		all = append(all, lat...)
		for _, c := range clients { // end the sessions: the unused VMs go back
			c.End("next round")
		}
		for len(m.Leases()) > 0 {
			time.Sleep(time.Millisecond)
		}
		for _, c := range clients {
			drain(c)
		}
		b.StartTimer()
	}
	// At the broker: from reading a request to writing its offer.
	h := m.Handoffs()
	b.ReportMetric(ms(h.P50), "broker-p50-ms")
	b.ReportMetric(ms(h.P99), "broker-p99-ms")
	// As the 200 clients saw it, sharing this machine's two cores with the
	// broker.
	slices.Sort(all)
	b.ReportMetric(ms(all[len(all)/2]), "client-p50-ms")
	b.ReportMetric(ms(all[len(all)*99/100]), "client-p99-ms")
}

// drain discards what a client was sent (the end of the last round).
func drain(c *kioskproto.Client) {
	for {
		select {
		case <-c.Messages():
		case <-time.After(5 * time.Millisecond):
			return
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
