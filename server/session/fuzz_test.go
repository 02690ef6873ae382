package session

import (
	"bufio"
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"undervdi/internal/connpair"
	"undervdi/internal/poll"
)

// legacyLines are the beginnings of every line the signal port may say.
var legacyLines = []string{"# undervdi vdi-broker: preparing a VM for ", "WAITING: ", LegacyGo, "NOT CONNECTED: ",
	"SERVICE UNAVAILABLE: ", "NOT ALLOWED: "}

// FuzzLegacyPort plays the original kiosk's side of the signal port in any
// order — bytes it sends (the port reads and ignores them), pauses, its
// viewer's SPICE link, hanging up — and checks the port only ever says its
// known lines, ends the connection once the kiosk goes, and leaves no lease
// behind: the VM goes back to the pool unused, or is destroyed if used.
func FuzzLegacyPort(f *testing.F) {
	cfg := testConfig()
	cfg.ConnectWindow, cfg.Grace = 300*time.Millisecond, 20*time.Millisecond
	h := newHarness(f, 1, cfg)
	f.Add([]byte{2, 3})                         // link at once, hang up
	f.Add([]byte{1 | 7<<2, 2, 1, 3})            // wait, link, wait, hang up
	f.Add([]byte{0 | 10<<2, 3})                 // a line of junk, hang up
	f.Add([]byte{1 | 7<<2, 1 | 7<<2, 1 | 7<<2}) // wait out the connect window
	f.Add([]byte{3})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 12 {
			ops = ops[:12]
		}
		kiosk := netip.MustParseAddr("127.0.0.1")
		client, server := connpair.New(t, netip.AddrPortFrom(kiosk, 40000))
		done := make(chan struct{})
		go func() { h.m.ServeLegacy(context.Background(), server); close(done) }()
		var mu sync.Mutex
		var said []string
		read := make(chan struct{})
		go func() {
			defer close(read)
			for sc := bufio.NewScanner(client); sc.Scan(); {
				mu.Lock()
				said = append(said, sc.Text())
				mu.Unlock()
			}
		}()
		var detach func()
	play:
		for _, op := range ops {
			arg := int(op >> 2)
			switch op & 3 {
			case 0:
				client.Write([]byte(strings.Repeat("x", arg) + "\n"))
			case 1:
				time.Sleep(time.Duration(arg%8) * 20 * time.Millisecond)
			case 2:
				if detach == nil {
					if _, _, d, err := h.m.Attach(context.Background(), kiosk, "", "main:0", true, false, func() {}); err == nil {
						detach = d
					}
				}
			case 3:
				break play
			}
		}
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the signal port did not notice the kiosk hang up")
		}
		<-read
		if detach != nil {
			detach() // the viewer goes too
		}
		poll.Until(t, 5*time.Second, "no lease left", func() bool { return len(h.m.Leases()) == 0 })
		mu.Lock()
		defer mu.Unlock()
		for _, line := range said {
			known := strings.HasSuffix(line, " NOW in use!!!")
			for _, p := range legacyLines {
				known = known || strings.HasPrefix(line, p)
			}
			if !known {
				t.Fatalf("the signal port said %q", line)
			}
		}
		if len(h.pool.VMs()) == 0 {
			h.pool.Add() // the used VM was destroyed: the next run gets a new one
		}
	})
}
