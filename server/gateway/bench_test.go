package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"undervdi/server/spice"
)

// BenchmarkThroughput streams a VM's display channel to a client: straight
// from the VM's SPICE over TCP (as the original exposed it), through the
// gateway in plaintext (TCP in, the VM's unix socket out, spliced), and
// through the gateway over TLS (as every kiosk but a legacy one links), in
// one run. Both ends live in this process, so the CPU figures include the
// client and the VM (and the client's TLS); the difference is the gateway's.
func BenchmarkThroughput(b *testing.B) {
	const size = 256 << 20
	h := newHarness(b)
	h.vm.stream = size
	ticket, _ := h.offer()
	if _, err := h.link("127.0.0.1", spice.ChannelMain, ticket); err != nil {
		b.Fatal(err)
	}
	display := &spice.LinkMess{ChannelType: spice.ChannelDisplay, CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapMiniHeader)}
	for _, path := range []struct {
		name string
		dial func() (net.Conn, error)
		pw   string
	}{
		{"direct", func() (net.Conn, error) { return net.Dial("tcp", h.vm.tcp) }, vmPassword},
		{"gateway", func() (net.Conn, error) { return net.Dial("tcp", h.addr) }, ticket},
		{"gateway-tls", func() (net.Conn, error) { return tls.Dial("tcp", h.tlsAddr, h.clientTLS) }, ticket},
	} {
		b.Run(path.name, func(b *testing.B) {
			b.SetBytes(size)
			var cpu time.Duration
			for b.Loop() {
				c, err := path.dial()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := spice.Link(c, display, path.pw); err != nil {
					b.Fatal(err)
				}
				before := cpuTime()
				n, err := io.Copy(io.Discard, c)
				cpu += cpuTime() - before
				c.Close()
				if err != nil || n != size {
					b.Fatalf("read %d bytes, %v; want %d", n, err, size)
				}
			}
			b.ReportMetric(float64(cpu.Milliseconds())/(float64(b.N)*size/(1<<30)), "cpu-ms/GiB")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
