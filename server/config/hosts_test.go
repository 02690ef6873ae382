package config

import (
	"strings"
	"testing"
)

const twoHosts = `golden = "g"
pool_size = 6
vm_units = 4
placement = "pack"
[gateway]
hosts_ca = "/etc/undervdi/hosts-ca.pem"
[network]
mode = "golden"
[[hosts]]
name = "kvm1"
uri = "qemu:///system"
max_vms = 10
[[hosts]]
name = "kvm2"
uri = "qemu+tls://kvm2.backend/system"
units = 20
weight = 2
group = "branch-a"
spice_address = "10.10.0.12"
memory_reserve = "4GiB"
versions_dir = "/srv/kvm2/versions"
[[kiosk]]
id = "branch-a-*"
address = "169.254.24.0/24"
token = "a long random secret"
host_group = "branch-a"
`

func TestHosts(t *testing.T) {
	c, err := Parse([]byte(twoHosts))
	if err != nil {
		t.Fatal(err)
	}
	hs := c.SiteHosts()
	if len(hs) != 2 || c.Placement != "pack" {
		t.Fatalf("hosts %+v, placement %q", hs, c.Placement)
	}
	if h := hs[0]; h.Remote() || h.Capacity(c.VMUnits) != 10 || h.Weight != 1 || h.MemoryReserve != 1<<30 {
		t.Errorf("kvm1 = %+v: want this machine, 10 VMs, weight 1, the top-level memory_reserve", h)
	}
	// 20 units at 4 a VM: 5 VMs, though max_vms (the top level's 8) allows more.
	if h := hs[1]; !h.Remote() || h.Capacity(c.VMUnits) != 5 || h.Weight != 2 || h.MemoryReserve != 4<<30 || h.MaxVMs != 8 {
		t.Errorf("kvm2 = %+v (capacity %d): want another machine, 5 VMs, weight 2, 4GiB kept free", h, h.Capacity(c.VMUnits))
	}
	if hs[0].OverlayDir != c.OverlayDir || hs[0].VersionDir != c.VersionDir || hs[1].OverlayDir != c.OverlayDir || hs[1].VersionDir != "/srv/kvm2/versions" {
		t.Errorf("directories: kvm1 %q %q, kvm2 %q %q; want the top level's but kvm2's own versions_dir",
			hs[0].OverlayDir, hs[0].VersionDir, hs[1].OverlayDir, hs[1].VersionDir)
	}
	if c.Capacity() != 15 {
		t.Errorf("site capacity %d, want 15", c.Capacity())
	}

	// No [[hosts]]: the one host the top level describes.
	one, err := Parse([]byte(`golden = "g"`))
	if err != nil {
		t.Fatal(err)
	}
	if hs := one.SiteHosts(); len(hs) != 1 || hs[0].URI != "qemu:///system" || hs[0].Remote() || hs[0].Capacity(0) != 8 {
		t.Errorf("without [[hosts]]: %+v", hs)
	}
	// One [[hosts]] entry on this machine is the same as today.
	listed, err := Parse([]byte("golden = \"g\"\n[[hosts]]\nuri = \"qemu:///system\"\nmax_vms = 12\nmemory_reserve = \"2GiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A host's settings are in one place, its entry: everything reads
	// them through SiteHosts.
	if hs := listed.SiteHosts(); len(hs) != 1 || hs[0].URI != "qemu:///system" || hs[0].Capacity(0) != 12 || hs[0].MemoryReserve != 2<<30 || hs[0].Name != "local" {
		t.Errorf("one listed host: %+v", hs)
	}
}

// isolatedHosts is twoHosts on the isolated guest network.
var isolatedHosts = strings.Replace(strings.Replace(twoHosts, `mode = "golden"`, "mode = \"isolated\"\nbroker_address = \"10.10.0.1\"", 1),
	`spice_address = "10.10.0.12"`, "spice_address = \"10.10.0.12\"\nguest_subnet = \"10.213.1.0/24\"", 1)

// TestIsolatedHosts: each host's guest network, another machine's routed
// to the broker's backend address.
func TestIsolatedHosts(t *testing.T) {
	c, err := Parse([]byte(isolatedHosts))
	if err != nil {
		t.Fatal(err)
	}
	hs := c.SiteHosts()
	local, err := c.HostPlan(hs[0])
	if err != nil || local.Subnet.String() != "10.213.0.0/24" || local.Broker().String() != "10.213.0.1" {
		t.Errorf("kvm1's plan %+v, %v: want network.subnet, the broker at its gateway", local, err)
	}
	other, err := c.HostPlan(hs[1])
	if err != nil || other.Subnet.String() != "10.213.1.0/24" || other.Broker().String() != "10.10.0.1" || other.Network != local.Network {
		t.Errorf("kvm2's plan %+v, %v: want its guest_subnet, the broker at its backend address", other, err)
	}
}

// refused checks that base with from replaced by to is refused with an
// error that says want.
func refused(t *testing.T, base, name, from, to, want string) {
	t.Helper()
	in := strings.Replace(base, from, to, 1)
	if in == base {
		t.Fatalf("%s: %q is not in the base file", name, from)
	}
	if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want an error with %q", name, err, want)
	}
}

func TestHostsValidated(t *testing.T) {
	for _, tc := range []struct {
		name, from, to string // twoHosts with from replaced by to
		want           string
	}{
		{"a host without a name", `name = "kvm2"`, ``, `hosts[1].name: required when there are several hosts`},
		{"a name twice", `name = "kvm2"`, `name = "kvm1"`, `hosts "kvm1".name: "kvm1" appears twice`},
		{"a bad name", `name = "kvm2"`, `name = "KVM 2"`, `hosts "KVM 2".name: "KVM 2": lowercase`},
		{"no uri", `uri = "qemu+tls://kvm2.backend/system"`, ``, `hosts "kvm2".uri: required`},
		{"a session daemon", `qemu+tls://kvm2.backend/system`, `qemu+tls://kvm2.backend/session`, `not a libvirt URI of a system daemon`},
		{"in clear", `qemu+tls://kvm2.backend/system`, `qemu+tcp://kvm2.backend/system`, `qemu+tcp carries the host's control in clear`},
		{"another hypervisor", `qemu+tls://kvm2.backend/system`, `xen+tls://kvm2.backend/system`, `the transport must be qemu`},
		{"a uri twice", `qemu+tls://kvm2.backend/system`, `qemu:///system`, `"qemu:///system" appears twice`},
		{"no room", `max_vms = 10`, `max_vms = -1`, `hosts "kvm1".max_vms: -1: must be at least 1`},
		{"units without a cost", `vm_units = 4`, ``, `hosts "kvm2".units: a host in units needs vm_units`},
		{"less than a VM", `units = 20`, `units = 3`, `hosts "kvm2".units: 3: less than one VM's vm_units (4)`},
		{"a bad weight", `weight = 2`, `weight = -2`, `hosts "kvm2".weight: -2: must be at least 1`},
		{"a bad group", `group = "branch-a"`, `group = "Branch A"`, `hosts "kvm2".group: "Branch A"`},
		{"a kiosk pinned to no host", `host_group = "branch-a"`, `host_group = "branch-b"`, `kiosk[0].host_group: "branch-b": no host has that group`},
		{"a remote host without its backend address", `spice_address = "10.10.0.12"`, ``, `hosts "kvm2".spice_address: "": a host other than this machine needs its backend address`},
		{"a loopback backend address", `spice_address = "10.10.0.12"`, `spice_address = "127.0.0.1"`, `hosts "kvm2".spice_address: "127.0.0.1"`},
		{"no hosts CA", `hosts_ca = "/etc/undervdi/hosts-ca.pem"`, ``, `gateway.hosts_ca: required with a host other than this machine`},
		{"more clean VMs than the hosts hold", `pool_size = 6`, `pool_size = 16`, `pool_size: 16: more than the hosts hold together (15)`},
		{"a relative directory", `versions_dir = "/srv/kvm2/versions"`, `versions_dir = "srv"`, `hosts "kvm2".versions_dir: "srv" must be an absolute path`},
		{"versions in the overlays", `versions_dir = "/srv/kvm2/versions"`, "versions_dir = \"/srv/x\"\noverlay_dir = \"/srv/x/\"", `hosts "kvm2".versions_dir: "/srv/x" must not be its overlay_dir`},
		{"this machine twice", `qemu+tls://kvm2.backend/system`, `qemu+unix:///system`, `hosts: more than one host on this machine`},
		{"placement", `placement = "pack"`, `placement = "random"`, `placement: "random": spread`},
		{"a URI that skips verification", `qemu+tls://kvm2.backend/system`, `qemu+tls://kvm2.backend/system?no_verify=1`, `no_verify= would change what the connection verifies`},
		{"a URI naming another daemon", `qemu+tls://kvm2.backend/system`, `qemu+tls://kvm2.backend/system?name=qemu:///session`, `name= would change`},
		{"libvirt_uri besides [[hosts]]", `golden = "g"`, "golden = \"g\"\nlibvirt_uri = \"qemu:///system\"", `libvirt_uri: with [[hosts]]`},
		{"a host elsewhere on the isolated guest network without its subnet", `mode = "golden"`, "mode = \"isolated\"\nbroker_address = \"10.10.0.1\"",
			`hosts "kvm2".guest_subnet: required for a host other than this machine with network.mode isolated`},
		{"the isolated guest network elsewhere without the broker's address", `mode = "golden"`, "mode = \"isolated\"\n[[hosts]]\nname = \"kvm3\"\nuri = \"qemu+tls://kvm3/system\"\nspice_address = \"10.10.0.13\"\nguest_subnet = \"10.213.3.0/24\"",
			`network.broker_address: required with a host other than this machine`},
	} {
		refused(t, twoHosts, tc.name, tc.from, tc.to, tc.want)
	}
	for _, tc := range []struct {
		name, from, to string // isolatedHosts with from replaced by to
		want           string
	}{
		{"a subnet twice", `guest_subnet = "10.213.1.0/24"`, `guest_subnet = "10.213.0.128/25"`,
			`hosts "kvm2".guest_subnet: 10.213.0.128/25 overlaps network.subnet (10.213.0.0/24)`},
		{"a subnet on this machine's host", `uri = "qemu:///system"`, "uri = \"qemu:///system\"\nguest_subnet = \"10.213.5.0/24\"",
			`hosts "kvm1".guest_subnet: only for a host other than this machine`},
		{"a subnet too small for the host", `guest_subnet = "10.213.1.0/24"`, `guest_subnet = "10.213.1.0/28"`, `hosts "kvm2".guest_subnet: subnet 10.213.1.0/28: must be an IPv4 range from /16 to /27`},
		{"the broker in a guest subnet", `broker_address = "10.10.0.1"`, `broker_address = "10.213.1.1"`,
			`network.broker_address: 10.213.1.1 is in hosts "kvm2".guest_subnet`},
		{"the broker on loopback", `broker_address = "10.10.0.1"`, `broker_address = "127.0.0.1"`, `network.broker_address: "127.0.0.1": an IPv4 address of this machine`},
		{"a subnet on the kiosk LAN", `guest_subnet = "10.213.1.0/24"`, `guest_subnet = "169.254.24.0/24"`, `hosts "kvm2".guest_subnet: 169.254.24.0/24 overlaps kiosk[0]`},
	} {
		refused(t, isolatedHosts, tc.name, tc.from, tc.to, tc.want)
	}
	// Another machine named by libvirt_uri alone: where would its SPICE be?
	if _, err := Parse([]byte("golden = \"g\"\nlibvirt_uri = \"qemu+tls://kvm2/system\"\n")); err == nil ||
		!strings.Contains(err.Error(), `libvirt_uri: "qemu+tls://kvm2/system" is another machine: list it in [[hosts]]`) {
		t.Errorf("a remote libvirt_uri without [[hosts]]: %v", err)
	}
	// A backend address on this machine's host is refused.
	in := strings.Replace(twoHosts, `uri = "qemu:///system"`, "uri = \"qemu:///system\"\nspice_address = \"10.10.0.11\"", 1)
	if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), `hosts "kvm1".spice_address: only for a host other than this machine`) {
		t.Errorf("spice_address on this machine's host: %v", err)
	}
}
