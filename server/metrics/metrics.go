// Package metrics is the broker's Prometheus metrics: what an operator's
// Prometheus and Grafana watch. Figures the broker already keeps (the
// pool's VMs by state, versions, kiosks, sessions) are read at each scrape
// from the same snapshots `vdi-broker status` shows, so the two never
// disagree; what happens between scrapes (handoffs, ended sessions) is
// counted as it happens.
//
// The names follow Prometheus' conventions: undervdi_ prefix, base units
// (seconds), _total for counters.
package metrics

import (
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"undervdi/server/pool"
	"undervdi/server/session"
)

// Source is where a scrape reads the broker's state.
type Source struct {
	Pool   func() pool.Status
	Kiosks func() []session.KioskStatus // the fleet: online or not
	Leases func() []session.LeaseStatus
	Queue  func() int // requests waiting for a VM
}

// Metrics is the broker's registry.
type Metrics struct {
	reg         *prometheus.Registry
	handoff     *prometheus.HistogramVec
	touch       *prometheus.HistogramVec
	ended       *prometheus.CounterVec
	clone       prometheus.Histogram
	cloneFailed prometheus.Counter
	wipe        prometheus.Histogram
	refused     *prometheus.CounterVec
	guest       *prometheus.CounterVec
}

// New registers the broker's counters, and Go's and the process's; Watch
// adds the broker's state once its parts exist.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		handoff: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "undervdi_handoff_seconds",
			Help: "Time from a kiosk's request read to its offer written, at the broker (kiosk: the kiosk protocol; legacy: the signal port).",
			// From a pool VM ready at once (well under a millisecond) to
			// a visitor who waited for a clone to boot.
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1, 5, 15, 30, 60, 120},
		}, []string{"protocol"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "undervdi_sessions_ended_total",
			Help: "Sessions ended; used: the VM was linked (and is destroyed), or not (offered and never used); cause: why (visitor, idle, max-session, admin, guest, not-linked, disconnected, kiosk, broker, other).",
		}, []string{"used", "cause"}),
	}
	m.touch = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "undervdi_touch_to_link_seconds",
		Help: "Time from a visitor's touch, as the kiosk reports it (a legacy kiosk: its connection to the signal port), to the session's first SPICE link.",
		// The viewer starts and links in a second or two; waiting for a clone to boot takes longer.
		Buckets: []float64{.25, .5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300},
	}, []string{"protocol"})
	m.clone = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "undervdi_clone_seconds",
		Help: "Time from a clone's creation to clean (booted, its guest agent and display checked): how fast the pool refills.",
		// A tiny test VM under emulation takes seconds; a Windows guest a minute or more.
		Buckets: []float64{1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300},
	})
	m.cloneFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "undervdi_clone_failures_total",
		Help: "Clones that did not become clean (the log and status say why).",
	})
	m.wipe = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "undervdi_wipe_seconds",
		Help:    "Time from a VM's end to its domain destroyed and its disks deleted; the count is the VMs wiped.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 300},
	})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "undervdi_refused_total",
		Help: "Connections and requests refused, by port: kiosk, legacy, spice-link, ads, login (the API's; the audit log says who and why).",
	}, []string{"what"})
	m.guest = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "undervdi_guest_requests_total",
		Help: "Visitors' VMs' requests at the guest network's gateway, by kind (dns, http, tls, connect) and result (allowed, refused: not in network.allow, or a port or address visitors may not reach).",
	}, []string{"kind", "result"})
	for _, k := range []string{"dns", "http", "tls", "connect"} {
		m.guest.WithLabelValues(k, "allowed")
		m.guest.WithLabelValues(k, "refused")
	}
	for _, w := range []string{"kiosk", "legacy", "spice-link", "ads", "login"} {
		m.refused.WithLabelValues(w)
	}
	for _, p := range []string{"kiosk", "legacy"} {
		m.handoff.WithLabelValues(p) // present from the start, at zero
		m.touch.WithLabelValues(p)
	}
	for _, u := range []string{"true", "false"} {
		for _, c := range session.Causes {
			m.ended.WithLabelValues(u, c)
		}
	}
	m.reg.MustRegister(m.handoff, m.touch, m.ended, m.clone, m.cloneFailed, m.wipe, m.refused, m.guest,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch makes every scrape read the broker's state from src.
func (m *Metrics) Watch(src Source) { m.reg.MustRegister(snapshot{src}) }

// Hooks are the session manager's measurements, fed to m.
func (m *Metrics) Hooks() session.Metrics {
	return session.Metrics{
		Handoff:     func(d time.Duration, legacy bool) { m.handoff.WithLabelValues(protocol(legacy)).Observe(d.Seconds()) },
		TouchToLink: func(d time.Duration, legacy bool) { m.touch.WithLabelValues(protocol(legacy)).Observe(d.Seconds()) },
		Ended: func(used bool, cause string) {
			u := "false"
			if used {
				u = "true"
			}
			m.ended.WithLabelValues(u, cause).Inc()
		},
	}
}

// PoolHooks are the pool's measurements, fed to m.
func (m *Metrics) PoolHooks() pool.Metrics {
	return pool.Metrics{
		Cloned:      func(d time.Duration) { m.clone.Observe(d.Seconds()) },
		CloneFailed: m.cloneFailed.Inc,
		Wiped:       func(d time.Duration) { m.wipe.Observe(d.Seconds()) },
	}
}

// Refused counts a refusal on port what (the audit's OnRefused).
func (m *Metrics) Refused(what string) { m.refused.WithLabelValues(what).Inc() }

// GuestRequest counts a request at the guest network's gateway.
func (m *Metrics) GuestRequest(kind string, allowed bool) {
	result := "refused"
	if allowed {
		result = "allowed"
	}
	m.guest.WithLabelValues(kind, result).Inc()
}

// Handler serves the metrics in Prometheus' formats.
func (m *Metrics) Handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn), ErrorHandling: promhttp.ContinueOnError,
		Registry: m.reg, // promhttp_metric_handler_errors_total
	})
}

