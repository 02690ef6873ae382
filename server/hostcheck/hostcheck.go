// Package hostcheck is vdi-broker check-host: whether the KVM server can
// run the configured pool. Each check says PASS, WARN or FAIL and, unless
// it passed, what to do.
package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"undervdi/server/config"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// Verdicts.
const (
	Pass = "PASS"
	Warn = "WARN"
	Fail = "FAIL"
)

// Result is one check's outcome.
type Result struct {
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"` // what to do, unless it passed
}

// Libvirt is what the checks ask libvirt; *virt.Host has it.
type Libvirt interface {
	Info(ctx context.Context) (virt.HostInfo, error)
	Golden(ctx context.Context, name string) (*domxml.Golden, error)
}

// Env is the host as the checks see it; tests give another.
type Env struct {
	Root string // prefix of /proc, /dev, /sys: "" on a real host
	// Connect reaches a host's libvirt; nil: every host is Libvirt, or
	// LibErr (why libvirt could not be reached) if that is nil.
	Connect  func(ctx context.Context, h config.Host) (Libvirt, error)
	Libvirt  Libvirt
	LibErr   error
	AllowTCG bool // without KVM, run under emulation: a warning, not a failure
	// Listen tries a port; nil: net.Listen.
	Listen func(network, addr string) (net.Listener, error)
	// Synced says whether the clock is synchronised; nil: adjtimex(2).
	Synced func() (bool, error)
	// Firewall describes the packet filter; nil: firewalld, then nftables.
	Firewall func() (string, bool)
	// Addrs lists the host's interface addresses by interface; nil: the
	// host's own.
	Addrs func() (map[string][]netip.Prefix, error)
	// Route says through which router this machine sends to dst (invalid:
	// directly, on a network it is on); nil: the kernel's routing table.
	Route func(dst netip.Addr) (netip.Addr, error)
}

// Run runs every check for cfg, on each of its hosts. This machine's own
// KVM, disks, firewall and SELinux are checked for the host that is this
// machine, if one is; what libvirt tells (reachable, the golden, memory
// and CPUs) for every host. With several hosts, a host's checks carry its
// name ("capacity kvm2").
func Run(ctx context.Context, cfg *config.Config, env Env) []Result {
	var out []Result
	add := func(check, result, detail, hint string) {
		if result == Pass {
			hint = ""
		}
		out = append(out, Result{check, result, detail, hint})
	}
	hosts := cfg.SiteHosts()
	here := slices.ContainsFunc(hosts, func(h config.Host) bool { return !h.Remote() })
	if here {
		env.kvm(add)
	}
	var golden *domxml.Golden // the golden's, read on the first host: what a clone needs everywhere
	for i, h := range hosts {
		hadd := add
		if len(hosts) > 1 {
			hadd = func(check, result, detail, hint string) { add(check+" "+h.Name, result, detail, hint) }
		}
		if h.Remote() {
			// A host on another machine: what is checked through
			// libvirt holds for it; its own KVM, disks, firewall and
			// SELinux are checked there.
			hadd("host", Warn, fmt.Sprintf("%s is another machine: its KVM, storage, firewall and SELinux are not checked from here", h.URI),
				`run vdi-broker check-host on that machine too, with uri = "qemu:///system": there its kvm, storage, firewall and security lines are the ones that count`)
		}
		lv, err := env.connect(ctx, h)
		g, reached := libvirtCheck(ctx, cfg, h, lv, err, i == 0, hadd)
		if i == 0 {
			golden = g
		}
		if !h.Remote() {
			env.storage(cfg, h, golden, hadd)
		}
		if reached {
			capacity(ctx, cfg, h, lv, golden, hadd)
		}
	}
	env.ports(cfg, add)
	if here {
		env.firewall(add)
	}
	env.guestNetwork(cfg, add)
	env.clock(add)
	if here {
		env.lsm(add)
	}
	return out
}

func (e Env) connect(ctx context.Context, h config.Host) (Libvirt, error) {
	switch {
	case e.Connect != nil:
		return e.Connect(ctx, h)
	case e.Libvirt != nil:
		return e.Libvirt, nil
	}
	return nil, e.LibErr
}

