// Package egress is the guest network: what a visitor's VM may reach. The
// clones sit on a libvirt network the broker defines, each behind a libvirt
// network filter (nwfilter) that lets it send to nothing but the broker's
// DNS server and proxies on the network's gateway address, with its own
// MAC and IP address only. The DNS server answers only for the names the
// site allows, and the proxies (transparent HTTP by Host header, HTTPS by
// TLS SNI without decrypting it, and an explicit proxy with CONNECT) pass
// only to allowed hosts. Every refusal is counted against the VM, for its
// session's audit line. docs/network.md says why it is built this way.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// Allowlist is the hosts visitors may reach: names ("example.org"), name
// patterns ("*.example.org": the name and every name under it), and
// addresses or ranges ("203.0.113.7", "203.0.113.0/24").
type Allowlist struct {
	names    map[string]bool
	suffixes map[string]bool // "example.org" for "*.example.org"
	prefixes []netip.Prefix
}

// ParseAllowlist reads a site's entries; every bad entry is reported, each
// named.
func ParseAllowlist(entries []string) (*Allowlist, error) {
	a := &Allowlist{names: map[string]bool{}, suffixes: map[string]bool{}}
	var errs []error
	for _, e := range entries {
		if err := a.add(strings.TrimSpace(e)); err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", e, err))
		}
	}
	return a, errors.Join(errs...)
}

func (a *Allowlist) add(e string) error {
	if p, err := netip.ParsePrefix(e); err == nil {
		if !p.Addr().Is4() {
			return errors.New("only IPv4 ranges: the guest network has no IPv6")
		}
		a.prefixes = append(a.prefixes, p.Masked())
		return nil
	}
	if ip, err := netip.ParseAddr(e); err == nil {
		if !ip.Is4() {
			return errors.New("only IPv4 addresses: the guest network has no IPv6")
		}
		a.prefixes = append(a.prefixes, netip.PrefixFrom(ip, 32))
		return nil
	}
	wild := strings.HasPrefix(e, "*.")
	name, ok := Normalize(strings.TrimPrefix(e, "*."))
	switch {
	case e == "" || e == "*":
		return errors.New("not a host: name the sites visitors may reach (an allowlist that allows everything filters nothing)")
	case !ok:
		return errors.New("not a host name, *.name pattern, IPv4 address or range")
	case strings.Contains(name, "*"):
		return errors.New("a '*' only as the whole first label, as in *.example.org")
	case !strings.Contains(name, ".") && wild:
		return errors.New("*.<top-level domain> would allow a whole top-level domain")
	case wild:
		a.suffixes[name] = true
	default:
		a.names[name] = true
	}
	return nil
}

// Normalize returns the form of a host name the allowlist compares: lower
// case, no trailing dot, international names in their ASCII (punycode) form.
// ok is false for what is not a host name.
func Normalize(name string) (string, bool) {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return "", false
	}
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return "", false
	}
	return ascii, true
}

// AllowsName reports whether a host name may be reached.
func (a *Allowlist) AllowsName(name string) bool {
	n, ok := Normalize(name)
	if !ok {
		return false
	}
	if a.names[n] || a.suffixes[n] {
		return true
	}
	for i := strings.IndexByte(n, '.'); i >= 0; i = strings.IndexByte(n, '.') {
		n = n[i+1:]
		if a.suffixes[n] {
			return true
		}
	}
	return false
}

// AllowsAddr reports whether an address is in one of the allowed ranges.
func (a *Allowlist) AllowsAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Allows reports whether a host, as a visitor's request names it (a name
// or an address literal), may be reached.
func (a *Allowlist) Allows(host string) bool {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return a.AllowsAddr(ip)
	}
	return a.AllowsName(host)
}

// Len is the number of entries.
func (a *Allowlist) Len() int { return len(a.names) + len(a.suffixes) + len(a.prefixes) }
