package session

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/accept"
	"undervdi/server/config"
	"undervdi/server/pool/pooltest"
)

const (
	fleetEnv = "UNDERVDI_BENCH_KIOSKS" // address of the broker: run as the kiosk fleet
	fleet    = 200
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(fleetEnv); addr != "" {
		if err := runFleet(addr, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// BenchmarkHandoff200 measures the broker's handoff: 200 kiosks, connected
// and welcomed, ask for a session at the same moment. The kiosks run in a
// process of their own, as real kiosks run on machines of their own (they
// still share this machine's two cores). The pool has 200 clean VMs and is
// in-memory, so this is the broker's cost: reading the request, the queue,
// taking a VM, the lease and its ticket, writing the offer. Offers do not
// wait for libvirt (the pool records them in the background; see
// BenchmarkOfferRecord in server/pool for that write).
func BenchmarkHandoff200(b *testing.B) {
	cfg := testConfig()
	cfg.QueueLimit = fleet
	cfg.ConnectWindow = time.Minute
	reg, _ := NewRegistry([]config.Kiosk{{ID: "k-*", Address: "127.0.0.0/8", Token: token, MaxKiosks: fleet}})
	p := pooltest.New(fleet, "/nonexistent", "pw")
	m := New(cfg, p, reg, NewAudit(nil, logger()), logger())
	p.Sink = m.VMEnded
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go accept.Serve(ctx, ln, m.ServeKiosk)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fleetEnv+"="+ln.Addr().String())
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { in.Close(); cmd.Wait() }()
	out := bufio.NewScanner(outPipe)
	out.Buffer(nil, 1<<20)
	if !out.Scan() || out.Text() != "ready" {
		b.Fatalf("kiosk fleet: %q", out.Text())
	}
	var seen []time.Duration
	for b.Loop() {
		fmt.Fprintln(in, "go")
		if !out.Scan() {
			b.Fatal("kiosk fleet gone")
		}
		b.StopTimer()
		for _, f := range strings.Fields(out.Text()) {
			ns, _ := strconv.ParseInt(f, 10, 64)
			seen = append(seen, time.Duration(ns))
		}
		fmt.Fprintln(in, "end") // the sessions end: the unused VMs go back
		for len(m.Leases()) > 0 {
			time.Sleep(time.Millisecond)
		}
		out.Scan() // "ended"
		b.StartTimer()
	}
	h := m.Handoffs() // request read to offer written, at the broker
	b.ReportMetric(ms(h.P50), "broker-p50-ms")
	b.ReportMetric(ms(h.P99), "broker-p99-ms")
	slices.Sort(seen) // as the kiosks saw it, over loopback TCP
	b.ReportMetric(ms(seen[len(seen)/2]), "kiosk-p50-ms")
	b.ReportMetric(ms(seen[len(seen)*99/100]), "kiosk-p99-ms")
}

// runFleet connects 200 kiosks to the broker at addr; on each "go" line
// they all request a session at once and it prints their latencies (ns), on
// each "end" they end their sessions.
func runFleet(addr string, in *os.File, out *os.File) error {
	ctx := context.Background()
	clients := make([]*kioskproto.Client, fleet)
	for i := range clients {
		c, err := kioskproto.Dialer{Addr: addr}.Dial(ctx, fmt.Sprintf("k-%03d", i), token, "bench")
		if err != nil {
			return err
		}
		clients[i] = c
	}
	fmt.Fprintln(out, "ready")
	cmds := bufio.NewScanner(in)
	for cmds.Scan() {
		switch cmds.Text() {
		case "go":
			lat := make([]string, fleet)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, c := range clients {
				wg.Go(func() {
					<-start
					t0 := time.Now()
					c.Request(time.Time{})
					for msg := range c.Messages() {
						if msg.Type == kioskproto.TOffer {
							lat[i] = strconv.FormatInt(int64(time.Since(t0)), 10)
							return
						}
					}
				})
			}
			close(start)
			wg.Wait()
			fmt.Fprintln(out, strings.Join(lat, " "))
		case "end":
			for _, c := range clients {
				c.End("next round")
			}
			for _, c := range clients {
				drain(c)
			}
			fmt.Fprintln(out, "ended")
		}
	}
	return nil
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