func (e Env) path(p string) string { return filepath.Join(e.Root, p) }

// kvm: the CPU's virtualisation extensions and a usable /dev/kvm.
func (e Env) kvm(add func(string, string, string, string)) {
	info, _ := os.ReadFile(e.path("/proc/cpuinfo"))
	flags := ""
	for _, line := range strings.Split(string(info), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = " " + v + " "
			break
		}
	}
	ext := strings.Contains(flags, " vmx ") || strings.Contains(flags, " svm ")
	f, err := os.OpenFile(e.path("/dev/kvm"), os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	verdict := Fail
	if e.AllowTCG {
		verdict = Warn
	}
	switch {
	case ext && err == nil:
		add("kvm", Pass, "hardware virtualisation, /dev/kvm usable", "")
	case !ext:
		add("kvm", verdict, "the CPU shows no virtualisation extensions (vmx, svm): VMs would run under emulation (TCG), many times slower",
			"turn on VT-x / AMD-V in the server's firmware; for a test bench only, vdi-broker check-host -allow-tcg")
	default:
		add("kvm", verdict, "the CPU has the extensions, but /dev/kvm is not usable: "+err.Error(),
			"load kvm_intel or kvm_amd (modprobe), and check /dev/kvm's group (kvm) and libvirt's")
	}
}

// libvirtCheck: the host's libvirt is reachable, and its version; on the
// golden's host (the first), the golden VM. It says whether libvirt
// answered, and returns the golden if it was read.
func libvirtCheck(ctx context.Context, cfg *config.Config, h config.Host, lv Libvirt, err error, goldenHost bool, add func(string, string, string, string)) (*domxml.Golden, bool) {
	if lv == nil || err != nil {
		hint := "start libvirt (systemctl start virtqemud.socket, or libvirtd) and check the broker's group (libvirt)"
		if h.Remote() {
			hint = "check that libvirt runs there and listens for TLS, the network between, and the broker's client certificate (docs/hosts.md)"
		}
		add("libvirt", Fail, fmt.Sprintf("not reachable at %s: %v", h.URI, err), hint)
		return nil, false
	}
	info, err := lv.Info(ctx)
	if err != nil {
		add("libvirt", Fail, err.Error(), "check libvirt's log (journalctl -u virtqemud)")
		return nil, false
	}
	add("libvirt", Pass, fmt.Sprintf("libvirt %s, %s %s, at %s", info.LibvirtVersion, info.Hypervisor, info.HypervisorVersion, h.URI), "")
	if !goldenHost {
		return nil, true
	}
	g, err := lv.Golden(ctx, cfg.Golden)
	switch {
	case errors.Is(err, virt.ErrRunning):
		add("golden", Warn, fmt.Sprintf("%s is running", cfg.Golden), "shut it down before the next vdi-broker publish")
	case err != nil:
		add("golden", Fail, err.Error(), "define the golden VM in libvirt (docs/install.md, the golden VM)")
	default:
		add("golden", Pass, fmt.Sprintf("%s: %s of memory, %d disk(s) to clone, %s allocated", g.Name, humanize.IBytes(g.Memory),
			len(g.WritableDisks()), humanize.IBytes(allocated(g))), "")
		return g, true
	}
	return nil, true
}

func allocated(g *domxml.Golden) uint64 {
	var n uint64
	for _, d := range g.WritableDisks() {
		n += d.Allocation
	}
	return n
}

