package kioskproto

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrRefused is wrapped by Dial's error when the broker refuses the hello.
var ErrRefused = errors.New("broker refused the kiosk")

// Client is the kiosk's side of a connection to the broker. It sends
// heartbeats with the visitor's idle time, and notices a silent broker.
type Client struct {
	conn    net.Conn
	r       *bufio.Reader
	welcome Welcome
	idle    func() time.Duration
	fault   func() string
	report  func() Report
	msgs    chan *Message
	closed  chan struct{}
	once    sync.Once

	wmu sync.Mutex // one writer at a time

	// busy: the kiosk asked for a session and it has not ended. A busy
	// kiosk heartbeats every HeartbeatSeconds, an idle one every
	// IdleHeartbeatSeconds. dmu orders changes of busy with the read
	// deadline that follows from it: the broker answers every heartbeat,
	// so the kiosk expects to hear from it at the same rate.
	dmu      sync.Mutex
	busy     bool
	lastBeat atomic.Int64 // unix nanoseconds of the latest heartbeat sent

	emu sync.Mutex
	err error // why the connection ended
}

// Dialer says how to reach the broker.
type Dialer struct {
	Addr string      // host:port of the broker's kiosk protocol
	TLS  *tls.Config // nil for plain TCP
	// Idle returns how long the visitor has not touched anything; it goes
	// into every heartbeat. Nil reports 0.
	Idle func() time.Duration
	// Fault returns why the kiosk is out of order ("" when it is not); it
	// goes into every heartbeat. Nil reports "".
	Fault func() string
	// Report is the rest of what the kiosk says of itself in every
	// heartbeat, for the broker's fleet view; nil says nothing.
	Report func() Report
	// Commands says the kiosk takes operators' commands (Command
	// messages); Image is its image's version. Both go in the hello.
	Commands bool
	Image    string
}

// Report is what a kiosk tells the broker about itself besides idle time
// and fault.
type Report struct {
	State     string        // kioskd's state
	Uptime    time.Duration // since the kiosk machine booted
	Screen    string        // the display's size, "1920x1080"
	LastError string        // the latest thing that went wrong; "" if nothing did
}

// Dial connects, says hello, and waits for the welcome.
func (d Dialer) Dial(ctx context.Context, id, token, software string) (*Client, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.Addr)
	if err != nil {
		return nil, err
	}
	if d.TLS != nil {
		tc := tls.Client(conn, d.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS with the broker: %w", err)
		}
		conn = tc
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(15 * time.Second))
	}
	hello := NewHello(id, token, software)
	hello.Hello.Commands, hello.Hello.Image, hello.Hello.IdleBeats = d.Commands, short(d.Image), true
	if err := WriteMessage(conn, hello); err != nil {
		conn.Close()
		return nil, err
	}
	r := bufio.NewReader(conn) // a frame in one read, not two
	m, err := ReadMessage(r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("waiting for the broker's welcome: %w", err)
	}
	switch m.Type {
	case TWelcome:
	case TError:
		conn.Close()
		return nil, fmt.Errorf("%w: %s", ErrRefused, m.Error.Error())
	default:
		conn.Close()
		return nil, fmt.Errorf("broker answered hello with %s", m.Type)
	}
	conn.SetDeadline(time.Time{})
	idle := d.Idle
	if idle == nil {
		idle = func() time.Duration { return 0 }
	}
	fault := d.Fault
	if fault == nil {
		fault = func() string { return "" }
	}
	c := &Client{conn: conn, r: r, welcome: *m.Welcome, idle: idle, fault: fault, report: d.Report, msgs: make(chan *Message, 16), closed: make(chan struct{})}
	c.lastBeat.Store(time.Now().UnixNano())
	go c.readLoop()
	go c.heartbeatLoop()
	return c, nil
}

// Welcome is what the broker said when it accepted the kiosk.
func (c *Client) Welcome() Welcome { return c.welcome }

// Messages delivers status, offer, end and error messages. It is closed when
// the connection ends; Err then says why.
func (c *Client) Messages() <-chan *Message { return c.msgs }

// Err is why the connection ended, once Messages is closed.
func (c *Client) Err() error {
	c.emu.Lock()
	defer c.emu.Unlock()
	return c.err
}

// Request asks for a session for the touch at touched (zero: now).
func (c *Client) Request(touched time.Time) error {
	m := NewRequest()
	if !touched.IsZero() {
		m.Request.TouchAgoMS = int(min(max(time.Since(touched), 0), time.Hour) / time.Millisecond)
	}
	c.setBusy(true)
	return c.send(m)
}

