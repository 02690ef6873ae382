package config

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Host is one KVM host of the site: a [[hosts]] entry (docs/hosts.md). A
// file without [[hosts]] has one host, the one libvirt_uri names, with
// max_vms and memory_reserve as its capacity.
type Host struct {
	// Name is how status, logs and the console call the host.
	Name string `toml:"name"`
	// URI is libvirt's: qemu:///system on the broker's own machine,
	// qemu+tls://host/system (libvirt's x509 certificates) or
	// qemu+ssh://user@host/system for another.
	URI string `toml:"uri"`
	// MaxVMs and MemoryReserve are its capacity; 0 takes the top-level
	// max_vms and memory_reserve.
	MaxVMs        int      `toml:"max_vms"`
	MemoryReserve ByteSize `toml:"memory_reserve"`
	// Units, if set, is the host's size in the site's units (a VM costs
	// vm_units): it holds at most units / vm_units VMs.
	Units int `toml:"units"`
	// Weight biases placement "spread": a host of weight 2 gets twice the
	// clean VMs of one of weight 1, capacity allowing. 0 is 1.
	Weight int `toml:"weight"`
	// Group, if set, is the host group a kiosk may be pinned to
	// ([[kiosk]] host_group): a branch's kiosks to the branch's server.
	Group string `toml:"group"`
	// SpiceAddress is the host's address on the backend network, where its
	// clones' SPICE listens (TLS only) for the broker's gateway. Required
	// for a host other than the broker's machine.
	SpiceAddress string `toml:"spice_address"`
	// GuestSubnet is the range its clones get on the isolated guest
	// network, for a host other than the broker's machine (network.subnet
	// is this machine's): its libvirt network routes it, without NAT, and
	// the broker's machine routes it back through SpiceAddress.
	GuestSubnet string `toml:"guest_subnet,omitempty"`
	// OverlayDir and VersionDir are the host's own directories for its
	// clones' overlays and its copies of the versions; "" takes the
	// top-level overlay_dir and versions_dir.
	OverlayDir string `toml:"overlay_dir,omitempty"`
	VersionDir string `toml:"versions_dir,omitempty"`
}

// Remote reports whether the host is another machine than the broker's:
// its URI names a host.
func (h Host) Remote() bool {
	u, err := url.Parse(h.URI)
	return err == nil && u.Host != "" && !strings.HasSuffix(u.Scheme, "+unix")
}

// Capacity is how many VMs the host may hold: max_vms, and no more than
// its units pay for.
func (h Host) Capacity(vmUnits int) int {
	if h.Units > 0 && vmUnits > 0 {
		return min(h.MaxVMs, h.Units/vmUnits)
	}
	return h.MaxVMs
}

// SiteHosts returns the site's hosts: [[hosts]] (their directories
// defaulting to the top-level ones), or the one host the top-level keys
// describe.
func (c *Config) SiteHosts() []Host {
	if len(c.Hosts) > 0 {
		out := slices.Clone(c.Hosts)
		for i := range out {
			out[i].OverlayDir = cmp.Or(out[i].OverlayDir, c.OverlayDir)
			out[i].VersionDir = cmp.Or(out[i].VersionDir, c.VersionDir)
		}
		return out
	}
	return []Host{{Name: "local", URI: c.LibvirtURI, MaxVMs: c.MaxVMs, MemoryReserve: c.MemoryReserve, Weight: 1,
		OverlayDir: c.OverlayDir, VersionDir: c.VersionDir}}
}

// Capacity is the site's: what its hosts may hold together.
func (c *Config) Capacity() int {
	n := 0
	for _, h := range c.SiteHosts() {
		n += h.Capacity(c.VMUnits)
	}
	return n
}

// hostDefaults fills in what a [[hosts]] entry leaves to the top level.
func (c *Config) hostDefaults() {
	for i := range c.Hosts {
		h := &c.Hosts[i]
		if h.MaxVMs == 0 {
			h.MaxVMs = c.MaxVMs
		}
		if h.MemoryReserve == 0 {
			h.MemoryReserve = c.MemoryReserve
		}
		if h.Weight == 0 {
			h.Weight = 1
		}

		if h.Name == "" && len(c.Hosts) == 1 {
			h.Name = "local"
			if u, err := url.Parse(h.URI); err == nil && u.Hostname() != "" {
				h.Name = u.Hostname()
			}
		}
	}
}

var (
	hostNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)
	hostGroupRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
)