// storage: the host's overlay and version directories' filesystems and
// room.
func (e Env) storage(cfg *config.Config, h config.Host, g *domxml.Golden, add func(string, string, string, string)) {
	for _, s := range []struct{ key, dir string }{{"overlay_dir", h.OverlayDir}, {"versions_dir", h.VersionDir}} {
		dir := existing(e.path(s.dir))
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			add("storage "+s.key, Fail, fmt.Sprintf("%s: %v", s.dir, err), "make the directory's parent, on the volume for undervdi")
			continue
		}
		free := st.Bavail * uint64(st.Bsize)
		fs := fsName(st.Type)
		detail := fmt.Sprintf("%s on %s, %s free", s.dir, fs, humanize.IBytes(free))
		var need uint64
		if g != nil {
			if s.key == "versions_dir" {
				need = allocated(g) * uint64(cfg.KeepVersions+2) // kept ones, the current, one being published
			} else {
				need = uint64(h.Capacity(cfg.VMUnits)) << 30 // a clone's overlay grows with its visitor: a GiB each, at least
			}
			detail += fmt.Sprintf(", needs about %s", humanize.IBytes(need))
		}
		switch {
		case fs == "tmpfs" || fs == "overlayfs":
			add("storage "+s.key, Warn, detail+": a RAM or layered filesystem", "put it on a disk volume (xfs or ext4), as the kickstart does")
		case need > 0 && free < need:
			add("storage "+s.key, Fail, detail, "give the volume more room, or lower keep_versions / max_vms")
		default:
			add("storage "+s.key, Pass, detail, "")
		}
	}
}

// existing is dir, or its nearest parent that exists.
func existing(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" || dir == "." {
			return dir
		}
		dir = filepath.Dir(dir)
	}
}

