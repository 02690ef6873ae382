package session

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
	"path"
	"strings"

	"undervdi/server/config"
)

// Registry is the set of kiosks the broker serves.
type Registry struct {
	exact    map[string]kioskEntry
	patterns []kioskEntry
	legacy   []kioskEntry
}

type kioskEntry struct {
	id     string
	prefix netip.Prefix
	token  string
	max    int    // a group's cap of kiosks connected at once
	hosts  string // the host group it takes VMs from; "": any
}

// NewRegistry builds the registry from the configuration's [[kiosk]] tables.
func NewRegistry(kiosks []config.Kiosk) (*Registry, error) {
	r := &Registry{exact: map[string]kioskEntry{}}
	for _, k := range kiosks {
		p, err := k.Prefix()
		if err != nil {
			return nil, err
		}
		e := kioskEntry{id: k.ID, prefix: p, token: k.Token, hosts: k.HostGroup}
		switch {
		case k.Legacy:
			r.legacy = append(r.legacy, e)
		case k.IsGroup():
			e.max = k.MaxKiosks
			if e.max == 0 {
				e.max = config.DefaultMaxKiosks
			}
			r.patterns = append(r.patterns, e)
		default:
			r.exact[k.ID] = e
		}
	}
	return r, nil
}

// Group is the entry a kiosk was admitted by: a group's pattern and its cap
// of kiosks, or, for a kiosk configured on its own, its id and no cap.
type Group struct {
	ID  string
	Max int // 0: a single kiosk
}

// Authenticate checks a kiosk's id, token and address and returns the
// entry it matches. The error says which of them is wrong, for the audit
// log; the kiosk itself is told only ErrRefusedHello's words.
func (r *Registry) Authenticate(id, token string, addr netip.Addr) (Group, error) {
	e, ok := r.exact[id]
	if !ok {
		for _, p := range r.patterns {
			if m, _ := path.Match(p.id, id); m {
				e, ok = p, true
				break
			}
		}
	}
	switch {
	case !ok:
		return Group{}, fmt.Errorf("kiosk %q is not known to this broker", id)
	case !e.prefix.Contains(addr.Unmap()):
		return Group{}, fmt.Errorf("kiosk %q may not connect from %s (allowed: %s)", id, addr, e.prefix)
	case subtle.ConstantTimeCompare([]byte(e.token), []byte(token)) != 1:
		return Group{}, fmt.Errorf("wrong token for kiosk %q", id)
	}
	return Group{ID: e.id, Max: e.max}, nil
}

// Legacy returns the name under which a legacy kiosk at addr is known.
func (r *Registry) Legacy(addr netip.Addr) (string, bool) {
	for _, e := range r.legacy {
		if e.prefix.Contains(addr.Unmap()) {
			if e.id != "" && e.prefix.IsSingleIP() {
				return e.id, true
			}
			return "legacy-" + addr.Unmap().String(), true
		}
	}
	return "", false
}

// Configured reports whether id is a kiosk configured by its id or one
// its group's pattern admits.
func (r *Registry) Configured(id string) bool {
	if _, ok := r.exact[id]; ok {
		return true
	}
	for _, p := range r.patterns {
		if m, _ := path.Match(p.id, id); m {
			return true
		}
	}
	return false
}

// HostGroup is the host group kiosk id takes its VMs from ([[kiosk]]
// host_group); "": any host. A legacy kiosk is known by the name Legacy gave it.
func (r *Registry) HostGroup(id string) string {
	if e, ok := r.exact[id]; ok {
		return e.hosts
	}
	for _, p := range r.patterns {
		if m, _ := path.Match(p.id, id); m {
			return p.hosts
		}
	}
	addr, _ := netip.ParseAddr(strings.TrimPrefix(id, "legacy-"))
	for _, e := range r.legacy {
		if (e.id != "" && e.id == id) || (addr.IsValid() && e.prefix.Contains(addr)) {
			return e.hosts
		}
	}
	return ""
}

// IDs are the kiosks configured by exact id (not groups, not legacy ones).
func (r *Registry) IDs() []string {
	ids := make([]string, 0, len(r.exact))
	for id := range r.exact {
		ids = append(ids, id)
	}
	return ids
}

// Known reports whether addr is within any kiosk's address range (for the
// ads, which are not secret but not for anyone else either).
func (r *Registry) Known(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, e := range r.exact {
		if e.prefix.Contains(addr) {
			return true
		}
	}
	for _, list := range [][]kioskEntry{r.patterns, r.legacy} {
		for _, e := range list {
			if e.prefix.Contains(addr) {
				return true
			}
		}
	}
	return false
}
