package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"undervdi/server/pool"
	"undervdi/server/spice"
)

// vmCaps are a VM's channel capabilities per channel type; a type missing
// from the map is a channel the VM does not have.
type vmCaps map[spice.ChannelType][]uint32

// probed are the channel types a kiosk's viewer may open.
var probed = []spice.ChannelType{
	spice.ChannelMain, spice.ChannelDisplay, spice.ChannelInputs, spice.ChannelCursor,
	spice.ChannelPlayback, spice.ChannelRecord, spice.ChannelSmartcard, spice.ChannelUSBRedir,
	spice.ChannelPort, spice.ChannelWebDAV,
}

// Displays knows the SPICE capabilities of the pool's VMs, learned before
// each VM is clean (Prepare is the pool's last readiness check) and dropped
// when it is gone (Forget).
type Displays struct {
	dial Dialer

	mu   sync.Mutex
	caps map[string]vmCaps // by VM name
}

// NewDisplays returns an empty Displays that reaches VMs through dial.
func NewDisplays(dial Dialer) *Displays {
	return &Displays{dial: dial, caps: map[string]vmCaps{}}
}

// Prepare learns a VM's SPICE capabilities, once: the gateway must answer a
// client's link before it may contact the VM (only a client with the right
// ticket ever does), and the answer has to carry the VM's caps. The probe
// sends each channel type's link message and reads the reply, then hangs up
// before authenticating, so no channel is ever created in the VM. It is also
// a readiness check: a VM whose SPICE server does not answer is not clean.
func (g *Displays) Prepare(ctx context.Context, vm pool.VM) error {
	if _, ok := g.capsOf(vm.Name); ok {
		return nil
	}
	caps := vmCaps{}
	for _, t := range probed {
		c, ok, err := g.probe(ctx, vm.Spice, t)
		if err != nil {
			return fmt.Errorf("probing %v channel of %s: %w", t, vm.Name, err)
		}
		if ok {
			caps[t] = c
		}
	}
	if _, ok := caps[spice.ChannelMain]; !ok {
		return fmt.Errorf("%s has no SPICE main channel", vm.Name)
	}
	g.mu.Lock()
	g.caps[vm.Name] = caps
	g.mu.Unlock()
	return nil
}

// probe returns the caps the VM replies for channel type t, or ok=false if
// the VM has no such channel (spice-server then hangs up without a reply).
func (g *Displays) probe(ctx context.Context, target pool.SpiceTarget, t spice.ChannelType) (caps []uint32, ok bool, err error) {
	c, err := g.dial.DialSpice(ctx, target)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	m := &spice.LinkMess{ChannelType: t,
		CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSpice, spice.CapMiniHeader)}
	if _, err := m.WriteTo(c); err != nil {
		return nil, false, err
	}
	r, err := spice.ReadLinkReply(c)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return nil, false, nil
	case err != nil:
		return nil, false, err
	case r.Error == spice.LinkErrChannelNotAvailable:
		return nil, false, nil
	case r.Error != spice.LinkErrOK:
		return nil, false, r.Error
	}
	return r.ChannelCaps, true, nil
}

// Forget drops what the gateway knows of a VM that is gone.
func (g *Displays) Forget(vm string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.caps, vm)
}

func (g *Displays) capsOf(vm string) (vmCaps, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.caps[vm]
	return c, ok
}

func capsEqual(a, b []uint32) bool {
	trim := func(c []uint32) []uint32 {
		for len(c) > 0 && c[len(c)-1] == 0 {
			c = c[:len(c)-1]
		}
		return c
	}
	return slices.Equal(trim(a), trim(b))
}