func fsName(t int64) string {
	switch uint32(t) {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("filesystem 0x%x", uint32(t))
}

// capacity: the host's memory and CPUs against its max_vms clones of the
// golden. The pool must fit on the site: on a host of several, its share
// is not known in advance, so a host that cannot hold pool_size is a
// warning, not a failure.
func capacity(ctx context.Context, cfg *config.Config, h config.Host, lv Libvirt, g *domxml.Golden, add func(string, string, string, string)) {
	if g == nil {
		add("capacity", Warn, "not checked: the golden VM could not be read on the first host, "+cfg.SiteHosts()[0].Name, "run check-host again once it can")
		return
	}
	info, err := lv.Info(ctx)
	if err != nil {
		return
	}
	vms := h.Capacity(cfg.VMUnits)
	need := uint64(vms)*g.Memory + uint64(h.MemoryReserve)
	poolNeed := uint64(cfg.PoolSize)*g.Memory + uint64(h.MemoryReserve)
	detail := fmt.Sprintf("%s of memory, %d CPUs; max_vms %d × %s + memory_reserve %s = %s", humanize.IBytes(info.Memory), info.CPUs,
		vms, humanize.IBytes(g.Memory), h.MemoryReserve, humanize.IBytes(need))
	several := len(cfg.SiteHosts()) > 1
	switch {
	case info.Memory < poolNeed && !several:
		add("capacity", Fail, detail+fmt.Sprintf("; even pool_size %d does not fit", cfg.PoolSize),
			"add memory, or lower pool_size and the golden's memory")
	case info.Memory < need:
		fits := "the pool fits, "
		if several {
			fits = ""
		}
		add("capacity", Warn, detail+": "+fits+"max_vms does not fit; the broker stops cloning at memory_reserve",
			"lower max_vms, or add memory")
	default:
		add("capacity", Pass, detail, "")
	}
}

// ports: the broker's listen addresses are free (or the broker has them).
func (e Env) ports(cfg *config.Config, add func(string, string, string, string)) {
	listen := e.Listen
	if listen == nil {
		listen = net.Listen
	}
	var busy []string
	n := 0
	for _, a := range []string{cfg.Gateway.Listen, cfg.Gateway.TLSListen, cfg.Sessions.Listen, cfg.Sessions.LegacyListen,
		cfg.Ads.Listen, cfg.Metrics.Listen, cfg.API.Listen} {
		if a == "" {
			continue
		}
		n++
		ln, err := listen("tcp", a)
		if err != nil {
			busy = append(busy, a)
			continue
		}
		ln.Close()
	}
	running := false
	if c, err := net.Dial("unix", cfg.AdminSocket); err == nil {
		c.Close()
		running = true
	}
	switch {
	case len(busy) == 0:
		add("ports", Pass, fmt.Sprintf("the broker's %d ports are free", n), "")
	case running:
		add("ports", Pass, fmt.Sprintf("%s in use by the running broker (its admin socket answers)", strings.Join(busy, ", ")), "")
	default:
		add("ports", Fail, strings.Join(busy, ", ")+" in use by something else", "find it (ss -ltnp) and stop it, or move the broker's port")
	}
}

// guestNetwork: the visitors' VMs are isolated, on a subnet of their own,
// with an allowlist, and their disks encrypted.
func (e Env) guestNetwork(cfg *config.Config, add func(string, string, string, string)) {
	if !cfg.EncryptDisks {
		add("disk encryption", Warn, "encrypt_disks is off: a wiped overlay's blocks stay on the disk until overwritten",
			"turn encrypt_disks on, unless the host's disk is itself encrypted and never leaves the site (docs/network.md)")
	} else {
		add("disk encryption", Pass, "each clone's overlay is LUKS-encrypted with a key of its own, undefined when the VM ends", "")
	}
	plan, err := cfg.Plan()
	if err != nil || plan == nil {
		add("guest network", Warn, "network.mode is golden: clones keep the golden's interfaces; nothing keeps visitors' VMs apart or holds them to an allowlist",
			"use network.mode = isolated (docs/network.md)")
		return
	}
	addrs := e.Addrs
	if addrs == nil {
		addrs = hostAddrs
	}
	ifaces, err := addrs()
	if err != nil {
		add("guest network", Warn, "cannot list the host's addresses: "+err.Error(), "")
		return
	}
	e.guestRoutes(cfg, ifaces, add)
	var clash []string
	for name, ps := range ifaces {
		for _, p := range ps {
			if name != plan.Bridge && p.Masked().Overlaps(plan.Subnet) {
				clash = append(clash, fmt.Sprintf("%s on %s", p, name))
			}
		}
	}
	slices.Sort(clash)
	switch {
	case len(clash) > 0:
		add("guest network", Fail, fmt.Sprintf("network.subnet %s overlaps %s", plan.Subnet, strings.Join(clash, ", ")),
			"give the visitors' VMs a subnet no network of the host uses (network.subnet)")
	case len(cfg.Network.Allow) == 0:
		add("guest network", Warn, fmt.Sprintf("%s on %s; network.allow is empty: visitors reach nothing", plan.Network, plan.Subnet),
			"list the sites visitors may use in network.allow (docs/network.md)")
	default:
		add("guest network", Pass, fmt.Sprintf("%s on %s, gateway %s, %d allowed entries", plan.Network, plan.Subnet, plan.Gateway(),
			len(cfg.Network.Allow)), "")
	}
}

// guestRoutes: the clones of hosts other than this machine reach the
// broker at network.broker_address, one of this machine's addresses, and
// this machine sends its answers to each such host's guest_subnet through
// that host (its spice_address), which routes it to its clones.
func (e Env) guestRoutes(cfg *config.Config, ifaces map[string][]netip.Prefix, add func(string, string, string, string)) {
	hosts := cfg.SiteHosts()
	if !slices.ContainsFunc(hosts, config.Host.Remote) {
		return
	}
	broker, _ := netip.ParseAddr(cfg.Network.BrokerAddress) // config.Validate checked it
	mine := false
	for _, ps := range ifaces {
		mine = mine || slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr() == broker })
	}
	if mine {
		add("guest network broker_address", Pass, fmt.Sprintf("%s is this machine's: other hosts' clones reach its DNS and proxies there", broker), "")
	} else {
		add("guest network broker_address", Fail, fmt.Sprintf("network.broker_address %s is no address of this machine: other hosts' clones reach nothing", broker),
			"give this machine that address on the hosts' backend network, or set network.broker_address to the address it has there")
	}
	route := e.Route
	if route == nil {
		route = kernelRoute
	}
	for _, h := range hosts {
		if !h.Remote() {
			continue
		}
		plan, err := cfg.HostPlan(h)
		if err != nil {
			continue // config.Validate said why
		}
		check := "guest route " + h.Name
		via, err := route(plan.Addr(0))
		host, _ := netip.ParseAddr(h.SpiceAddress)
		fix := fmt.Sprintf("route the host's guest subnet through it: ip route add %s via %s (NetworkManager: nmcli connection modify <the backend connection> +ipv4.routes \"%s %s\"); docs/hosts.md",
			plan.Subnet, host, plan.Subnet, host)
		switch {
		case err != nil:
			add(check, Fail, fmt.Sprintf("cannot tell how this machine reaches %s: %v", plan.Subnet, err), fix)
		case via != host:
			how := "directly"
			if via.IsValid() {
				how = "through " + via.String()
			}
			add(check, Fail, fmt.Sprintf("this machine sends to %s (%s's clones) %s, not through %s: the answers to their DNS and proxy requests go astray", plan.Subnet, h.Name, how, host), fix)
		default:
			add(check, Pass, fmt.Sprintf("%s (%s's clones) through %s", plan.Subnet, h.Name, host), "")
		}
	}
}

