package kioskproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func frame(payload string) []byte {
	b := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	copy(b[4:], payload)
	return b
}

func TestRoundTrip(t *testing.T) {
	expires := time.Date(2026, 11, 23, 10, 0, 10, 0, time.UTC)
	for _, m := range []*Message{
		NewHello("lobby-1", "s3cret", "kioskd 0.1"),
		NewWelcome(5*time.Second, 5*time.Minute, "vdi-broker", Viewer{Title: "undervdi", DisableAudio: true}),
		NewRequest(),
		NewStatus(StateQueued, 2, "2 visitors ahead of you"),
		NewStatus(StatePreparing, 0, ""),
		NewOffer(Offer{Lease: "l-1", Host: "169.254.24.1", Port: 5906, Ticket: "t", Expires: expires,
			Viewer: Viewer{DisableAudio: true, USBAutoRedirect: "0x08,-1,-1,-1,1|-1,-1,-1,-1,0"}}),
		NewHeartbeat(42*time.Second, "logout incomplete: wipe: still holds [\"x\"]"),
		NewEnd("guest powered off"),
		NewError(CodeUnknown, "kiosk lobby-9 is not known to this broker"),
	} {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("WriteMessage(%s) = %v", m.Type, err)
		}
		got, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("ReadMessage(%s) = %v", m.Type, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip of %s = %+v, want %+v", m.Type, got, m)
		}
	}
}

func TestReadMessageErrors(t *testing.T) {
	big := make([]byte, 4)
	binary.BigEndian.PutUint32(big, MaxFrame+1)
	for _, tc := range []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"empty", nil, io.EOF, ""},
		{"truncated length", []byte{0, 0}, io.ErrUnexpectedEOF, ""},
		{"truncated payload", frame(`{"type":"request","request":{}}`)[:10], io.ErrUnexpectedEOF, ""},
		{"too large", big, ErrFrameTooLarge, ""},
		{"not json", frame(`hello`), ErrBadMessage, ""},
		{"unknown type", frame(`{"type":"launch"}`), ErrBadMessage, `unknown type "launch"`},
		{"missing payload", frame(`{"type":"hello"}`), ErrBadMessage, "exactly its hello payload"},
		{"two payloads", frame(`{"type":"request","request":{},"end":{"reason":"x"}}`), ErrBadMessage, "exactly"},
		{"unknown field", frame(`{"type":"request","request":{},"extra":1}`), ErrBadMessage, "unknown field"},
		{"trailing data", frame(`{"type":"request","request":{}} {}`), ErrBadMessage, "trailing"},
		{"no kiosk id", frame(`{"type":"hello","hello":{"version":1,"token":"x"}}`), ErrBadMessage, "kiosk is required"},
		{"long id", frame(`{"type":"hello","hello":{"version":1,"kiosk":"` + strings.Repeat("k", 65) + `"}}`), ErrBadMessage, "kiosk is 65 bytes"},
		{"negative idle", frame(`{"type":"heartbeat","heartbeat":{"idle_seconds":-1}}`), ErrBadMessage, "idle_seconds"},
		{"touch long ago", frame(`{"type":"request","request":{"touch_ago_ms":3600001}}`), ErrBadMessage, "touch_ago_ms"},
		{"negative uptime", frame(`{"type":"heartbeat","heartbeat":{"uptime_seconds":-5}}`), ErrBadMessage, "uptime_seconds"},
		{"long kiosk state", frame(`{"type":"heartbeat","heartbeat":{"state":"` + strings.Repeat("s", 65) + `"}}`), ErrBadMessage, "state is 65 bytes"},
		{"long screen", frame(`{"type":"heartbeat","heartbeat":{"screen":"` + strings.Repeat("9", 65) + `"}}`), ErrBadMessage, "screen is 65 bytes"},
		{"bad state", frame(`{"type":"status","status":{"state":"dancing"}}`), ErrBadMessage, `state "dancing"`},
		{"long ticket", frame(`{"type":"offer","offer":{"lease":"l","host":"h","port":1,"expires":"2026-01-01T00:00:00Z","ticket":"` + strings.Repeat("t", 61) + `"}}`), ErrBadMessage, "ticket is 61 bytes"},
	} {
		_, err := ReadMessage(bytes.NewReader(tc.in))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: ReadMessage() = %v, want %v", tc.name, err, tc.want)
			continue
		}
		if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: ReadMessage() = %q, want it to say %q", tc.name, err, tc.text)
		}
	}
}

func TestWriteRefusesInvalid(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, &Message{Type: TEnd}); !errors.Is(err, ErrBadMessage) {
		t.Errorf("WriteMessage(end without payload) = %v, want ErrBadMessage", err)
	}
	if buf.Len() != 0 {
		t.Errorf("an invalid message wrote %d bytes", buf.Len())
	}
}

func FuzzReadMessage(f *testing.F) {
	for _, m := range []*Message{
		NewHello("k", "t", ""), NewRequest(), NewHeartbeat(time.Second, ""), NewEnd("x"),
		NewOffer(Offer{Lease: "l", Host: "h", Port: 1, Ticket: "t", Expires: time.Unix(1, 0)}),
	} {
		var buf bytes.Buffer
		WriteMessage(&buf, m)
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadMessage(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Whatever the decoder accepts must be valid and survive a round trip.
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid message: %v", err)
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("WriteMessage(accepted message) = %v", err)
		}
	})
}

func TestClipFitsATextField(t *testing.T) {
	for _, s := range []string{"short", strings.Repeat("a", MaxText), strings.Repeat("é", MaxText), strings.Repeat("x", 5000)} {
		c := Clip(s)
		if err := NewHeartbeat(0, c).Validate(); err != nil {
			t.Errorf("Clip(%d bytes) = %d bytes: %v", len(s), len(c), err)
		}
		if len(s) <= MaxText && c != s {
			t.Errorf("Clip changed a short text")
		}
	}
}
