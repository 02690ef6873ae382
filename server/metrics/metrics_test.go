package metrics

import (
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"undervdi/internal/promtest"
	"undervdi/server/pool"
	"undervdi/server/session"
)

func scrape(t *testing.T, m *Metrics) promtest.Scrape {
	t.Helper()
	srv := httptest.NewServer(m.Handler(slog.New(slog.DiscardHandler)))
	defer srv.Close()
	s, err := promtest.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// want checks one gauge or counter; absent means it must not be there.
type want struct {
	name   string
	labels []string
	value  float64
	absent bool
}

func check(t *testing.T, s promtest.Scrape, wants []want) {
	t.Helper()
	for _, w := range wants {
		got, ok := s.Value(w.name, w.labels...)
		switch {
		case w.absent && ok:
			t.Errorf("%s%v = %v, want none", w.name, w.labels, got)
		case !w.absent && !ok:
			t.Errorf("%s%v missing", w.name, w.labels)
		case !w.absent && got != w.value:
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
}

func TestScrapeReadsTheBrokersState(t *testing.T) {
	now := time.Now()
	st := pool.Status{Connected: true, Size: 3, MaxVMs: 8, Current: 2, Degraded: "5 clone failures in a row",
		Counts:  map[pool.State]int{pool.Clean: 2, pool.InUse: 1, pool.Booting: 1},
		Clones:  map[int]int{1: 1, 2: 3},
		Publish: &pool.PublishStatus{Version: 3, Total: 4 << 30, Written: 1 << 30},
		Hosts: []pool.HostStatus{{Name: "kvm1", Connected: true, Size: 2, Current: 2, Counts: map[pool.State]int{pool.Clean: 2}},
			{Name: "kvm2", Size: 0, Current: 1, Publish: &pool.PublishStatus{Version: 2, Total: 100, Written: 50}}}}
	m := New()
	m.Watch(Source{
		Pool: func() pool.Status { return st },
		Kiosks: func() []session.KioskStatus {
			return []session.KioskStatus{{ID: "a", Online: true}, {ID: "b", Online: true, Fault: "logout incomplete"}, {ID: "c", Online: true},
				{ID: "d"}, {ID: "e", Fault: "an offline kiosk's last word"}}
		},
		Leases: func() []session.LeaseStatus {
			return []session.LeaseStatus{{ID: "l1", Linked: &now}, {ID: "l2"}}
		},
		Queue: func() int { return 4 },
	})
	check(t, scrape(t, m), []want{
		{name: "undervdi_pool_vms", labels: []string{"state=clean"}, value: 2},
		{name: "undervdi_pool_vms", labels: []string{"state=in-use"}, value: 1},
		{name: "undervdi_pool_vms", labels: []string{"state=offered"}, value: 0}, // every state, at zero too
		{name: "undervdi_pool_vms", labels: []string{"state=gone"}, absent: true},
		{name: "undervdi_pool_size", value: 3},
		{name: "undervdi_pool_max_vms", value: 8},
		{name: "undervdi_pool_degraded", value: 1},
		{name: "undervdi_pool_paused", value: 0},
		{name: "undervdi_libvirt_up", value: 1},
		{name: "undervdi_golden_version", value: 2},
		{name: "undervdi_pool_vms_by_version", labels: []string{"version=1"}, value: 1},
		{name: "undervdi_pool_vms_by_version", labels: []string{"version=2"}, value: 3},
		{name: "undervdi_publish_progress_ratio", value: 0.25},
		{name: "undervdi_kiosks_connected", value: 3},
		{name: "undervdi_kiosks_out_of_order", value: 1},
		{name: "undervdi_kiosks_offline", value: 2},
		{name: "undervdi_sessions", labels: []string{"linked=true"}, value: 1},
		{name: "undervdi_sessions", labels: []string{"linked=false"}, value: 1},
		{name: "undervdi_queue_length", value: 4},
		{name: "undervdi_host_up", labels: []string{"host=kvm1"}, value: 1},
		{name: "undervdi_host_up", labels: []string{"host=kvm2"}, value: 0},
		{name: "undervdi_host_pool_size", labels: []string{"host=kvm1"}, value: 2},
		{name: "undervdi_host_vms", labels: []string{"host=kvm1", "state=clean"}, value: 2},
		{name: "undervdi_host_version", labels: []string{"host=kvm2"}, value: 1},
		{name: "undervdi_host_copy_progress_ratio", labels: []string{"host=kvm2"}, value: 0.5},
		{name: "undervdi_host_copy_progress_ratio", labels: []string{"host=kvm1"}, absent: true},
	})

	// The next scrape reads the state again: libvirt lost, the publish done.
	done := now
	st.Connected, st.Publish.Finished = false, &done
	check(t, scrape(t, m), []want{
		{name: "undervdi_libvirt_up", value: 0},
		{name: "undervdi_publish_progress_ratio", absent: true},
	})
}

func TestHooksCountWhatHappens(t *testing.T) {
	m := New()
	h := m.Hooks()
	// Before anything happened, the series are there at zero.
	s := scrape(t, m)
	if n, ok := s.Count("undervdi_handoff_seconds", "protocol=legacy"); !ok || n != 0 {
		t.Errorf("legacy handoffs before any: %d, %v; want 0, present", n, ok)
	}
	check(t, s, []want{{name: "undervdi_sessions_ended_total", labels: []string{"used=true", "cause=idle"}, value: 0}})

	check(t, s, []want{{name: "undervdi_refused_total", labels: []string{"what=spice-link"}, value: 0}})

	ph := m.PoolHooks()
	ph.Cloned(8 * time.Second)
	ph.Cloned(9 * time.Second)
	ph.CloneFailed()
	ph.Wiped(200 * time.Millisecond)
	m.Refused("kiosk")
	m.Refused("kiosk")
	m.Refused("spice-link")
	h.Handoff(300*time.Microsecond, false)
	h.Handoff(2*time.Millisecond, false)
	h.Handoff(40*time.Second, true)
	h.TouchToLink(1500*time.Millisecond, false)
	h.Ended(true, session.CauseVisitor)
	h.Ended(true, session.CauseVisitor)
	h.Ended(false, session.CauseNotLinked)
	s = scrape(t, m)
	for p, want := range map[string]uint64{"kiosk": 2, "legacy": 1} {
		if n, _ := s.Count("undervdi_handoff_seconds", "protocol="+p); n != want {
			t.Errorf("handoffs on %s: %d, want %d", p, n, want)
		}
	}
	check(t, s, []want{
		{name: "undervdi_sessions_ended_total", labels: []string{"used=true", "cause=visitor"}, value: 2},
		{name: "undervdi_sessions_ended_total", labels: []string{"used=false", "cause=not-linked"}, value: 1},
		{name: "undervdi_sessions_ended_total", labels: []string{"used=true", "cause=idle"}, value: 0},
		{name: "undervdi_clone_failures_total", value: 1},
		{name: "undervdi_refused_total", labels: []string{"what=kiosk"}, value: 2},
		{name: "undervdi_refused_total", labels: []string{"what=spice-link"}, value: 1},
		{name: "undervdi_refused_total", labels: []string{"what=legacy"}, value: 0},
	})
	if n, _ := s.Count("undervdi_clone_seconds"); n != 2 {
		t.Errorf("clones observed: %d, want 2", n)
	}
	if n, _ := s.Count("undervdi_touch_to_link_seconds", "protocol=kiosk"); n != 1 {
		t.Errorf("touch-to-link on the kiosk protocol observed: %d, want 1", n)
	}
	if n, _ := s.Count("undervdi_wipe_seconds"); n != 1 {
		t.Errorf("wipes observed: %d, want 1", n)
	}
	if _, ok := s.Value("process_open_fds"); !ok {
		t.Error("no process metrics")
	}
	if _, ok := s["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
}

// TestDashboardQueriesExportedMetrics: every undervdi_ metric the shipped
// Grafana dashboard queries is one the broker exports (a histogram's
// _bucket, _sum and _count included), and it queries each of them.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	m := New()
	// A pool in a roll, publishing: every series is there.
	st := pool.Status{Clones: map[int]int{1: 1, 2: 1}, Publish: &pool.PublishStatus{Total: 2, Written: 1},
		Hosts: []pool.HostStatus{{Name: "kvm2", Publish: &pool.PublishStatus{Total: 2, Written: 1}}}}
	m.Watch(Source{Pool: func() pool.Status { return st }, Kiosks: func() []session.KioskStatus { return nil },
		Leases: func() []session.LeaseStatus { return nil }, Queue: func() int { return 0 }})
	exported := map[string]bool{}
	for name, f := range scrape(t, m) {
		exported[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[name+s] = true
			}
		}
	}
	queried := map[string]bool{}
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			for _, name := range regexp.MustCompile(`undervdi_[a-z_]+`).FindAllString(q.Expr, -1) {
				queried[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")] = true
				if !exported[name] {
					t.Errorf("panel %q queries %s, which the broker does not export", p.Title, name)
				}
			}
		}
	}
	for name := range exported {
		if strings.HasPrefix(name, "undervdi_") && !strings.HasSuffix(name, "_bucket") && !strings.HasSuffix(name, "_sum") &&
			!strings.HasSuffix(name, "_count") && !queried[name] {
			t.Errorf("the dashboard shows nothing of %s", name)
		}
	}
}
