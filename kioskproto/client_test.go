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
	beats := make(chan int, 8)
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
				beats <- m.Heartbeat.IdleSeconds
				WriteMessage(c, NewHeartbeat(0, ""))
			case TRequest:
				WriteMessage(c, NewOffer(Offer{Lease: "l", Host: "h", Port: 1, Ticket: "t", Expires: time.Now().Add(time.Minute)}))
			}
		}
	})
	c, err := Dialer{Addr: addr, Idle: func() time.Duration { return 42 * time.Second }}.Dial(context.Background(), "k1", "tok", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Welcome().IdleLimitSeconds != 60 {
		t.Errorf("Welcome() = %+v", c.Welcome())
	}
	c.Request()
	if m := <-c.Messages(); m == nil || m.Type != TOffer {
		t.Errorf("after Request: %+v, want an offer (heartbeats are not delivered)", m)
	}
	select {
	case idle := <-beats:
		if idle != 42 {
			t.Errorf("heartbeat idle = %d, want 42", idle)
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
