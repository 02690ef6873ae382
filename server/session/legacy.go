package session

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"undervdi/server/accept"
)

// LegacyGo is the line the original remote.sh waits for before it starts
// remote-viewer.
const LegacyGo = "RULE ADDED, CONNECT NOW!"

// quietFor is how long the signal port stays silent hoping to answer with
// LegacyGo at once: remote.sh reads through `nc -i 1`, which sleeps a second
// after every read, so each earlier line would cost the visitor a second.
const quietFor = 500 * time.Millisecond

// LegacyPort is the original signal port: one request per address at a
// time, as one kiosk makes; another connection from the address is told so
// in words the original client shows, and audited.
func (m *Manager) LegacyPort() accept.Port {
	return accept.Port{Handle: m.ServeLegacy, MaxPerAddr: 1, Name: "legacy", Log: m.log, Refuse: func(c net.Conn, open int) {
		addr := accept.RemoteAddr(c)
		m.audit.Refused("legacy", addr.String(), "", "a request from this address is being served already")
		fmt.Fprintf(c, "SERVICE UNAVAILABLE: a request from %s is being served already\n", addr)
	}}
}

// ServeLegacy speaks the original signal port to a kiosk running remote.sh
// unchanged: it prints progress lines, then LegacyGo once a second until the
// kiosk's SPICE link arrives (routed by its address, without a password) or
// the connect window closes. After the link the connection closes, as the
// original's did; the session then lives with its SPICE connections.
func (m *Manager) ServeLegacy(ctx context.Context, c net.Conn) {
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	addr := accept.RemoteAddr(c)
	received := time.Now() // the original client asks by connecting
	say := func(format string, args ...any) bool {
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, err := fmt.Fprintf(c, format+"\n", args...)
		return err == nil
	}
	name, ok := m.registry.Legacy(addr)
	if !ok {
		say("NOT ALLOWED: %s is not a legacy kiosk of this broker", addr)
		m.audit.Refused("legacy", addr.String(), "", "address is not configured as a legacy kiosk")
		return
	}
	status := make(chan string, 16)
	offered := make(chan *Lease, 1)
	sentAway := make(chan string, 1) // the broker was drained while it waited
	r := &request{kiosk: name, addr: addr, legacy: true, touched: received,
		onEnd: func(reason string) {
			select {
			case sentAway <- reason:
			default:
			}
		},
		onStatus: func(state string, ahead int, msg string) {
			select {
			case status <- fmt.Sprintf("WAITING: %s", msg):
			default:
			}
		},
		onOffer: func(l *Lease) { offered <- l },
	}
	if l, err := m.enqueue(r); err != nil {
		say("SERVICE UNAVAILABLE: %v", err)
		return
	} else if l != nil {
		r.onOffer(l)
	}
	gone := make(chan struct{}) // the kiosk hung up
	go func() {
		io.Copy(io.Discard, c)
		close(gone)
	}()

	var held []string // lines kept back during the quiet time
	quiet := time.After(quietFor)
	var l *Lease
	for l == nil {
		select {
		case line := <-status:
			if quiet != nil {
				held = append(held, line)
			} else if !say("%s", line) {
				m.cancel(r, "legacy kiosk connection lost")
				return
			}
		case <-quiet:
			quiet = nil
			for _, line := range append([]string{"# undervdi vdi-broker: preparing a VM for " + addr.String()}, held...) {
				say("%s", line)
			}
		case l = <-offered:
		case why := <-sentAway:
			say("SERVICE UNAVAILABLE: %s", why)
			return
		case <-gone:
			m.cancel(r, "legacy kiosk hung up while waiting")
			return
		case <-ctx.Done():
			m.cancel(r, "broker stopping")
			return
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for first := true; ; first = false {
		if !say(LegacyGo) {
			m.cancel(r, "legacy kiosk connection lost before connecting")
			return
		}
		if first {
			m.handoff(time.Since(received), true)
		}
		select {
		case <-l.Linked():
			say("%s NOW in use!!!", l.VM.Name)
			return
		case <-l.Ended():
			say("NOT CONNECTED: %s", m.Reason(l))
			return
		case <-gone:
			m.cancel(r, "legacy kiosk hung up before connecting")
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
