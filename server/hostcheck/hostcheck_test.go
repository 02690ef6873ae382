package hostcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"undervdi/server/config"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

type fakeLibvirt struct {
	mem uint64
	err error
}

func (f fakeLibvirt) Info(context.Context) (virt.HostInfo, error) {
	return virt.HostInfo{LibvirtVersion: "9.0.0", Hypervisor: "QEMU", HypervisorVersion: "8.2.0", CPUs: 16, Memory: f.mem}, nil
}
func (f fakeLibvirt) Golden(context.Context, string) (*domxml.Golden, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &domxml.Golden{Name: "win10", Memory: 4 << 30}, nil
}

// host is a fake root: /proc/cpuinfo with flags, /dev/kvm, SELinux's state.
func host(t *testing.T, flags, enforce string) string {
	t.Helper()
	root := t.TempDir()
	for path, content := range map[string]string{
		"proc/cpuinfo": "processor\t: 0\nflags\t\t: " + flags + "\n", "dev/kvm": "", "sys/fs/selinux/enforce": enforce,
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(path)), 0o755)
		os.WriteFile(filepath.Join(root, path), []byte(content), 0o644)
	}
	return root
}

func verdicts(rs []Result) map[string]Result {
	out := map[string]Result{}
	for _, r := range rs {
		out[r.Check] = r
	}
	return out
}

func cfg(t *testing.T) *config.Config {
	c := config.Default()
	c.Golden = "win10"
	c.OverlayDir, c.VersionDir = t.TempDir(), t.TempDir()
	c.AdminSocket = filepath.Join(t.TempDir(), "admin.sock")
	c.PoolSize, c.MaxVMs = 2, 4
	c.Network.Allow = []string{"*.example.org"}
	for _, p := range []*string{&c.Gateway.Listen, &c.Gateway.TLSListen, &c.Sessions.Listen, &c.Sessions.LegacyListen, &c.Ads.Listen,
		&c.Metrics.Listen, &c.API.Listen} {
		*p = "127.0.0.1:0"
	}
	return c
}

func env(t *testing.T, root string) Env {
	return Env{Root: root, Libvirt: fakeLibvirt{mem: 64 << 30},
		Synced:   func() (bool, error) { return true, nil },
		Firewall: func() (string, bool) { return "firewalld running", true },
		Addrs: func() (map[string][]netip.Prefix, error) {
			return map[string][]netip.Prefix{"eno1": {netip.MustParsePrefix("192.0.2.10/24")},
				"uvdi-undervdi": {netip.MustParsePrefix("10.213.0.1/24")}}, nil
		}}
}

// TestGuestNetwork: a subnet another interface is on fails; an empty
// allowlist, the golden's own network or plain overlays warn.
func TestGuestNetwork(t *testing.T) {
	root := host(t, "vmx", "1")
	c := cfg(t)
	e := env(t, root)
	e.Addrs = func() (map[string][]netip.Prefix, error) {
		return map[string][]netip.Prefix{"eno2": {netip.MustParsePrefix("10.213.0.200/16")}}, nil
	}
	if r := verdicts(Run(context.Background(), c, e))["guest network"]; r.Result != Fail || !strings.Contains(r.Detail, "10.213.0.200/16 on eno2") {
		t.Errorf("overlapping subnet: %+v", r)
	}
	c.Network.Allow, c.EncryptDisks = nil, false
	rs := verdicts(Run(context.Background(), c, env(t, root)))
	if r := rs["guest network"]; r.Result != Warn || !strings.Contains(r.Detail, "visitors reach nothing") {
		t.Errorf("empty allowlist: %+v", r)
	}
	if r := rs["disk encryption"]; r.Result != Warn {
		t.Errorf("encrypt_disks off: %+v", r)
	}
	c.Network.Mode = "golden"
	if r := verdicts(Run(context.Background(), c, env(t, root)))["guest network"]; r.Result != Warn || !strings.Contains(r.Detail, "golden") {
		t.Errorf("mode golden: %+v", r)
	}
}

// TestAllPass: a server that can run the pool passes every check.
func TestAllPass(t *testing.T) {
	c := cfg(t)
	rs := Run(context.Background(), c, env(t, host(t, "fpu vmx sse2", "1")))
	for _, r := range rs {
		if r.Result != Pass {
			t.Errorf("%s: %s %s (%s)", r.Check, r.Result, r.Detail, r.Hint)
		}
	}
	if len(rs) < 9 || Failed(rs) {
		t.Errorf("%d results: %+v", len(rs), rs)
	}
}

