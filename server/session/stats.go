package session

import (
	"slices"
	"sync"
	"time"
)

// handoffStats keeps the latest handoff times (request read to offer
// written, at the broker; legacy kiosks' too) for status and benchmarks.
type handoffStats struct {
	mu   sync.Mutex
	last []time.Duration // ring of the latest handoffs
	next int
	n    int
}

const handoffWindow = 1000

func (h *handoffStats) add(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil {
		h.last = make([]time.Duration, handoffWindow)
	}
	h.last[h.next] = d
	h.next = (h.next + 1) % handoffWindow
	h.n = min(h.n+1, handoffWindow)
}

// handoff records a request read to its offer written.
func (m *Manager) handoff(d time.Duration, legacy bool) {
	m.handoffs.add(d)
	if f := m.cfg.Metrics.Handoff; f != nil {
		f(d, legacy)
	}
}

// QueueLen is how many requests wait for a VM.
func (m *Manager) QueueLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.queue)
}

// Handoffs summarizes the latest handoffs.
type Handoffs struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Handoffs returns the handoff times of the latest (up to 1000) offers.
func (m *Manager) Handoffs() Handoffs {
	h := &m.handoffs
	h.mu.Lock()
	d := slices.Clone(h.last[:h.n])
	h.mu.Unlock()
	if len(d) == 0 {
		return Handoffs{}
	}
	slices.Sort(d)
	return Handoffs{Count: len(d), P50: d[len(d)/2], P99: d[len(d)*99/100], Max: d[len(d)-1]}
}