// snapshot reads the broker's state at each scrape.
type snapshot struct{ src Source }

var (
	descVMs = prometheus.NewDesc("undervdi_pool_vms",
		"Pool VMs by state (booting, clean, offered, in-use, destroying, ...).", []string{"state"}, nil)
	descSize = prometheus.NewDesc("undervdi_pool_size",
		"The clean VMs the pool keeps ready.", nil, nil)
	descMax = prometheus.NewDesc("undervdi_pool_max_vms",
		"The most VMs the pool runs at once.", nil, nil)
	descDegraded = prometheus.NewDesc("undervdi_pool_degraded",
		"1 while the pool cannot make clones (consecutive failures); the status says why.", nil, nil)
	descPaused = prometheus.NewDesc("undervdi_pool_paused",
		"1 while the pool makes no clones (no published version, libvirt down, ...).", nil, nil)
	descFailures = prometheus.NewDesc("undervdi_pool_consecutive_failures",
		"Clone failures in a row.", nil, nil)
	descLibvirt = prometheus.NewDesc("undervdi_libvirt_up",
		"1 while the broker is connected to libvirt.", nil, nil)
	descVersion = prometheus.NewDesc("undervdi_golden_version",
		"The published version of the golden VM new clones come from.", nil, nil)
	descClones = prometheus.NewDesc("undervdi_pool_vms_by_version",
		"Pool VMs by the golden version they are clones of (a roll in progress has two).", []string{"version"}, nil)
	descPublish = prometheus.NewDesc("undervdi_publish_progress_ratio",
		"While a version is being published: the share of its disks copied so far.", nil, nil)
	descHostUp = prometheus.NewDesc("undervdi_host_up",
		"With several hosts: 1 while the broker is connected to the host's libvirt and its pool is reconciled.", []string{"host"}, nil)
	descHostVMs = prometheus.NewDesc("undervdi_host_vms",
		"With several hosts: each host's VMs by state.", []string{"host", "state"}, nil)
	descHostSize = prometheus.NewDesc("undervdi_host_pool_size",
		"With several hosts: the host's share of the clean VMs the site keeps ready.", []string{"host"}, nil)
	descHostVersion = prometheus.NewDesc("undervdi_host_version",
		"With several hosts: the version the host's new clones come from.", []string{"host"}, nil)
	descHostCopy = prometheus.NewDesc("undervdi_host_copy_progress_ratio",
		"With several hosts: while the current version is copied to a host, the share copied so far.", []string{"host"}, nil)
	descKiosks = prometheus.NewDesc("undervdi_kiosks_connected",
		"Kiosks connected on the kiosk protocol.", nil, nil)
	descOffline = prometheus.NewDesc("undervdi_kiosks_offline",
		"Kiosks the broker knows (configured by id, or seen since it started) that are not connected.", nil, nil)
	descOutOfOrder = prometheus.NewDesc("undervdi_kiosks_out_of_order",
		"Connected kiosks that say they are out of order (a logout they could not complete).", nil, nil)
	descDisabled = prometheus.NewDesc("undervdi_kiosks_disabled",
		"Kiosks an operator put out of order.", nil, nil)
	descOldImage = prometheus.NewDesc("undervdi_kiosks_old_image",
		"Connected kiosks running a kiosk image the site no longer serves (images.manifests).", nil, nil)
	descSessions = prometheus.NewDesc("undervdi_sessions",
		"Open sessions by whether their VM is linked yet.", []string{"linked"}, nil)
	descQueue = prometheus.NewDesc("undervdi_queue_length",
		"Kiosk requests waiting for a VM.", nil, nil)
)

