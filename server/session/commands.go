package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/jpeg"
	"maps"
	"os"
	"path/filepath"

	"undervdi/kioskproto"
)

// Errors of operators' commands to kiosks.
var (
	ErrKioskOffline = errors.New("the kiosk is not connected")
	ErrNoCommands   = errors.New("the kiosk's software takes no commands (an older image, or a legacy kiosk): update it")
	ErrInSession    = errors.New("the kiosk is in a visitor's session: no screenshot")
	ErrUnknownKiosk = errors.New("no such kiosk")
)

// maxScreenshot bounds a kiosk's screenshot at the broker.
const maxScreenshot = 2 << 20

// shot is a screenshot asked of a kiosk, arriving in parts.
type shot struct {
	data []byte
	next int
	done chan shotResult
}

type shotResult struct {
	jpeg []byte
	err  error
}

// Command sends an operator's command to a connected kiosk.
func (m *Manager) Command(id string, c kioskproto.Command) error {
	k, err := m.commandable(id)
	if err != nil {
		return err
	}
	msg := kioskproto.NewCommand(c)
	if err := msg.Validate(); err != nil {
		return err
	}
	k.send(msg)
	return nil
}

// Broadcast sends a command to every connected kiosk that takes commands,
// and says how many got it.
func (m *Manager) Broadcast(c kioskproto.Command) int {
	m.mu.Lock()
	conns := make([]*kioskConn, 0, len(m.conns))
	for _, k := range m.conns {
		if k.commands {
			conns = append(conns, k)
		}
	}
	m.mu.Unlock()
	for _, k := range conns {
		k.send(kioskproto.NewCommand(c))
	}
	return len(conns)
}

// BroadcastSessions sends a command to every connected kiosk that takes
// commands and has a session open (the closing time's warning), and says
// how many got it.
func (m *Manager) BroadcastSessions(c kioskproto.Command) int {
	m.mu.Lock()
	var conns []*kioskConn
	for _, k := range m.conns {
		if k.commands {
			conns = append(conns, k)
		}
	}
	m.mu.Unlock()
	n := 0
	for _, k := range conns {
		k.mu.Lock()
		r := k.req
		k.mu.Unlock()
		if r != nil && m.leaseOf(r) != nil {
			k.send(kioskproto.NewCommand(c))
			n++
		}
	}
	return n
}

func (m *Manager) commandable(id string) (*kioskConn, error) {
	m.mu.Lock()
	k := m.conns[id]
	m.mu.Unlock()
	switch {
	case k == nil:
		return nil, fmt.Errorf("%w: %s", ErrKioskOffline, id)
	case !k.commands:
		return nil, fmt.Errorf("%w (kiosk %s, %s)", ErrNoCommands, id, k.software)
	}
	return k, nil
}

// Screenshot asks a kiosk for a picture of its screen, which it sends only
// while it shows the slideshow. The broker refuses at once if the kiosk has
// a session or a request open; the kiosk refuses too if a visitor is at it.
func (m *Manager) Screenshot(ctx context.Context, id string) ([]byte, error) {
	k, err := m.commandable(id)
	if err != nil {
		return nil, err
	}
	s := &shot{done: make(chan shotResult, 1)}
	shotID := "s-" + randomHex(8)
	k.mu.Lock()
	if k.req != nil {
		k.mu.Unlock()
		return nil, fmt.Errorf("%w (kiosk %s)", ErrInSession, id)
	}
	if k.shots == nil {
		k.shots = map[string]*shot{}
	}
	k.shots[shotID] = s
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		delete(k.shots, shotID)
		k.mu.Unlock()
	}()
	k.send(kioskproto.NewCommand(kioskproto.Command{Action: kioskproto.CmdScreenshot, ID: shotID}))
	select {
	case r := <-s.done:
		return r.jpeg, r.err
	case <-k.closed:
		return nil, fmt.Errorf("%w: %s left while sending its screenshot", ErrKioskOffline, id)
	case <-ctx.Done():
		return nil, fmt.Errorf("kiosk %s sent no screenshot: %w", id, ctx.Err())
	}
}

