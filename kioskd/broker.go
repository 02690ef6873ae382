package kioskd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"undervdi/kioskd/viewer"
	"undervdi/kioskproto"
)

// ProtocolLink is the link to the broker over the kiosk protocol: one
// connection, kept up with backoff, whose heartbeats carry the visitor's
// idle time. Losing it ends the session on both sides.
type ProtocolLink struct {
	Dialer   kioskproto.Dialer
	ID       string
	Token    string
	Software string
	Log      *slog.Logger
	// CA is the PEM the kiosk verifies its broker with, when it speaks TLS:
	// the viewer verifies the SPICE gateway with it too, and takes no offer
	// without a TLS port. Server is where the kiosk verified its broker:
	// the viewer connects there, whatever host an offer names.
	CA     []byte
	Server string

	mu     sync.Mutex
	client *kioskproto.Client
	fault  string
}

// Run implements Broker.
func (b *ProtocolLink) Run(ctx context.Context, events chan<- Event) {
	b.Dialer.Fault = func() string {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.fault
	}
	const minBackoff, maxBackoff = time.Second, 30 * time.Second
	backoff := minBackoff
	wasUp := true // so the first failure is reported
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := b.Dialer.Dial(dctx, b.ID, b.Token, b.Software)
		cancel()
		if err != nil {
			if wasUp {
				events <- BrokerDown{Err: err}
				wasUp = false
			}
			if errors.Is(err, kioskproto.ErrRefused) {
				// A wrong id or token: say it loudly; retrying often will not fix it.
				b.Log.Error("the broker refuses this kiosk: check kiosk, token and the broker's [[kiosk]] tables", "err", err)
				backoff = maxBackoff
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff, wasUp = minBackoff, true
		b.mu.Lock()
		b.client = c
		faulty := b.fault != ""
		b.mu.Unlock()
		if faulty {
			c.Beat() // the broker hears at once that this kiosk is out of order
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		w := c.Welcome()
		events <- BrokerUp{IdleLimit: time.Duration(w.IdleLimitSeconds) * time.Second, Viewer: w.Viewer}
		var sec *viewer.Secure
		if b.Dialer.TLS != nil {
			sec = &viewer.Secure{CA: b.CA, Subject: w.SpiceSubject}
		}
		for m := range c.Messages() {
			switch m.Type {
			case kioskproto.TStatus:
				events <- Status{Ahead: m.Status.Ahead, Message: m.Status.Message}
			case kioskproto.TOffer:
				o := *m.Offer
				if sec != nil {
					if o.TLSPort == 0 || sec.Subject == "" {
						b.Log.Error("the broker offers SPICE without TLS; this kiosk does not take it", "lease", o.Lease)
						c.End("the kiosk takes SPICE over TLS only")
						events <- Refuse{Message: TextUnavailable}
						continue
					}
					o.Host = b.Server // only ever the broker the kiosk verified
				}
				events <- Offer{Offer: o, Secure: sec}
			case kioskproto.TEnd:
				events <- End{Reason: m.End.Reason}
			case kioskproto.TError:
				events <- Refuse{Message: errorText(m.Error)}
			case kioskproto.TCommand:
				events <- Command{Command: *m.Command}
			}
		}
		stop()
		b.mu.Lock()
		b.client = nil
		b.mu.Unlock()
		if ctx.Err() == nil {
			events <- BrokerDown{Err: c.Err()}
			wasUp = false
		}
	}
}

// errorText is what the screen says for a broker's error.
func errorText(e *kioskproto.Error) string {
	if e.Code == kioskproto.CodeUnavailable {
		return TextUnavailable
	}
	return TextUnavailable + " (" + e.Code + ")"
}

// Request implements Broker.
func (b *ProtocolLink) Request(touched time.Time) error {
	b.mu.Lock()
	c := b.client
	b.mu.Unlock()
	if c == nil {
		return errors.New("not connected to the broker")
	}
	return c.Request(touched)
}

// End implements Broker.
func (b *ProtocolLink) End(reason string) {
	b.mu.Lock()
	c := b.client
	b.mu.Unlock()
	if c != nil {
		c.End(reason)
	}
}

// Screenshot implements Broker.
func (b *ProtocolLink) Screenshot(id string, jpeg []byte, refused string) {
	b.mu.Lock()
	c := b.client
	b.mu.Unlock()
	if c != nil {
		if err := c.SendScreenshot(id, jpeg, refused); err != nil {
			b.Log.Warn("could not send the screenshot the broker asked for", "err", err)
		}
	}
}

// Fault implements Broker: the heartbeats carry it, and the broker hears at
// once when it changes.
func (b *ProtocolLink) Fault(reason string) {
	b.mu.Lock()
	changed := b.fault != reason
	b.fault = reason
	c := b.client
	b.mu.Unlock()
	if changed && c != nil {
		c.Beat()
	}
}

// LegacyViewer are the viewer settings of the original remote.sh:
// --spice-disable-audio --spice-disable-effects=animation
// --spice-preferred-compression=auto-glz.
var LegacyViewer = kioskproto.Viewer{DisableAudio: true, DisableEffects: "animation", Compression: "auto-glz"}

// LegacyLink speaks the original signal port, for a kiosk configured the
// old way (no kiosk id and token): on a request it connects, waits for
// "RULE ADDED, CONNECT NOW!", and offers the SPICE gateway without a
// ticket. The broker knows such kiosks by their address.
type LegacyLink struct {
	Server     string
	SignalPort int
	SpicePort  int
	Log        *slog.Logger
	// Retry is how long the kiosk shows the notice after a failed request
	// before it offers sessions again (there is no connection to watch).
	Retry time.Duration

	events chan<- Event
	mu     sync.Mutex
	conn   net.Conn
}

// Run implements Broker.
func (b *LegacyLink) Run(ctx context.Context, events chan<- Event) {
	b.mu.Lock()
	b.events = events
	b.mu.Unlock()
	events <- BrokerUp{Viewer: &LegacyViewer}
	<-ctx.Done()
	b.End("kioskd stopping")
}

// Request implements Broker.
func (b *LegacyLink) Request(time.Time) error {
	addr := net.JoinHostPort(b.Server, strconv.Itoa(b.SignalPort))
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		b.unavailable(fmt.Errorf("signal port %s: %w", addr, err))
		return nil
	}
	b.mu.Lock()
	b.conn = conn
	events := b.events
	b.mu.Unlock()
	go func() {
		defer conn.Close()
		sc := bufio.NewScanner(conn)
		offered := false
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			switch {
			case strings.Contains(line, "RULE ADDED, CONNECT NOW!"):
				if !offered {
					offered = true
					events <- Offer{Offer: kioskproto.Offer{Lease: "legacy", Host: b.Server, Port: b.SpicePort,
						Expires: time.Now().Add(10 * time.Second), Viewer: LegacyViewer}}
				}
			case strings.HasPrefix(line, "WAITING: "):
				events <- Status{Message: strings.TrimPrefix(line, "WAITING: ")}
			case strings.HasPrefix(line, "NOT ALLOWED"), strings.HasPrefix(line, "SERVICE UNAVAILABLE"):
				b.Log.Error("the broker refuses this kiosk on its signal port", "said", line)
				events <- Refuse{Message: TextUnavailable}
				return
			case strings.HasPrefix(line, "NOT CONNECTED"):
				events <- End{Reason: line}
				return
			}
		}
	}()
	return nil
}

func (b *LegacyLink) unavailable(err error) {
	b.Log.Warn("cannot reach the broker", "err", err)
	b.mu.Lock()
	events := b.events
	b.mu.Unlock()
	go func() {
		events <- Refuse{Message: TextUnavailable}
		time.Sleep(b.Retry)
		events <- BrokerUp{Viewer: &LegacyViewer}
	}()
}

// End implements Broker: before the link, hanging up gives the VM back.
func (b *LegacyLink) End(reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.Close()
		b.conn = nil
	}
}

// Fault implements Broker: the signal port has no way to say it, so the
// kiosk's own screen and log are all there is (the kiosk asks for nothing
// while out of order).
func (b *LegacyLink) Fault(string) {}

// Screenshot implements Broker: the signal port asks for none.
func (b *LegacyLink) Screenshot(string, []byte, string) {}