// kernelRoute asks the kernel's routing table which router dst goes
// through.
func kernelRoute(dst netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return netip.Addr{}, err
	}
	if len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to %s", dst)
	}
	gw, _ := netip.AddrFromSlice(routes[0].Gw)
	return gw.Unmap(), nil
}

func hostAddrs() (map[string][]netip.Prefix, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := map[string][]netip.Prefix{}
	for _, i := range ifs {
		as, _ := i.Addrs()
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out[i.Name] = append(out[i.Name], p)
			}
		}
	}
	return out, nil
}

// firewall: a packet filter is on.
func (e Env) firewall(add func(string, string, string, string)) {
	probe := e.Firewall
	if probe == nil {
		probe = hostFirewall
	}
	what, on := probe()
	if on {
		add("firewall", Pass, what, "")
		return
	}
	add("firewall", Warn, what, "turn firewalld on, with the kiosk card in a zone that opens only the broker's kiosk ports (the kickstart's undervdi-kiosks)")
}

func hostFirewall() (string, bool) {
	if out, err := exec.Command("firewall-cmd", "--state").Output(); err == nil && strings.TrimSpace(string(out)) == "running" {
		zones, _ := exec.Command("firewall-cmd", "--get-active-zones").Output()
		return "firewalld running; active zones: " + strings.Join(strings.Fields(string(zones)), " "), true
	}
	if out, err := exec.Command("nft", "list", "ruleset").Output(); err == nil {
		if bytes.Contains(out, []byte("hook input")) {
			return "nftables has an input chain (firewalld is not running)", true
		}
		return "no packet filter: nftables has no input chain, firewalld is not running", false
	}
	return "no packet filter found (neither firewalld nor nft answer)", false
}

// clock: synchronised, for TLS certificates, tickets and the audit's times.
func (e Env) clock(add func(string, string, string, string)) {
	synced := e.Synced
	if synced == nil {
		synced = adjtimexSynced
	}
	ok, err := synced()
	switch {
	case err != nil:
		add("time", Warn, "cannot tell whether the clock is synchronised: "+err.Error(), "run chronyd (timesource in the kickstart)")
	case ok:
		add("time", Pass, "the clock is synchronised (NTP)", "")
	default:
		add("time", Warn, "the clock is not synchronised", "start chronyd, with time servers the server reaches (chronyc sources)")
	}
}

func adjtimexSynced() (bool, error) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return false, err
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0, nil
}

// lsm: SELinux enforcing (the kickstart's), or AppArmor.
func (e Env) lsm(add func(string, string, string, string)) {
	if b, err := os.ReadFile(e.path("/sys/fs/selinux/enforce")); err == nil {
		if strings.TrimSpace(string(b)) == "1" {
			add("security", Pass, "SELinux enforcing", "")
		} else {
			add("security", Warn, "SELinux permissive", "setenforce 1, and SELINUX=enforcing in /etc/selinux/config")
		}
		return
	}
	if _, err := os.Stat(e.path("/sys/kernel/security/apparmor/profiles")); err == nil {
		add("security", Pass, "AppArmor on (libvirt confines each VM with its own profile)", "")
		return
	}
	add("security", Warn, "neither SELinux nor AppArmor is on: a VM that escapes QEMU is not confined",
		"install the server with the kickstart (SELinux enforcing)")
}

// Failed reports whether any check failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Result == Fail {
			return true
		}
	}
	return false
}