// gotShot takes a part of a screenshot. A part for no screenshot asked, out
// of order, too large in all, or arriving once a session is open is
// dropped, and the screenshot fails.
func (k *kioskConn) gotShot(p *kioskproto.Screenshot) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.shots[p.ID]
	if s == nil {
		return
	}
	fail := func(err error) {
		delete(k.shots, p.ID)
		s.done <- shotResult{err: err}
	}
	switch {
	case p.Refused != "":
		fail(fmt.Errorf("%w: the kiosk says: %s", ErrInSession, p.Refused))
		return
	case k.req != nil:
		fail(fmt.Errorf("%w (kiosk %s)", ErrInSession, k.id))
		return
	case p.Part != s.next || len(s.data)+len(p.Data) > maxScreenshot:
		fail(fmt.Errorf("kiosk %s sent a bad screenshot (part %d, %d bytes so far)", k.id, p.Part, len(s.data)))
		return
	}
	s.data = append(s.data, p.Data...)
	s.next++
	if !p.Last {
		return
	}
	if _, err := jpeg.DecodeConfig(bytes.NewReader(s.data)); err != nil {
		fail(fmt.Errorf("kiosk %s sent a screenshot that is no JPEG: %v", k.id, err))
		return
	}
	delete(k.shots, p.ID)
	s.done <- shotResult{jpeg: s.data}
}

// SetOutOfOrder puts a kiosk out of order for an operator (reason says
// why, for the operators), or back in order (""). It serves nobody until
// then: the kiosk says so on its slideshow, and the broker refuses its
// requests, across its reconnects and the broker's restarts. A session
// running on it goes on.
func (m *Manager) SetOutOfOrder(id, reason string) error {
	m.saveMu.Lock() // one change at a time, written in the order made
	defer m.saveMu.Unlock()
	m.mu.Lock()
	_, known := m.conns[id]
	_, seen := m.offline[id]
	if !known && !seen && !m.registry.Configured(id) {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownKiosk, id)
	}
	if reason == "" {
		delete(m.disabled, id)
	} else {
		m.disabled[id] = reason
	}
	m.regateLocked()
	disabled := maps.Clone(m.disabled)
	k := m.conns[id]
	m.mu.Unlock()
	if err := m.saveDisabled(disabled); err != nil {
		return err
	}
	if k != nil && k.commands {
		k.send(outOfOrderCommand(reason))
	}
	return nil
}

func outOfOrderCommand(reason string) *kioskproto.Message {
	if reason == "" {
		return kioskproto.NewCommand(kioskproto.Command{Action: kioskproto.CmdInOrder})
	}
	return kioskproto.NewCommand(kioskproto.Command{Action: kioskproto.CmdOutOfOrder, Text: kioskproto.Clip(reason)})
}

// disabledFile is what the out-of-order file holds: kiosk id to reason.
type disabledFile struct {
	OutOfOrder map[string]string `json:"out_of_order"`
}

// loadDisabled reads the kiosks operators put out of order.
func loadDisabled(path string) (map[string]string, error) {
	out := map[string]string{}
	if path == "" {
		return out, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	var f disabledFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.OutOfOrder != nil {
		out = f.OutOfOrder
	}
	return out, nil
}

func (m *Manager) saveDisabled(d map[string]string) error {
	path := m.cfg.OutOfOrderFile
	if path == "" {
		return nil
	}
	b, _ := json.MarshalIndent(disabledFile{OutOfOrder: d}, "", "  ")
	tmp := path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// greet tells a kiosk that just said hello what operators set for it: out
// of order, or the site closed.
func (m *Manager) greet(k *kioskConn) {
	if !k.commands {
		return
	}
	m.mu.Lock()
	reason, closed := m.disabled[k.id], m.notice
	m.mu.Unlock()
	if reason != "" {
		k.send(outOfOrderCommand(reason))
	}
	if closed != "" {
		k.send(kioskproto.NewCommand(kioskproto.Command{Action: kioskproto.CmdClosed, Text: closed}))
	}
}
