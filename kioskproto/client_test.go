package kioskproto

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeBroker accepts one kiosk and runs serve on it.
func fakeBroker(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String()
}

func TestClientHeartbeatsAndOffers(t *testing.T) {
	beats := make(chan *Heartbeat, 8)
	addr := fakeBroker(t, func(c net.Conn) {
		if m, err := ReadMessage(c); err != nil || m.Type != THello || m.Hello.Kiosk != "k1" || m.Hello.Token != "tok" {
			t.Errorf("hello = %+v, %v", m, err)
			return
		}
		WriteMessage(c, NewWelcome(time.Second, time.Minute, "test", Viewer{}))
		for {
			m, err := ReadMessage(c)
			if err != nil {
				return
			}
			switch m.Type {
			case THeartbeat:
				beats <- m.Heartbeat
				WriteMessage(c, NewHeartbeat(0, ""))
			case TRequest:
				WriteMessage(c, NewOffer(Offer{Lease: "l", Host: "h", Port: 1, Ticket: "t", Expires: time.Now().Add(time.Minute)}))
			}
		}
	})
	c, err := Dialer{Addr: addr, Idle: func() time.Duration { return 42 * time.Second },
		Report: func() Report {
			return Report{State: "idle", Uptime: 3*time.Hour + 500*time.Millisecond, Screen: "1280x800", LastError: strings.Repeat("e", 2*MaxText)}
		}}.Dial(context.Background(), "k1", "tok", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Welcome().IdleLimitSeconds != 60 {
		t.Errorf("Welcome() = %+v", c.Welcome())
	}
	c.Request(time.Time{})
	if m := <-c.Messages(); m == nil || m.Type != TOffer {
		t.Errorf("after Request: %+v, want an offer (heartbeats are not delivered)", m)
	}
	select {
	case h := <-beats:
		if h.IdleSeconds != 42 || h.State != "idle" || h.UptimeSeconds != 3*3600 || h.Screen != "1280x800" || len(h.LastError) > MaxText {
			t.Errorf("heartbeat = idle %d, state %q, uptime %d, last error of %d bytes; want 42, idle, 10800, clipped",
				h.IdleSeconds, h.State, h.UptimeSeconds, len(h.LastError))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat")
	}
}

func TestClientRefused(t *testing.T) {
	addr := fakeBroker(t, func(c net.Conn) {
		ReadMessage(c)
		WriteMessage(c, NewError(CodeUnknown, `kiosk "k1" is not known to this broker`))
	})
	_, err := Dialer{Addr: addr}.Dial(context.Background(), "k1", "tok", "")
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not known") {
		t.Errorf("Dial = %v, want ErrRefused saying why", err)
	}
}

func TestClientNoticesSilentBroker(t *testing.T) {
	addr := fakeBroker(t, func(c net.Conn) {
		ReadMessage(c)
		WriteMessage(c, NewWelcome(time.Second, time.Minute, "test", Viewer{}))
		time.Sleep(10 * time.Second) // then says nothing more
	})
	c, err := Dialer{Addr: addr}.Dial(context.Background(), "k1", "tok", "")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-c.Messages():
		if ok {
			t.Fatal("a message from a silent broker")
		}
	case <-time.After(8 * time.Second):
		t.Fatal("the client did not notice the broker went silent")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "silent") {
		t.Errorf("Err() = %v", err)
	}
}

// TestClientIdleRate: a kiosk with no session heartbeats at the welcome's
// idle rate, at the busy rate from its request until the session ends
// (a "busy" error is about a second request: the first one holds), and
// expects the broker's answers at the rate it beats at.
func TestClientIdleRate(t *testing.T) {
	beats := make(chan time.Time, 64)
	say := make(chan *Message)
	answer := make(chan bool, 1)
	answer <- true
	addr := fakeBroker(t, func(c net.Conn) {
		if m, err := ReadMessage(c); err != nil || !m.Hello.IdleBeats {
			t.Errorf("hello = %+v, %v: want idle_beats", m, err)
			return
		}
		WriteMessage(c, NewWelcome(time.Second, time.Minute, "test", Viewer{}).WithIdleHeartbeat(3*time.Second))
		got := make(chan *Message)
		go func() {
			for {
				m, err := ReadMessage(c)
				if err != nil {
					close(got)
					return
				}
				got <- m
			}
		}()
		for {
			select {
			case m, ok := <-got:
				if !ok {
					return
				}
				if m.Type == THeartbeat {
					beats <- time.Now()
					a := <-answer
					answer <- a
					if a {
						WriteMessage(c, NewHeartbeat(0, ""))
					}
				}
			case m := <-say:
				WriteMessage(c, m)
			}
		}
	})
	c, err := Dialer{Addr: addr}.Dial(context.Background(), "k1", "tok", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	count := func(d time.Duration) int {
		n := 0
		for end := time.After(d); ; {
			select {
			case <-beats:
				n++
			case <-end:
				return n
			}
		}
	}
	busy := func() bool {
		c.dmu.Lock()
		defer c.dmu.Unlock()
		return c.busy
	}
	deliver := func(m *Message) {
		t.Helper()
		say <- m
		if got := <-c.Messages(); got == nil || got.Type != m.Type {
			t.Fatalf("got %+v, want the %s sent", got, m.Type)
		}
	}
	if n := count(3600 * time.Millisecond); n != 1 {
		t.Errorf("idle: %d heartbeats in 3.6s, want 1 (every 3s)", n)
	}
	c.Request(time.Time{})
	if n := count(2600 * time.Millisecond); n < 2 {
		t.Errorf("asking for a session: %d heartbeats in 2.6s, want at least 2 (every 1s)", n)
	}
	deliver(NewError(CodeBusy, "this kiosk already has a session or a request"))
	if !busy() {
		t.Error(`a "busy" error ended the kiosk's request`)
	}
	deliver(NewError(CodeUnavailable, "no VM"))
	if busy() {
		t.Error("a refused request left the kiosk at the busy rate")
	}
	c.Request(time.Time{})
	deliver(NewEnd("done"))
	if busy() {
		t.Error("an ended session left the kiosk at the busy rate")
	}
	// The broker stops answering: at the idle rate, the kiosk waits three
	// idle beats (9s) for it, not three busy ones (3s).
	<-answer
	answer <- false
	count(4 * time.Second)
	if err := c.Err(); err != nil {
		t.Errorf("4s after the session ended, with the broker silent: %v; want the connection up", err)
	}
}
