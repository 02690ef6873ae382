// Package virt is the broker's connection to one libvirt host. It keeps the
// connection alive (reconnecting with backoff after a loss), turns libvirt's
// domain events into a stream of Events, and offers the few typed operations
// the pool needs: golden checks, overlays through the storage API, clone
// domains, metadata and guest agent pings. Nothing here shells out.
package virt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// ErrDisconnected is returned while the host is not connected.
var ErrDisconnected = errors.New("not connected to libvirt")

// EventKind says what happened.
type EventKind int

// Kinds of events.
const (
	// Connected: the connection is (re)established and events are
	// subscribed. Whatever happened before is only known by reconciling.
	Connected EventKind = iota
	Disconnected
	Started
	Stopped // Detail says why: shutdown, destroyed, crashed, failed, ...
	Undefined
	AgentConnected
	AgentDisconnected
)

var kindNames = [...]string{"connected", "disconnected", "started", "stopped", "undefined", "agent-connected", "agent-disconnected"}

func (k EventKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is something that happened on the host.
type Event struct {
	Kind   EventKind
	Domain string // empty for Connected and Disconnected
	Detail string
}

// Host is one libvirt host, over a connection kept alive in the background.
type Host struct {
	uri    *url.URL
	log    *slog.Logger
	events chan Event

	mu          sync.RWMutex
	l           *libvirt.Libvirt // nil while disconnected
	overlayPool string           // storage pool holding the overlays
	versionPool string           // storage pool holding the published versions
	overlayDir  string           // the overlay pool's directory
}

// Open starts connecting to uri and keeps the connection up until ctx ends.
// It returns at once; Events reports Connected when the host is usable.
func Open(ctx context.Context, uri string, log *slog.Logger) (*Host, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	h := &Host{uri: u, log: log.With("libvirt", uri), events: make(chan Event, 1024)}
	go h.maintain(ctx)
	return h, nil
}

// Events delivers the host's events, in order. It is never closed.
func (h *Host) Events() <-chan Event { return h.events }

// URI is the libvirt URI of the host.
func (h *Host) URI() string { return h.uri.String() }

// maintain connects, reports, waits for a loss, and starts over.
func (h *Host) maintain(ctx context.Context) {
	const minBackoff, maxBackoff = 250 * time.Millisecond, 10 * time.Second
	backoff := minBackoff
	var failingSince time.Time
	var lastLog time.Time
	for ctx.Err() == nil {
		l, err := h.connect(ctx)
		if err != nil {
			now := time.Now()
			if failingSince.IsZero() {
				failingSince = now
			}
			// Say it once, then once a minute: a down libvirtd is one problem.
			if now.Sub(lastLog) > time.Minute {
				h.log.Warn("cannot connect to libvirt; retrying (is libvirtd running?)", "err", err, "failing_for", now.Sub(failingSince).Round(time.Second))
				lastLog = now
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		if !failingSince.IsZero() {
			h.log.Info("connected to libvirt", "after", time.Since(failingSince).Round(time.Millisecond))
		}
		failingSince, lastLog, backoff = time.Time{}, time.Time{}, minBackoff
		h.mu.Lock()
		h.l = l
		h.mu.Unlock()
		h.emit(Event{Kind: Connected})
		gone := l.Disconnect
		select {
		case <-l.Disconnected():
			h.log.Warn("lost the connection to libvirt; reconnecting")
		case err := <-h.probe(ctx, l):
			h.log.Warn("libvirt stopped answering; reconnecting (host down, or its network cut?)", "err", err)
			gone = l.Abort // telling it would wait for an answer that never comes
		case <-ctx.Done():
		}
		h.mu.Lock()
		h.l = nil
		h.mu.Unlock()
		gone()
		h.emit(Event{Kind: Disconnected})
	}
}

// Probing: a host powered off or cut off sends no reset, and TCP alone
// would take minutes to give up; a call every probeEvery that takes longer
// than probeTimeout is the connection lost. Variables for tests.
var probeEvery, probeTimeout = 5 * time.Second, 10 * time.Second

// probe asks libvirt something cheap every probeEvery until it fails or does
// not answer within probeTimeout, and says why on the channel it returns.
func (h *Host) probe(ctx context.Context, l *libvirt.Libvirt) <-chan error {
	out := make(chan error, 1)
	go func() {
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.Disconnected():
				return
			case <-tick.C:
			}
			answer := make(chan error, 1)
			go func() { _, err := l.ConnectGetLibVersion(); answer <- err }()
			select {
			case err := <-answer:
				if err == nil {
					continue
				}
				out <- err
			case <-time.After(probeTimeout):
				out <- fmt.Errorf("no answer in %v", probeTimeout)
			case <-ctx.Done():
			case <-l.Disconnected():
			}
			return
		}
	}()
	return out
}

// connect dials, then subscribes to the events the broker acts on before
// anyone is told the connection is up, so no event falls between a
// reconcile and the subscription.
func (h *Host) connect(ctx context.Context) (*libvirt.Libvirt, error) {
	l, err := libvirt.ConnectToURI(h.uri)
	if err != nil {
		return nil, err
	}
	lifecycle, err := l.SubscribeEvents(ctx, libvirt.DomainEventIDLifecycle, libvirt.OptDomain{})
	if err != nil {
		l.Disconnect()
		return nil, fmt.Errorf("subscribing to lifecycle events: %w", err)
	}
	agent, err := l.SubscribeEvents(ctx, libvirt.DomainEventIDAgentLifecycle, libvirt.OptDomain{})
	if err != nil {
		l.Disconnect()
		return nil, fmt.Errorf("subscribing to guest agent events: %w", err)
	}
	go h.forward(lifecycle)
	go h.forward(agent)
	return l, nil
}

func (h *Host) forward(in <-chan any) {
	for raw := range in {
		switch ev := raw.(type) {
		case *libvirt.DomainEventCallbackLifecycleMsg:
			if e, ok := lifecycleEvent(ev.Msg); ok {
				h.emit(e)
			}
		case *libvirt.DomainEventCallbackAgentLifecycleMsg:
			kind := AgentDisconnected
			if ev.State == int32(libvirt.ConnectDomainEventAgentLifecycleStateConnected) {
				kind = AgentConnected
			}
			h.emit(Event{Kind: kind, Domain: ev.Dom.Name})
		}
	}
}

func lifecycleEvent(m libvirt.DomainEventLifecycleMsg) (Event, bool) {
	e := Event{Domain: m.Dom.Name}
	switch libvirt.DomainEventType(m.Event) {
	case libvirt.DomainEventStarted:
		e.Kind = Started
	case libvirt.DomainEventUndefined:
		e.Kind = Undefined
	case libvirt.DomainEventStopped:
		e.Kind = Stopped
		e.Detail = map[libvirt.DomainEventStoppedDetailType]string{
			libvirt.DomainEventStoppedShutdown:  "shutdown",
			libvirt.DomainEventStoppedDestroyed: "destroyed",
			libvirt.DomainEventStoppedCrashed:   "crashed",
			libvirt.DomainEventStoppedMigrated:  "migrated",
			libvirt.DomainEventStoppedSaved:     "saved",
			libvirt.DomainEventStoppedFailed:    "failed",
		}[libvirt.DomainEventStoppedDetailType(m.Detail)]
		if e.Detail == "" {
			e.Detail = fmt.Sprintf("detail %d", m.Detail)
		}
	case libvirt.DomainEventCrashed:
		e.Kind, e.Detail = Stopped, "crashed"
	default:
		return e, false
	}
	return e, true
}

func (h *Host) emit(e Event) { h.events <- e }

// conn returns the live connection or ErrDisconnected.
func (h *Host) conn(ctx context.Context) (*libvirt.Libvirt, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.RLock()
	l := h.l
	h.mu.RUnlock()
	if l == nil || !l.IsConnected() {
		return nil, ErrDisconnected
	}
	return l, nil
}

// wrap marks errors caused by a lost connection, so callers do not count
// them against a VM.
func wrap(l *libvirt.Libvirt, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	if !l.IsConnected() {
		err = fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// IsDisconnected reports whether err came from a lost connection.
func IsDisconnected(err error) bool { return errors.Is(err, ErrDisconnected) }

func hasCode(err error, code libvirt.ErrorNumber) bool {
	var e libvirt.Error
	return errors.As(err, &e) && e.Code == uint32(code)
}
