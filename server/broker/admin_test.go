package broker

import (
	"strings"
	"testing"
	"time"

	"undervdi/server/session"
)

func TestStatusTableShowsOutOfOrderKiosks(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	since := now.Add(-130 * time.Second)
	s := &Status{Kiosks: []session.KioskStatus{
		{ID: "lobby-1", Addr: "169.254.24.11", Connected: now.Add(-time.Hour)},
		{ID: "lobby-3", Addr: "169.254.24.13", Connected: now.Add(-time.Hour), Fault: "logout incomplete: wipe: still holds [\"x\"]", FaultSince: &since},
	}}
	var b strings.Builder
	s.WriteTable(&b, now)
	for _, want := range []string{
		`OUT OF ORDER: kiosk lobby-3 (169.254.24.13) for 2m10s: logout incomplete: wipe: still holds ["x"]`,
		"kiosks connected 2   out of order 1",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status table:\n%s\nwant a line %q", b.String(), want)
		}
	}
	if strings.Contains(b.String(), "kiosk lobby-1 (") {
		t.Errorf("status table lists an in-order kiosk as out of order:\n%s", b.String())
	}
}