// End ends the current session (or request) with a reason.
func (c *Client) End(reason string) error {
	err := c.send(NewEnd(reason))
	c.setBusy(false)
	return err
}

// interval is how often the kiosk heartbeats now; c.dmu is held.
func (c *Client) interval() time.Duration {
	s := c.welcome.HeartbeatSeconds
	if !c.busy && c.welcome.IdleHeartbeatSeconds > s {
		s = c.welcome.IdleHeartbeatSeconds
	}
	return time.Duration(max(s, 1)) * time.Second
}

// armLocked sets the read deadline the current interval gives: three
// missed answers and the broker is gone. c.dmu is held.
func (c *Client) armLocked() time.Duration {
	silence := 3 * c.interval()
	c.conn.SetReadDeadline(time.Now().Add(silence))
	return silence
}

// setBusy marks a session asked for or ended, and re-arms the read
// deadline for the new rate.
func (c *Client) setBusy(busy bool) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.busy != busy {
		c.busy = busy
		c.armLocked()
	}
}

// SendScreenshot sends the screenshot the broker asked for as id, a JPEG in
// parts, or refuses it (refused says why).
func (c *Client) SendScreenshot(id string, jpeg []byte, refused string) error {
	if refused != "" {
		return c.send(&Message{Type: TScreenshot, Screenshot: &Screenshot{ID: id, Last: true, Refused: Clip(refused)}})
	}
	for part := 0; ; part++ {
		n := min(len(jpeg), ScreenshotPart)
		last := n == len(jpeg)
		if err := c.send(&Message{Type: TScreenshot, Screenshot: &Screenshot{ID: id, Part: part, Last: last, Data: jpeg[:n]}}); err != nil {
			return err
		}
		if last {
			return nil
		}
		jpeg = jpeg[n:]
	}
}

// Beat sends a heartbeat now (heartbeats go out on their own too): the
// kiosk calls it when its fault changes, so the broker hears at once.
func (c *Client) Beat() error {
	m := NewHeartbeat(c.idle(), c.fault())
	if c.report != nil {
		r := c.report()
		h := m.Heartbeat
		h.State, h.UptimeSeconds, h.Screen, h.LastError = short(r.State), int(r.Uptime/time.Second), short(r.Screen), Clip(r.LastError)
	}
	c.lastBeat.Store(time.Now().UnixNano())
	return c.send(m)
}

// Close ends the connection; the broker ends the kiosk's session.
func (c *Client) Close() error {
	c.fail(errors.New("closed by the kiosk"))
	return nil
}

func (c *Client) send(m *Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := WriteMessage(c.conn, m); err != nil {
		c.fail(err)
		return err
	}
	return nil
}

func (c *Client) readLoop() {
	defer close(c.msgs)
	for {
		// The broker heartbeats too, answering the kiosk's.
		c.dmu.Lock()
		silence := c.armLocked()
		c.dmu.Unlock()
		m, err := ReadMessage(c.r)
		if err != nil {
			if isTimeout(err) {
				err = fmt.Errorf("the broker went silent for %v", silence)
			}
			c.fail(err)
			return
		}
		switch {
		case m.Type == THeartbeat:
			continue
		case m.Type == TEnd, m.Type == TError && m.Error.Code != CodeBusy:
			// The session ended, or the request was refused ("busy" is
			// the answer to a second request: the first one holds).
			c.setBusy(false)
		}
		select {
		case c.msgs <- m:
		case <-c.closed:
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// heartbeatLoop beats at the busy rate's ticks whenever a beat is due at
// the current rate: a kiosk that asks for a session is heard from at the
// faster rate within one tick.
func (c *Client) heartbeatLoop() {
	tick := time.Duration(max(c.welcome.HeartbeatSeconds, 1)) * time.Second
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.dmu.Lock()
			every := c.interval()
			c.dmu.Unlock()
			if time.Since(time.Unix(0, c.lastBeat.Load()))+tick/2 < every {
				continue
			}
			if c.Beat() != nil {
				return
			}
		case <-c.closed:
			return
		}
	}
}

func (c *Client) fail(err error) {
	c.once.Do(func() {
		c.emu.Lock()
		c.err = err
		c.emu.Unlock()
		close(c.closed)
		c.conn.Close()
	})
}

// short cuts s to an id-sized field.
func short(s string) string {
	if len(s) > maxID {
		return s[:maxID]
	}
	return s
}
