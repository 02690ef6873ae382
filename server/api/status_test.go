package api

import (
	"strings"
	"testing"
	"time"

	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

func TestStatusTableShowsOutOfOrderKiosks(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	since := now.Add(-130 * time.Second)
	s := &Status{Kiosks: []session.KioskStatus{
		{ID: "lobby-1", Addr: "169.254.24.11", Connected: now.Add(-time.Hour), Online: true, State: "idle", UptimeSeconds: 7200,
			Screen: "1920x1080", Software: "kioskd"},
		{ID: "lobby-2", Addr: "169.254.24.12", LastSeen: now.Add(-5 * time.Minute), State: "idle", LastError: "lost the broker"},
		{ID: "lobby-3", Addr: "169.254.24.13", Connected: now.Add(-time.Hour), Online: true, Fault: "logout incomplete: wipe: still holds [\"x\"]", FaultSince: &since},
		{ID: "lobby-4"},
	}}
	var b strings.Builder
	s.WriteTable(&b, now)
	for _, want := range []string{
		`OUT OF ORDER: kiosk lobby-3 (169.254.24.13) for 2m10s: logout incomplete: wipe: still holds ["x"]`,
		"kiosks connected 2   out of order 1   offline 2",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status table:\n%s\nwant a line %q", b.String(), want)
		}
	}
	if strings.Contains(b.String(), "kiosk lobby-1 (") {
		t.Errorf("status table lists an in-order kiosk as out of order:\n%s", b.String())
	}
	// The fleet table: each kiosk's line, online or since when not.
	for _, want := range [][]string{
		{"lobby-1", "169.254.24.11", "online", "idle", "2h0m0s", "1920x1080", "kioskd"},
		{"lobby-2", "offline for 5m0s", "lost the broker"},
		{"lobby-3", "online", "out of order"},
		{"lobby-4", "-", "never"},
	} {
		found := false
		for _, line := range strings.Split(b.String(), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != want[0] {
				continue
			}
			found = true
			for _, w := range want[1:] {
				if !strings.Contains(line, w) {
					t.Errorf("fleet line %q lacks %q", line, w)
				}
			}
		}
		if !found {
			t.Errorf("status table has no line for kiosk %s:\n%s", want[0], b.String())
		}
	}
}

// TestStatusTableShowsSchedule: the status says when a closed site opens.
func TestStatusTableShowsSchedule(t *testing.T) {
	now := time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)
	s := &Status{Closed: "closing time (opening hours)",
		Schedule: &schedule.State{Opens: now.Add(12 * time.Hour), Notice: "Closed — opens tomorrow 08:00"}}
	var b strings.Builder
	s.WriteTable(&b, now)
	for _, want := range []string{"CLOSED (opening hours) until Wed 08:00; the pool keeps 0", "NO NEW SESSIONS: closing time (opening hours)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status table:\n%s\nwant %q", b.String(), want)
		}
	}
}

// TestStatusTableShowsHosts: with several hosts, a line per host (lost,
// copying a version) and each VM's host.
func TestStatusTableShowsHosts(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	lost := now.Add(-45 * time.Second)
	s := &Status{Pool: pool.Status{Current: 3, Counts: map[pool.State]int{}, Hosts: []pool.HostStatus{
		{Name: "kvm1", Connected: true, Size: 2, MaxVMs: 4, Current: 3, Counts: map[pool.State]int{pool.Clean: 2, pool.InUse: 1}},
		{Name: "kvm2", Group: "branch", Lost: &lost, MaxVMs: 4, Current: 2},
		{Name: "kvm3", Connected: true, MaxVMs: 4, Current: 2, Publish: &pool.PublishStatus{Version: 3, Total: 4 << 20, Written: 1 << 20}},
	}, VMs: []pool.VMStatus{{Name: "undervdi-aaaa", Host: "kvm1", State: pool.Clean, Since: now}}}}
	var b strings.Builder
	s.WriteTable(&b, now)
	for _, want := range [][]string{
		{"kvm1", "-", "up", "2/2", "1", "4", "3"},
		{"kvm2", "branch", "LOST", "45s"},
		{"kvm3", "copying version 3: 1.0 MiB of 4.0 MiB"},
		{"kvm1", "undervdi-aaaa", "clean"},
	} {
		found := false
		for _, line := range strings.Split(b.String(), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != want[0] || (f[1] == "undervdi-aaaa") != (want[1] == "undervdi-aaaa") {
				continue
			}
			found = true
			for _, w := range want[1:] {
				if !strings.Contains(line, w) {
					t.Errorf("line %q lacks %q", line, w)
				}
			}
		}
		if !found {
			t.Errorf("status table has no line for %v:\n%s", want, b.String())
		}
	}
}