func (snapshot) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descSize, descMax, descDegraded, descPaused, descFailures, descLibvirt,
		descVersion, descClones, descPublish, descHostUp, descHostVMs, descHostSize, descHostVersion, descHostCopy, descKiosks, descOffline, descOutOfOrder, descDisabled, descOldImage, descSessions, descQueue} {
		ch <- d
	}
}

func (s snapshot) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	p := s.src.Pool()
	for _, st := range pool.States {
		if st != pool.Gone { // off the table by definition
			gauge(descVMs, float64(p.Counts[st]), string(st))
		}
	}
	gauge(descSize, float64(p.Size))
	gauge(descMax, float64(p.MaxVMs))
	gauge(descDegraded, bit(p.Degraded != ""))
	gauge(descPaused, bit(p.Paused != ""))
	gauge(descFailures, float64(p.Failures))
	gauge(descLibvirt, bit(p.Connected))
	gauge(descVersion, float64(p.Current))
	for v, n := range p.Clones {
		gauge(descClones, float64(n), strconv.Itoa(v))
	}
	if j := p.Publish; j != nil && j.Finished == nil && j.Total > 0 {
		gauge(descPublish, float64(j.Written)/float64(j.Total))
	}
	for _, h := range p.Hosts {
		gauge(descHostUp, bit(h.Connected && !h.Reconciling), h.Name)
		gauge(descHostSize, float64(h.Size), h.Name)
		gauge(descHostVersion, float64(h.Current), h.Name)
		for _, st := range pool.States {
			if st != pool.Gone {
				gauge(descHostVMs, float64(h.Counts[st]), h.Name, string(st))
			}
		}
		if j := h.Publish; j != nil && j.Finished == nil && j.Total > 0 {
			gauge(descHostCopy, float64(j.Written)/float64(j.Total), h.Name)
		}
	}
	kiosks, offline, out, disabled, old := 0, 0, 0, 0, 0
	for _, k := range s.src.Kiosks() {
		if k.Disabled != "" {
			disabled++
		}
		if k.Online && k.OldImage {
			old++
		}
		switch {
		case !k.Online:
			offline++
		case k.Fault != "":
			kiosks++
			out++
		default:
			kiosks++
		}
	}
	gauge(descKiosks, float64(kiosks))
	gauge(descOffline, float64(offline))
	gauge(descOutOfOrder, float64(out))
	gauge(descDisabled, float64(disabled))
	gauge(descOldImage, float64(old))
	linked, waiting := 0, 0
	for _, l := range s.src.Leases() {
		if l.Linked != nil {
			linked++
		} else {
			waiting++
		}
	}
	gauge(descSessions, float64(linked), "true")
	gauge(descSessions, float64(waiting), "false")
	gauge(descQueue, float64(s.src.Queue()))
}

// protocol is the label of a kiosk's protocol.
func protocol(legacy bool) string {
	if legacy {
		return "legacy"
	}
	return "kiosk"
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
