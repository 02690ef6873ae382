package gateway

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"undervdi/internal/connpair"
	"undervdi/server/spice"
)

// FuzzLink runs the gateway's whole handling of a connection — link
// message, reply, ticket, channel admission — on whatever a client sends,
// from the address of a live session whose viewer is linked. Nothing a
// client without the ticket sends reaches the VM, every connection ends by
// itself, and the linked viewer keeps its session.
func FuzzLink(f *testing.F) {
	h := newHarness(f)
	ticket, _ := h.offer()
	main, err := h.link("127.0.0.1", spice.ChannelMain, ticket)
	if err != nil {
		f.Fatal(err)
	}
	for _, ch := range []spice.ChannelType{spice.ChannelMain, spice.ChannelDisplay, spice.ChannelInputs, spice.ChannelUSBRedir, 200} {
		m := &spice.LinkMess{ChannelType: ch, CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSpice, spice.CapMiniHeader)}
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, make([]byte, 128))
		f.Add(b, []byte{1, 0, 0, 0}) // an auth mechanism selection, then nothing
	}
	f.Add([]byte("REDQ\x02\x00\x00\x00\x02\x00\x00\x00\xff\xff\xff\xff"), []byte(nil))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), []byte(nil))
	f.Fuzz(func(t *testing.T, link, rest []byte) {
		// A socket pair, not TCP: tens of thousands of runs would use up
		// the loopback's ports in TIME_WAIT. The gateway sees the
		// session's address.
		client, server := connpair.New(t, netip.MustParseAddrPort("127.0.0.1:40000"))
		defer client.Close()
		done := make(chan struct{})
		go func() {
			h.gw.handle(context.Background(), server, false)
			close(done)
		}()
		client.SetDeadline(time.Now().Add(handshakeTimeout + 5*time.Second))
		client.Write(link)
		client.Write(rest)
		client.CloseWrite()
		if _, err := io.Copy(io.Discard, client); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the gateway did not end the connection")
		}
		<-done
		if n := h.vm.authed.Load(); n != 1 {
			t.Fatalf("the VM saw %d authenticated links, want the viewer's only", n)
		}
		main.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := main.Write([]byte("ping")); err != nil {
			t.Fatalf("the linked viewer lost its session: %v", err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(main, b); err != nil || string(b) != "ping" {
			t.Fatalf("the linked viewer lost its session: %q, %v", b, err)
		}
	})
}