// validateHosts checks [[hosts]], placement, vm_units, the kiosks' host
// groups and the gateway's hosts CA.
func (c *Config) validateHosts(bad func(key, format string, args ...any)) {
	switch c.Placement {
	case "spread", "pack":
	default:
		bad("placement", "%q: spread (the hosts share the clean VMs) or pack (fill one host before the next)", c.Placement)
	}
	if c.VMUnits < 0 {
		bad("vm_units", "%d: must be 0 (no units) or more", c.VMUnits)
	}
	if len(c.Hosts) == 0 && c.SiteHosts()[0].Remote() {
		bad("libvirt_uri", "%q is another machine: list it in [[hosts]] with its spice_address (its VMs' SPICE is TLS on its backend network), and gateway.hosts_ca", c.LibvirtURI)
	}
	names, uris, groups := map[string]bool{}, map[string]bool{}, map[string]bool{}
	remote := false
	for i, h := range c.Hosts {
		key := fmt.Sprintf("hosts[%d]", i)
		if h.Name != "" {
			key = fmt.Sprintf("hosts %q", h.Name)
		}
		switch {
		case h.Name == "":
			bad(key+".name", "required when there are several hosts")
		case !hostNameRE.MatchString(h.Name):
			bad(key+".name", "%q: lowercase letters, digits, dots and dashes, at most 63", h.Name)
		case names[h.Name]:
			bad(key+".name", "%q appears twice", h.Name)
		}
		names[h.Name] = true
		u, err := url.Parse(h.URI)
		switch {
		case h.URI == "":
			bad(key+".uri", "required: the host's libvirt URI, such as qemu+tls://kvm1.example/system")
		case err != nil || u.Path != "/system":
			bad(key+".uri", "%q is not a libvirt URI of a system daemon, such as qemu:///system or qemu+tls://kvm1.example/system", h.URI)
		case u.Scheme == "qemu+tcp":
			bad(key+".uri", "%q: qemu+tcp carries the host's control in clear; use qemu+tls or qemu+ssh", h.URI)
		case u.Scheme != "qemu" && u.Scheme != "qemu+tls" && u.Scheme != "qemu+ssh" && u.Scheme != "qemu+unix":
			bad(key+".uri", "%q: the transport must be qemu (this machine), qemu+tls or qemu+ssh", h.URI)
		case uris[h.URI]:
			bad(key+".uri", "%q appears twice", h.URI)
		default:
			for _, q := range []string{"no_verify", "known_hosts_verify", "name", "mode"} {
				if u.Query().Has(q) {
					bad(key+".uri", "%q: %s= would change what the connection verifies or reaches; leave it out", h.URI, q)
				}
			}
		}
		uris[h.URI] = true
		if h.MaxVMs < 1 {
			bad(key+".max_vms", "%d: must be at least 1", h.MaxVMs)
		}
		switch {
		case h.Units < 0:
			bad(key+".units", "%d: must be 0 (no units) or more", h.Units)
		case h.Units > 0 && c.VMUnits < 1:
			bad(key+".units", "a host in units needs vm_units, what one VM costs")
		case h.Units > 0 && h.Units < c.VMUnits:
			bad(key+".units", "%d: less than one VM's vm_units (%d)", h.Units, c.VMUnits)
		}
		for _, d := range []struct{ key, dir string }{{"overlay_dir", h.OverlayDir}, {"versions_dir", h.VersionDir}} {
			if d.dir != "" && !filepath.IsAbs(d.dir) {
				bad(key+"."+d.key, "%q must be an absolute path", d.dir)
			}
		}
		if h.OverlayDir != "" && filepath.Clean(h.OverlayDir) == filepath.Clean(h.VersionDir) {
			bad(key+".versions_dir", "%q must not be its overlay_dir", h.VersionDir)
		}
		if h.Weight < 1 {
			bad(key+".weight", "%d: must be at least 1", h.Weight)
		}
		if h.Group != "" {
			if !hostGroupRE.MatchString(h.Group) {
				bad(key+".group", "%q: lowercase letters, digits and dashes, at most 32", h.Group)
			}
			groups[h.Group] = true
		}
		if h.Remote() {
			remote = true
			if ip := net.ParseIP(h.SpiceAddress); ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
				bad(key+".spice_address", "%q: a host other than this machine needs its backend address, where its VMs' SPICE listens for the gateway (TLS only)", h.SpiceAddress)
			}
		} else if h.SpiceAddress != "" {
			bad(key+".spice_address", "only for a host other than this machine: here SPICE is a unix socket")
		}
	}
	if local := slices.IndexFunc(c.Hosts, func(h Host) bool { return !h.Remote() }); local >= 0 &&
		slices.ContainsFunc(c.Hosts[local+1:], func(h Host) bool { return !h.Remote() }) {
		bad("hosts", "more than one host on this machine (qemu:///system and qemu+unix:// name the same libvirtd): each pool would destroy the other's VMs")
	}
	if remote && c.Gateway.HostsCA == "" {
		bad("gateway.hosts_ca", "required with a host other than this machine: the CA file that signed the hosts' SPICE certificates (libvirt's spice_tls)")
	}
	if c.Gateway.HostsCA != "" && !filepath.IsAbs(c.Gateway.HostsCA) {
		bad("gateway.hosts_ca", "%q must be an absolute path", c.Gateway.HostsCA)
	}
	for i, k := range c.Kiosks {
		if k.HostGroup != "" && !groups[k.HostGroup] {
			bad(fmt.Sprintf("kiosk[%d].host_group", i), "%q: no host has that group", k.HostGroup)
		}
	}
	if len(c.Hosts) > 0 {
		if capacity := c.Capacity(); capacity < c.PoolSize {
			bad("pool_size", "%d: more than the hosts hold together (%d)", c.PoolSize, capacity)
		}
	}
}