// TestWhatFails: each problem is named, with what to do.
func TestWhatFails(t *testing.T) {
	c := cfg(t)
	e := env(t, host(t, "fpu sse2", "0"))
	v := verdicts(Run(context.Background(), c, e))
	if r := v["kvm"]; r.Result != Fail || !strings.Contains(r.Detail, "emulation") || !strings.Contains(r.Hint, "firmware") {
		t.Errorf("no vmx: %+v", r)
	}
	if r := v["security"]; r.Result != Warn || !strings.Contains(r.Detail, "permissive") {
		t.Errorf("SELinux permissive: %+v", r)
	}
	e.AllowTCG = true
	if r := verdicts(Run(context.Background(), c, e))["kvm"]; r.Result != Warn {
		t.Errorf("no vmx, -allow-tcg: %+v", r)
	}

	e = env(t, host(t, "vmx", "1"))
	e.Libvirt = fakeLibvirt{mem: 6 << 30} // two 4 GiB clones and the reserve do not fit
	if r := verdicts(Run(context.Background(), c, e))["capacity"]; r.Result != Fail || !strings.Contains(r.Detail, "pool_size 2 does not fit") {
		t.Errorf("too little memory: %+v", r)
	}
	e.Libvirt = fakeLibvirt{mem: 12 << 30} // the pool fits, max_vms does not
	if r := verdicts(Run(context.Background(), c, e))["capacity"]; r.Result != Warn {
		t.Errorf("max_vms does not fit: %+v", r)
	}
	e.Libvirt = fakeLibvirt{mem: 64 << 30, err: errors.New(`golden VM unusable: "win10" does not exist`)}
	if r := verdicts(Run(context.Background(), c, e))["golden"]; r.Result != Fail {
		t.Errorf("no golden: %+v", r)
	}
	e.Libvirt = nil
	e.LibErr = errors.New("dial unix /run/libvirt/libvirt-sock: connect: no such file or directory")
	if r := verdicts(Run(context.Background(), c, e))["libvirt"]; r.Result != Fail || !strings.Contains(r.Hint, "start libvirt") {
		t.Errorf("no libvirt: %+v", r)
	}

	e = env(t, host(t, "vmx", "1"))
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c.Sessions.Listen = held.Addr().String()
	if r := verdicts(Run(context.Background(), c, e))["ports"]; r.Result != Fail || !strings.Contains(r.Detail, held.Addr().String()) {
		t.Errorf("a port in use: %+v", r)
	}
	// The same port, held by a running broker (its admin socket answers).
	sock, err := net.Listen("unix", c.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	if r := verdicts(Run(context.Background(), c, e))["ports"]; r.Result != Pass || !strings.Contains(r.Detail, "running broker") {
		t.Errorf("ports of a running broker: %+v", r)
	}

	e.Synced = func() (bool, error) { return false, nil }
	e.Firewall = func() (string, bool) { return "no packet filter", false }
	v = verdicts(Run(context.Background(), c, e))
	if v["time"].Result != Warn || v["firewall"].Result != Warn {
		t.Errorf("time %+v, firewall %+v", v["time"], v["firewall"])
	}
}

// TestRemoteHost: with the host on another machine, this machine's KVM,
// disks, firewall and SELinux are not reported as the host's: one warning
// says to check that machine there; what libvirt tells is still checked.
func TestRemoteHost(t *testing.T) {
	c := cfg(t)
	c.Network.Mode = "golden"
	c.LibvirtURI = "qemu+tls://kvm2.backend/system"
	c.Hosts = []config.Host{{Name: "kvm2", URI: c.LibvirtURI, MaxVMs: c.MaxVMs, Weight: 1, SpiceAddress: "10.10.0.12"}}
	// This machine has no KVM and no firewall: neither is the host's concern.
	e := env(t, host(t, "fpu sse2", "1"))
	e.Firewall = func() (string, bool) { return "no firewall", false }
	v := verdicts(Run(context.Background(), c, e))
	for _, check := range []string{"kvm", "storage overlay_dir", "storage versions_dir", "firewall", "security"} {
		if r, ok := v[check]; ok {
			t.Errorf("%s checked on this machine for a host elsewhere: %+v", check, r)
		}
	}
	if r := v["host"]; r.Result != Warn || !strings.Contains(r.Detail, "kvm2.backend") || !strings.Contains(r.Hint, "check-host on that machine") {
		t.Errorf("host: %+v", r)
	}
	if r := v["libvirt"]; r.Result != Pass {
		t.Errorf("libvirt: %+v", r)
	}
	if r := v["capacity"]; r.Result != Pass {
		t.Errorf("capacity: %+v", r)
	}
}

// TestSeveralHosts: every host's libvirt and capacity are checked, each
// line named after its host; this machine's storage only for the host that
// is this machine, the golden only on the first host.
func TestSeveralHosts(t *testing.T) {
	c := cfg(t)
	c.Network.Mode = "golden"
	local := t.TempDir()
	c.Hosts = []config.Host{
		{Name: "kvm1", URI: "qemu:///system", MaxVMs: 4, MemoryReserve: 1 << 30, Weight: 1, OverlayDir: filepath.Join(local, "ovl"), VersionDir: filepath.Join(local, "ver")},
		{Name: "kvm2", URI: "qemu+tls://kvm2.backend/system", MaxVMs: 8, MemoryReserve: 1 << 30, Weight: 1, SpiceAddress: "10.10.0.12"},
		{Name: "kvm3", URI: "qemu+tls://kvm3.backend/system", MaxVMs: 4, MemoryReserve: 1 << 30, Weight: 1, SpiceAddress: "10.10.0.13"},
	}
	e := env(t, host(t, "vmx", "1"))
	var asked []string
	e.Connect = func(_ context.Context, h config.Host) (Libvirt, error) {
		asked = append(asked, h.Name)
		switch h.Name {
		case "kvm2":
			return fakeLibvirt{mem: 16 << 30}, nil // 8 × 4 GiB do not fit
		case "kvm3":
			return nil, errors.New("dial tcp kvm3.backend:16514: connection refused")
		}
		return fakeLibvirt{mem: 64 << 30}, nil
	}
	v := verdicts(Run(context.Background(), c, e))
	if !slices.Equal(asked, []string{"kvm1", "kvm2", "kvm3"}) {
		t.Errorf("hosts reached: %v", asked)
	}
	for check, want := range map[string]string{
		"libvirt kvm1": Pass, "golden kvm1": Pass, "capacity kvm1": Pass, "storage overlay_dir kvm1": Pass, "storage versions_dir kvm1": Pass,
		"host kvm2": Warn, "libvirt kvm2": Pass, "capacity kvm2": Warn,
		"host kvm3": Warn, "libvirt kvm3": Fail, "kvm": Pass,
	} {
		if r := v[check]; r.Result != want {
			t.Errorf("%s: %+v, want %s", check, r, want)
		}
	}
	for _, check := range []string{"golden kvm2", "storage overlay_dir kvm2", "capacity kvm3", "libvirt", "capacity"} {
		if r, ok := v[check]; ok {
			t.Errorf("%s checked: %+v", check, r)
		}
	}
	if r := v["capacity kvm1"]; !strings.Contains(r.Detail, "max_vms 4 ×") {
		t.Errorf("kvm1's capacity is its own: %+v", r)
	}
	if r := v["libvirt kvm3"]; !strings.Contains(r.Detail, "kvm3.backend") || !strings.Contains(r.Hint, "client certificate") {
		t.Errorf("kvm3 unreachable: %+v", r)
	}
	if r := v["storage overlay_dir kvm1"]; !strings.Contains(r.Detail, filepath.Join(local, "ovl")) {
		t.Errorf("kvm1's storage is its own overlay_dir: %+v", r)
	}
}

// TestGuestRoutes: with a host elsewhere on the isolated guest network, the
// broker's backend address must be this machine's, and each such host's
// guest subnet routed through that host.
func TestGuestRoutes(t *testing.T) {
	c := cfg(t)
	c.Network.BrokerAddress = "192.0.2.10"
	c.Gateway.HostsCA = "/etc/undervdi/hosts-ca.pem"
	c.Hosts = []config.Host{
		{Name: "kvm1", URI: "qemu:///system", MaxVMs: 4, Weight: 1},
		{Name: "kvm2", URI: "qemu+tls://kvm2.backend/system", MaxVMs: 4, Weight: 1, SpiceAddress: "192.0.2.12", GuestSubnet: "10.213.2.0/24"},
		{Name: "kvm3", URI: "qemu+tls://kvm3.backend/system", MaxVMs: 4, Weight: 1, SpiceAddress: "192.0.2.13", GuestSubnet: "10.213.3.0/24"},
	}
	e := env(t, host(t, "vmx", "1"))
	var asked []string
	e.Route = func(dst netip.Addr) (netip.Addr, error) {
		asked = append(asked, dst.String())
		if dst.String() == "10.213.2.10" {
			return netip.MustParseAddr("192.0.2.12"), nil
		}
		return netip.MustParseAddr("192.0.2.1"), nil // the default route
	}
	v := verdicts(Run(context.Background(), c, e))
	if r := v["guest network broker_address"]; r.Result != Pass {
		t.Errorf("broker_address on eno1: %+v", r)
	}
	if r := v["guest route kvm2"]; r.Result != Pass || !strings.Contains(r.Detail, "10.213.2.0/24 (kvm2's clones) through 192.0.2.12") {
		t.Errorf("kvm2 routed: %+v", r)
	}
	if r := v["guest route kvm3"]; r.Result != Fail || !strings.Contains(r.Detail, "through 192.0.2.1, not through 192.0.2.13") ||
		!strings.Contains(r.Hint, "ip route add 10.213.3.0/24 via 192.0.2.13") {
		t.Errorf("kvm3 through the default route: %+v", r)
	}
	if _, ok := v["guest route kvm1"]; ok || !slices.Equal(asked, []string{"10.213.2.10", "10.213.3.10"}) {
		t.Errorf("routes asked for %v; want the other hosts' clones only", asked)
	}
	c.Network.BrokerAddress = "192.0.2.99"
	if r := verdicts(Run(context.Background(), c, e))["guest network broker_address"]; r.Result != Fail || !strings.Contains(r.Detail, "no address of this machine") {
		t.Errorf("broker_address elsewhere: %+v", r)
	}
}
