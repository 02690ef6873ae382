//go:build integration

package pxe

// These tests boot real firmware over a real network: each builds a
// network namespace holding a bridge (the kiosk network), runs the
// undervdi-pxe command on it, and boots QEMU (TCG) from it with SeaBIOS
// and with OVMF until the tiny VM's u-root init greets on the serial
// console. A DHCP client speaking as a kiosk, a BIOS PXE ROM, UEFI
// firmware and iPXE checks what dnsmasq answers each; it runs inside the
// namespace as this test binary started again (see TestMain). Nothing
// touches the host's network: every address lives in the namespaces, and
// deleting them removes every link.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"undervdi/initramfs"
	"undervdi/internal/bootlayout"
	"undervdi/internal/debpkg"
	"undervdi/internal/kioskvm"
	"undervdi/internal/syncbuf"
	"undervdi/internal/testbed"
	"undervdi/tinyvm"
)

// probeEnv, when set, makes the test binary a DHCP probe (see probeMain).
const probeEnv = "UNDERVDI_PXE_PROBE"

func TestMain(m *testing.M) {
	if req := os.Getenv(probeEnv); req != "" {
		os.Exit(probeMain(req))
	}
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// shared holds what all tests use: the boot directory, built from the
// tiny VM, and the undervdi-pxe binary.
var shared struct {
	once    sync.Once
	dir     string // removed by TestMain
	bootDir string
	cli     string
	err     error
}

func setup(t *testing.T) (bootDir, cli string) {
	t.Helper()
	for _, tool := range []string{"ip", "dnsmasq", "qemu-system-x86_64", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v", tool, err)
		}
	}
	shared.once.Do(func() { shared.err = buildShared() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.bootDir, shared.cli
}

func buildShared() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "pxe-it-")
	if err != nil {
		return err
	}
	shared.dir = dir
	// dnsmasq's TFTP server drops root: the boot directory must be open.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	boot := filepath.Join(dir, "boot")
	if err := os.Mkdir(boot, 0o755); err != nil {
		return err
	}
	cacheDir := filepath.Join(testbed.CacheDir(), "tinyvm")
	art, err := (&tinyvm.Builder{CacheDir: cacheDir}).Build(ctx)
	if err != nil {
		return fmt.Errorf("building the tiny VM: %w", err)
	}
	for src, dst := range map[string]string{art.Kernel: bootlayout.Kernel, art.Initramfs: bootlayout.Initramfs} {
		if err := copyFile(src, filepath.Join(boot, dst)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(boot, bootlayout.IPXEScript), []byte(IPXEScript("console=ttyS0")), 0o644); err != nil {
		return err
	}
	// The tiny VM's package cache, which already holds its kernel.
	if _, err := InstallLoaders(ctx, &debpkg.Cache{Dir: filepath.Join(cacheDir, "debs")}, boot); err != nil {
		return err
	}
	shared.bootDir = boot
	shared.cli = filepath.Join(dir, "undervdi-pxe")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", shared.cli, "undervdi/pxe/cmd/undervdi-pxe").CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build undervdi-pxe: %v: %s", err, out)
	}
	return nil
}

// ip runs iproute2.
func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNS makes a network namespace, deleted (with its links) when t ends.
func newNS(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ip(t, "-n", name, "link", "set", "lo", "up")
	return name
}

// kioskNet makes the kiosk network: a namespace with a bridge br0 at addr
// (the server's end) and a tap per VM, and a second namespace, the probe's
// machine, whose vc0 is joined to the bridge.
func kioskNet(t *testing.T, addr string, vms int) (ns, clientNS string) {
	ns = newNS(t, "uvpxe-")
	ip(t, "-n", ns, "link", "add", "br0", "type", "bridge")
	ip(t, "-n", ns, "addr", "add", addr, "dev", "br0")
	ip(t, "-n", ns, "link", "set", "br0", "up")
	for i := range vms {
		tap := fmt.Sprintf("tap%d", i)
		ip(t, "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
		ip(t, "-n", ns, "link", "set", tap, "master", "br0", "up")
	}
	clientNS = join(t, ns, "uvcli-", "vb0", "vc0")
	ip(t, "-n", clientNS, "link", "set", "vc0", "up")
	return ns, clientNS
}

// join makes a namespace whose link inner is joined by a veth pair to the
// bridge br0 in ns, at port outer.
func join(t *testing.T, ns, prefix, outer, inner string) string {
	other := newNS(t, prefix)
	ip(t, "-n", ns, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", other)
	ip(t, "-n", ns, "link", "set", outer, "master", "br0", "up")
	return other
}

// inNS returns a command that runs in namespace ns.
func inNS(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// daemon is a long-running process of the test, started in a namespace.
type daemon struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan error
}

// start starts a daemon that is killed (by its PID) when t ends, if it is
// still running, and whose output is shown if t failed.
func start(t *testing.T, name string, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{name: name, cmd: cmd, out: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, d.out.String())
		}
	})
	return d
}

// waitFor waits until the daemon's output holds every string of want.
func (d *daemon) waitFor(t *testing.T, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := d.out.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("%s exited (%v) before saying %q:\n%s", d.name, err, missing, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not say %q within %s:\n%s", d.name, missing, timeout, out)
		}
	}
}

// stop sends SIGTERM and checks the daemon exits cleanly and leaves no
// process in namespace ns (that is, it stopped dnsmasq too).
func (d *daemon) stop(t *testing.T, ns string) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to %s: %v", d.name, err)
	}
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("%s after SIGTERM: %v\n%s", d.name, err, d.out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not exit within 15 s of SIGTERM", d.name)
	}
	if left := processesIn(t, ns); len(left) > 0 {
		t.Errorf("processes left in namespace %s after %s stopped: %s", ns, d.name, strings.Join(left, "; "))
	}
}

// processesIn lists the processes in network namespace ns.
func processesIn(t *testing.T, ns string) []string {
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	pids, _ := filepath.Glob("/proc/[0-9]*")
	var found []string
	for _, p := range pids {
		if link, err := os.Readlink(p + "/ns/net"); err == nil && link == want {
			cmdline, _ := os.ReadFile(p + "/cmdline")
			found = append(found, filepath.Base(p)+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// startPXE runs undervdi-pxe in ns and waits until dnsmasq and the HTTP
// server are up.
func startPXE(t *testing.T, ns string, args ...string) *daemon {
	_, cli := setup(t)
	d := start(t, "undervdi-pxe", inNS(context.Background(), ns, cli, append(args, "-log-dhcp", "-v")...))
	d.waitFor(t, 30*time.Second, "serving network-boot files over HTTP", "TFTP root is", "dnsmasq-dhcp")
	return d
}

// checkTFTP fetches the BIOS loader with curl from the client namespace,
// at address client on vc0.
func checkTFTP(t *testing.T, clientNS, client, server, bootDir string) {
	ip(t, "-n", clientNS, "addr", "flush", "dev", "vc0")
	ip(t, "-n", clientNS, "addr", "add", client, "dev", "vc0")
	defer ip(t, "-n", clientNS, "addr", "flush", "dev", "vc0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := inNS(ctx, clientNS, "curl", "-sS", "--max-time", "50", "tftp://"+server+"/"+UndiLoader).Output()
	if err != nil {
		t.Fatalf("curl tftp://%s/%s: %v", server, UndiLoader, err)
	}
	want, err := os.ReadFile(filepath.Join(bootDir, UndiLoader))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, want) {
		t.Errorf("TFTP %s = %d bytes, want the %d of %s", UndiLoader, len(out), len(want), filepath.Join(bootDir, UndiLoader))
	}
}

// bootVM boots QEMU from the network in ns on tap and returns how long it
// took the tiny VM's init to greet on the serial console. A BIOS VM boots
// with SeaBIOS and QEMU's iPXE option ROM, a PXE ROM that is iPXE already;
// a UEFI VM with OVMF and no option ROM, so that OVMF's own virtio-net
// driver and PXE client boot it, as a real UEFI kiosk's firmware would,
// and iPXE is chainloaded.
func bootVM(t *testing.T, ns, tap, mac string, uefi bool, timeout time.Duration) time.Duration {
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	nic := "virtio-net-pci,netdev=net0,mac=" + mac + ",bootindex=1"
	if uefi {
		nic += ",romfile="
	}
	args := []string{"-machine", "q35", "-m", "512", "-display", "none", "-serial", "file:" + serial,
		"-boot", "n", "-no-reboot",
		"-netdev", "tap,id=net0,ifname=" + tap + ",script=no,downscript=no", "-device", nic}
	if uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		if err := copyFile("/usr/share/OVMF/OVMF_VARS.fd", vars); err != nil {
			t.Fatal(err)
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
			"-drive", "if=pflash,format=raw,file="+vars)
	}
	began := time.Now()
	vm := start(t, "qemu", inNS(context.Background(), ns, "qemu-system-x86_64", args...))
	const banner = "Welcome to u-root!"
	for {
		b, _ := os.ReadFile(serial)
		if bytes.Contains(b, []byte(banner)) {
			took := time.Since(began)
			vm.cmd.Process.Kill()
			return took
		}
		select {
		case err := <-vm.done:
			vm.done <- err
			t.Fatalf("QEMU exited (%v) before the banner; serial console:\n%s", err, tail(b, 3000))
		case <-time.After(250 * time.Millisecond):
		}
		if time.Since(began) > timeout {
			t.Fatalf("no %q on the serial console within %s; serial console:\n%s", banner, timeout, tail(b, 3000))
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// bootBoth boots a BIOS and a UEFI VM at once, on tap0 and tap1, and
// checks in undervdi-pxe's log that the UEFI firmware was sent iPXE by
// TFTP and that both fetched the kernel and initramfs over HTTP.
func bootBoth(t *testing.T, ns string, pxe *daemon, bootDir string) {
	var mu sync.Mutex
	booted := 0
	t.Run("boot", func(t *testing.T) {
		for i, uefi := range []bool{false, true} {
			name := map[bool]string{false: "bios", true: "uefi"}[uefi]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				mac := fmt.Sprintf("52:54:00:00:0b:%02x", i)
				took := bootVM(t, ns, fmt.Sprintf("tap%d", i), mac, uefi, 4*time.Minute)
				t.Logf("%s: PXE boot to the u-root banner in %.1f s", name, took.Seconds())
				mu.Lock()
				booted++
				mu.Unlock()
			})
		}
	})
	if booted < 2 {
		return // filtered out, or failed
	}
	log := pxe.out.String()
	if want := "sent " + filepath.Join(bootDir, EFILoader) + " to "; !strings.Contains(log, want) {
		t.Errorf("undervdi-pxe's log lacks %q: the UEFI VM did not chainload iPXE", want)
	}
	for _, file := range []string{bootlayout.IPXEScript, bootlayout.Kernel, bootlayout.Initramfs} {
		gets := 0
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "msg=http ") && strings.Contains(l, " method=GET path=/"+file+" ") && strings.Contains(l, " status=200 ") {
				gets++
			}
		}
		if gets < 2 {
			t.Errorf("undervdi-pxe's log shows %d GETs of %s, want one per VM", gets, file)
		}
	}
}

func TestIsolated(t *testing.T) {
	bootDir, _ := setup(t)
	ns, clientNS := kioskNet(t, "169.254.24.1/24", 2)
	const (
		kioskMAC  = "52:54:00:12:34:56"
		kioskAddr = "169.254.24.11" // reserved: its settings carry a token
		site      = `undervdi.server=169.254.24.1 motd="Hello, \"world\" # 1\2"`
		kiosk     = "undervdi.kiosk=lobby-1 undervdi.token=s3cret"
	)
	pxe := startPXE(t, ns, "-interface", "br0", "-boot-dir", bootDir, "-settings", site, "-kiosk", kioskMAC+","+kioskAddr+"="+kiosk)

	t.Run("tftp", func(t *testing.T) { checkTFTP(t, clientNS, "169.254.24.50/24", "169.254.24.1", bootDir) })

	t.Run("dhcp", func(t *testing.T) {
		for _, tc := range []struct {
			kind string
			mac  string
			want probeResult
		}{
			{"kiosk", kioskMAC, probeResult{Addr: kioskAddr, Settings: site + " " + kiosk, HasSettings: true}},
			{"kiosk", "52:54:00:12:34:99", probeResult{Settings: site, HasSettings: true}},
			{"bios", "52:54:00:00:00:01", probeResult{File: UndiLoader, NextServer: "169.254.24.1"}},
			{"uefi", "52:54:00:00:00:02", probeResult{File: EFILoader, NextServer: "169.254.24.1"}},
			{"ipxe", "52:54:00:00:00:03", probeResult{File: "http://169.254.24.1:5910/boot.ipxe", NextServer: "169.254.24.1"}},
		} {
			t.Run(tc.kind+" "+tc.mac, func(t *testing.T) {
				got := probe(t, clientNS, probeRequest{Kind: tc.kind, MAC: tc.mac})
				if tc.kind == "kiosk" && tc.want.Addr == "" {
					// Not reserved: an address from the dynamic range.
					if !strings.HasPrefix(got.Addr, "169.254.24.") || got.Addr == kioskAddr {
						t.Errorf("kiosk address = %q, want one of the range in 169.254.24.0/24", got.Addr)
					}
					got.Addr = ""
				}
				if got != tc.want {
					t.Errorf("DHCP as %s %s = %+v, want %+v", tc.kind, tc.mac, got, tc.want)
				}
			})
		}
	})

	bootBoth(t, ns, pxe, bootDir)
	pxe.stop(t, ns)
}

func TestProxy(t *testing.T) {
	bootDir, _ := setup(t)
	ns, clientNS := kioskNet(t, "192.168.77.2/24", 2)

	// The site's own DHCP server, a plain dnsmasq, in a namespace of its
	// own joined to the kiosk network's bridge. It offers at once
	// (--no-ping: dnsmasq otherwise pings an address for seconds before
	// offering it, and the probes' clients are the only ones here).
	siteNS := join(t, ns, "uvsite-", "vs0", "site0")
	ip(t, "-n", siteNS, "addr", "add", "192.168.77.1/24", "dev", "site0")
	ip(t, "-n", siteNS, "link", "set", "site0", "up")
	leases := filepath.Join(t.TempDir(), "site.leases")
	site := start(t, "site dnsmasq", inNS(context.Background(), siteNS, "dnsmasq", "--keep-in-foreground",
		"--conf-file=/dev/null", "--port=0", "--interface=site0", "--bind-interfaces", "--pid-file=",
		"--dhcp-range=192.168.77.100,192.168.77.199,255.255.255.0,1h", "--dhcp-leasefile="+leases, "--no-ping",
		"--log-facility=-", "--log-dhcp"))
	site.waitFor(t, 10*time.Second, "DHCP, IP range")

	pxe := startPXE(t, ns, "-mode", "proxy", "-interface", "br0", "-boot-dir", bootDir,
		"-subnet", "192.168.77.0/24", "-server", "192.168.77.2")

	t.Run("tftp", func(t *testing.T) { checkTFTP(t, clientNS, "192.168.77.50/24", "192.168.77.2", bootDir) })

	t.Run("dhcp", func(t *testing.T) {
		for i, tc := range []struct {
			kind string
			want probeResult
		}{
			// PXE firmware learns the boot file on port 4011: a BIOS ROM
			// after a boot menu of one entry (whose basename, having a
			// dot, gets no ".0"), UEFI firmware directly.
			{"bios", probeResult{File: UndiLoader, NextServer: "192.168.77.2", Via4011: true}},
			{"uefi", probeResult{File: EFILoader, NextServer: "192.168.77.2", Via4011: true}},
			{"ipxe", probeResult{File: "http://192.168.77.2:5910/boot.ipxe", NextServer: "192.168.77.2"}},
			// A client that is not PXE (kioskd) hears only the site.
			{"plain", probeResult{ProxySilent: true}},
		} {
			t.Run(tc.kind, func(t *testing.T) {
				got := probe(t, clientNS, probeRequest{Kind: tc.kind, MAC: fmt.Sprintf("52:54:00:00:01:%02x", i), Proxy: "192.168.77.2"})
				if got.Addr == "" || !strings.HasPrefix(got.Addr, "192.168.77.1") {
					t.Errorf("the site's DHCP server gave %q, want an address from its range", got.Addr)
				}
				got.Addr = ""
				if got != tc.want {
					t.Errorf("DHCP as %s = %+v, want %+v", tc.kind, got, tc.want)
				}
			})
		}
	})

	bootBoth(t, ns, pxe, bootDir)
	pxe.stop(t, ns)
}

// probeRequest tells the probe whom to play.
type probeRequest struct {
	// Kind: "kiosk" (a plain client asking for option 224, as kioskd
	// would), "bios" (a BIOS PXE ROM), "uefi" (x86-64 UEFI PXE), "ipxe"
	// (iPXE that can fetch HTTP), "plain" (a client that is not PXE).
	Kind  string
	MAC   string
	Proxy string // proxy mode: our server's address; the site hands out addresses
}

// probeResult is what the probe learnt.
type probeResult struct {
	Addr        string // the address leased (kiosk; proxy mode: from the site)
	Settings    string // option 224
	HasSettings bool
	File        string // the boot file
	NextServer  string // siaddr with the boot file
	Via4011     bool   // the boot file came from port 4011
	ProxySilent bool   // proxy mode: our server did not answer
}

// probe runs the probe in the client namespace ns on vc0, given the MAC
// address.
func probe(t *testing.T, ns string, req probeRequest) probeResult {
	t.Helper()
	ip(t, "-n", ns, "addr", "flush", "dev", "vc0")
	ip(t, "-n", ns, "link", "set", "vc0", "address", req.MAC)
	enc, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := inNS(ctx, ns, self, "-test.run=^$")
	cmd.Env = append(os.Environ(), probeEnv+"="+string(enc))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe %+v: %v\n%s", req, err, stderr.String())
	}
	var res struct {
		probeResult
		Error string
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("probe %+v: %v: %s", req, err, out)
	}
	if res.Error != "" {
		t.Fatalf("probe %+v: %s\n%s", req, res.Error, stderr.String())
	}
	return res.probeResult
}

// probeMain is the probe: in the client namespace, on vc0, it plays the client
// described by the JSON request and prints a JSON probeResult.
func probeMain(reqJSON string) int {
	var req probeRequest
	if err := json.Unmarshal([]byte(reqJSON), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	res, err := runProbe(req, log)
	out := struct {
		probeResult
		Error string
	}{probeResult: res}
	if err != nil {
		out.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

const (
	optPXEMenu     = 9  // PXE vendor sub-options (in option 43)
	optPXEBootItem = 71 //
)

// firmware returns the options a client of kind sends.
func firmware(kind string) []dhcpv4.Modifier {
	arch := map[string]uint16{"bios": 0, "uefi": 7, "ipxe": 0}
	a, ok := arch[kind]
	if !ok {
		return nil
	}
	m := []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:002001", a))),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{byte(a >> 8), byte(a)}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionVendorSpecificInformation, dhcpv4.OptionClassIdentifier,
			dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName),
	}
	if kind == "ipxe" {
		// iPXE's own options: its features in option 175 (19: HTTP, 17:
		// PXE extensions, 235: version) and user class "iPXE".
		m = append(m,
			dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(175), []byte{17, 1, 1, 19, 1, 1, 235, 3, 1, 0, 0}),
			dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	}
	return m
}

func runProbe(req probeRequest, log *slog.Logger) (probeResult, error) {
	var res probeResult
	hw, err := net.ParseMAC(req.MAC)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	// Retries double the timeout: 2, 4, 8 and 16 s, at most.
	c, err := nclient4.New("vc0", nclient4.WithHWAddr(hw), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4))
	if err != nil {
		return res, err
	}
	defer c.Close()
	mods := firmware(req.Kind)

	if req.Proxy == "" {
		if req.Kind == "kiosk" {
			lease, err := c.Request(ctx, dhcpv4.WithRequestedOptions(dhcpv4.GenericOptionCode(bootlayout.DHCPOption)))
			if err != nil {
				return res, err
			}
			res.Addr = lease.ACK.YourIPAddr.String()
			v := lease.ACK.Options.Get(dhcpv4.GenericOptionCode(bootlayout.DHCPOption))
			res.Settings, res.HasSettings = string(v), v != nil
			return res, nil
		}
		offer, err := c.DiscoverOffer(ctx, mods...)
		if err != nil {
			return res, err
		}
		res.File, res.NextServer = offer.BootFileName, offer.ServerIPAddr.String()
		return res, nil
	}

	// Proxy mode: listen to both servers' answers to one DISCOVER.
	proxy := net.ParseIP(req.Proxy).To4()
	discover, err := dhcpv4.NewDiscovery(hw, append(mods, dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)))...)
	if err != nil {
		return res, err
	}
	var mu sync.Mutex
	var siteOffer, proxyOffer *dhcpv4.DHCPv4
	listen, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	_, err = c.SendAndRead(listen, nclient4.DefaultServers, discover, func(m *dhcpv4.DHCPv4) bool {
		mu.Lock()
		defer mu.Unlock()
		if m.MessageType() != dhcpv4.MessageTypeOffer {
			return false
		}
		if m.ServerIdentifier().Equal(proxy) {
			proxyOffer = m
		} else if siteOffer == nil {
			siteOffer = m
		}
		// Both heard: done. A proxy that stays silent is heard out until
		// the deadline.
		return siteOffer != nil && proxyOffer != nil
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return res, fmt.Errorf("listening for offers: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if siteOffer == nil {
		return res, errors.New("no offer from the site's DHCP server")
	}
	lease, err := c.RequestFromOffer(ctx, siteOffer, mods...)
	if err != nil {
		return res, fmt.Errorf("leasing from the site: %w", err)
	}
	res.Addr = lease.ACK.YourIPAddr.String()
	if proxyOffer == nil {
		res.ProxySilent = true
		return res, nil
	}
	log.Info("proxy offer", "offer", proxyOffer.Summary())
	if proxyOffer.YourIPAddr != nil && !proxyOffer.YourIPAddr.IsUnspecified() {
		return res, fmt.Errorf("the proxy offered an address, %s", proxyOffer.YourIPAddr)
	}
	res.File, res.NextServer = proxyOffer.BootFileName, proxyOffer.ServerIPAddr.String()
	if res.File != "" {
		return res, nil // iPXE, or firmware told the file at once
	}

	// As PXE firmware does, ask the proxy on port 4011 from the leased
	// address; a BIOS ROM names the boot menu's item it chose.
	c.Close()
	if out, err := exec.Command("ip", "addr", "add", res.Addr+"/24", "dev", "vc0").CombinedOutput(); err != nil {
		return res, fmt.Errorf("ip addr add: %v: %s", err, out)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: lease.ACK.YourIPAddr, Port: 68})
	if err != nil {
		return res, err
	}
	uc, err := nclient4.NewWithConn(conn, hw, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4))
	if err != nil {
		return res, err
	}
	defer uc.Close()
	reqMods := append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(lease.ACK.YourIPAddr), dhcpv4.WithBroadcast(false))
	if req.Kind == "bios" {
		item, err := firstMenuItem(proxyOffer.Options.Get(dhcpv4.OptionVendorSpecificInformation))
		if err != nil {
			return res, err
		}
		log.Info("boot menu", "item", item)
		reqMods = append(reqMods, dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation,
			[]byte{optPXEBootItem, 4, byte(item >> 8), byte(item), 0, 0, 255}))
	}
	request, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(hw)}, reqMods...)...)
	if err != nil {
		return res, err
	}
	ack, err := uc.SendAndRead(ctx, &net.UDPAddr{IP: proxy, Port: 4011}, request, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
	if err != nil {
		return res, fmt.Errorf("asking the proxy on port 4011: %w", err)
	}
	log.Info("proxy ack", "ack", ack.Summary())
	res.File, res.NextServer, res.Via4011 = ack.BootFileName, ack.ServerIPAddr.String(), true
	return res, nil
}

// firstMenuItem returns the boot server type of the first item of the PXE
// boot menu in option 43.
func firstMenuItem(opt43 []byte) (uint16, error) {
	for len(opt43) >= 2 && opt43[0] != 255 {
		code, n := opt43[0], int(opt43[1])
		if len(opt43) < 2+n {
			break
		}
		if code == optPXEMenu && n >= 3 {
			return uint16(opt43[2])<<8 | uint16(opt43[3]), nil
		}
		opt43 = opt43[2+n:]
	}
	return 0, fmt.Errorf("no PXE boot menu in option 43 % x", opt43)
}

// TestKioskBootsFromNetwork boots the real kiosk image from the network:
// image-build writes the network-boot directory (the kernel, the
// initramfs, boot.ipxe and the iPXE loaders), undervdi-pxe serves it on an
// isolated kiosk network with site-wide and per-kiosk settings, and a
// SeaBIOS VM boots it through QEMU's iPXE ROM. kioskd must reach the
// slideshow with X running, having taken its settings from DHCP.
//
// image-build runs as its command: package imagebuild imports this package
// (for the iPXE script and loaders), so this test cannot import it.
func TestKioskBootsFromNetwork(t *testing.T) {
	setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	kimg, err := (&initramfs.Builder{CacheDir: filepath.Join(testbed.CacheDir(), "kiosk")}).Build(ctx)
	if err != nil {
		t.Fatalf("building the kiosk image: %v", err)
	}

	// dnsmasq's TFTP server drops root: the boot directory must be open,
	// and t.TempDir's directories are not.
	out, err := os.MkdirTemp("", "pxe-kiosk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(out) })
	if err := os.Chmod(out, 0o755); err != nil {
		t.Fatal(err)
	}
	tool := filepath.Join(t.TempDir(), "image-build")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", tool, "undervdi/image-build/cmd/image-build").CombinedOutput(); err != nil {
		t.Fatalf("go build image-build: %v: %s", err, b)
	}
	build := exec.CommandContext(ctx, tool, "-kernel", kimg.Kernel, "-initramfs", kimg.Initramfs,
		"-cmdline", "console=ttyS0 panic=-1", "-epoch", "1700000000",
		"-cache", filepath.Join(testbed.CacheDir(), "image-build"), "-out", out)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("image-build: %v: %s", err, b)
	}
	bootDir := filepath.Join(out, "pxe")
	if err := CheckBootDir(bootDir, true); err != nil {
		t.Fatalf("image-build's network-boot directory: %v", err)
	}

	ns, _ := kioskNet(t, "169.254.24.1/24", 1)
	const (
		kioskMAC = "52:54:00:12:34:56" // kioskvm's
		site     = "undervdi.server=169.254.24.1 undervdi.port=1 undervdi.ads_url=off"
		kiosk    = "undervdi.kiosk=lobby-pxe undervdi.token=t"
	)
	pxe := startPXE(t, ns, "-interface", "br0", "-boot-dir", bootDir, "-settings", site, "-kiosk", kioskMAC+",169.254.24.11="+kiosk)

	dir := t.TempDir()
	began := time.Now()
	vm, err := kioskvm.Start(kioskvm.Options{
		NetBoot: true,
		Net:     "tap,id=net0,ifname=tap0,script=no,downscript=no",
		Prefix:  []string{"ip", "netns", "exec", ns},
		Dir:     dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.Stop)
	line, err := vm.WaitFor(ctx, "slideshow shown", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(line)
	_, uptime, _ := strings.Cut(line, "uptime=")
	uptime, _, _ = strings.Cut(uptime, " ")
	t.Logf("network boot to the slideshow: %.1f s from QEMU's start, kernel uptime %s", time.Since(began).Seconds(), uptime)

	if _, err := vm.WaitFor(ctx, "BOOTIF=01-52-54-00-12-34-56", time.Second); err != nil {
		t.Errorf("the kernel command line lacks BOOTIF from boot.ipxe: %v", err)
	}
	if line, err := vm.WaitFor(ctx, "network up", time.Second); err != nil {
		t.Error(err)
	} else {
		t.Log(line)
		if !strings.Contains(line, " settings=true") {
			t.Errorf("the kiosk's DHCP lease carried no settings")
		}
	}
	// The kernel command line holds no undervdi.<key>=<value> word here, so
	// the settings come from the image and DHCP only.
	if line, err := vm.WaitFor(ctx, "kiosk settings", time.Second); err != nil {
		t.Error(err)
	} else {
		t.Log(line)
		for _, want := range []string{"server=169.254.24.1", "kiosk=lobby-pxe", `from="image, DHCP"`} {
			if !strings.Contains(line, want) {
				t.Errorf("kiosk settings line lacks %q", want)
			}
		}
	}
	if err := vm.WaitScreen(dir, 30*time.Second, kioskvm.ShowsSlideshow); err != nil {
		t.Errorf("the slideshow is not showing: %v", err)
	}
	for _, bad := range []string{"Kernel panic", "cannot start the X server"} {
		if strings.Contains(vm.Tail(300), bad) {
			t.Errorf("console shows %q:\n%s", bad, vm.Tail(40))
		}
	}
	vm.Stop()

	// The kiosk fetched its boot files from undervdi-pxe over HTTP.
	log := strings.Split(pxe.out.String(), "\n")
	for _, file := range []string{bootlayout.IPXEScript, bootlayout.Kernel, bootlayout.Initramfs} {
		if !slices.ContainsFunc(log, func(l string) bool {
			return strings.Contains(l, "msg=http ") && strings.Contains(l, " method=GET path=/"+file+" ") && strings.Contains(l, " status=200 ")
		}) {
			t.Errorf("undervdi-pxe's log shows no successful GET of %s", file)
		}
	}
	pxe.stop(t, ns)
}

// TestServerInstall serves a server install beside the kiosks' network
// boot, in a network namespace, through real dnsmasq: the machine named
// (-install-mac) is sent the install script, boots the installer's kernel
// and initrd from it over HTTP (stand-ins: the tiny VM's, which greet on
// the serial console; no EL9 installer is at hand, so its fetching of the
// kickstart is not exercised — the test fetches the URL the script hands
// it, from the client's side, instead), and the kickstart and the files
// %post fetches are served; another machine still boots the kiosk image.
func TestServerInstall(t *testing.T) {
	bootDir, _ := setup(t)
	ns, clientNS := kioskNet(t, "169.254.24.1/24", 2)
	install := t.TempDir()
	os.Chmod(install, 0o755)
	ks, err := os.ReadFile("../kickstart/examples/bridge-pxe.ks.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for dst, src := range map[string]string{InstallKernel: bootlayout.Kernel, InstallInitrd: bootlayout.Initramfs} {
		if err := copyFile(filepath.Join(bootDir, src), filepath.Join(install, dst)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(install, InstallKickstart), ks, 0o644)
	os.MkdirAll(filepath.Join(install, InstallFiles, "pxe"), 0o755)
	os.WriteFile(filepath.Join(install, InstallFiles, "vdi-broker"), []byte("the broker's binary"), 0o755)
	os.WriteFile(filepath.Join(install, InstallFiles, "pxe", "boot.ipxe"), []byte("#!ipxe\n"), 0o644)

	const serverMAC, kioskMAC = "52:54:00:00:0c:01", "52:54:00:00:0c:02"
	pxe := startPXE(t, ns, "-interface", "br0", "-boot-dir", bootDir, "-settings", "undervdi.server=169.254.24.1",
		"-install", install, "-install-mac", serverMAC, "-install-cmdline", "console=ttyS0")

	t.Run("dhcp", func(t *testing.T) {
		for mac, want := range map[string]string{serverMAC: "http://169.254.24.1:5910/install.ipxe", kioskMAC: "http://169.254.24.1:5910/boot.ipxe"} {
			if got := probe(t, clientNS, probeRequest{Kind: "ipxe", MAC: mac}); got.File != want {
				t.Errorf("iPXE %s is sent %q, want %q", mac, got.File, want)
			}
		}
	})

	t.Run("files", func(t *testing.T) {
		ip(t, "-n", clientNS, "addr", "flush", "dev", "vc0")
		ip(t, "-n", clientNS, "addr", "add", "169.254.24.60/24", "dev", "vc0")
		defer ip(t, "-n", clientNS, "addr", "flush", "dev", "vc0")
		get := func(url string) []byte {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := inNS(ctx, clientNS, "curl", "-fsS", url).Output()
			if err != nil {
				t.Fatalf("curl %s: %v", url, err)
			}
			return out
		}
		script := string(get("http://169.254.24.1:5910/install.ipxe"))
		_, rest, ok := strings.Cut(script, "inst.ks=")
		if !ok {
			t.Fatalf("install.ipxe has no inst.ks:\n%s", script)
		}
		ksURL := strings.Fields(rest)[0]
		if got := get(ksURL); !bytes.Equal(got, ks) {
			t.Errorf("the kickstart at %s is %d bytes, want the %d of ks.cfg", ksURL, len(got), len(ks))
		}
		if got := string(get("http://169.254.24.1:5910/undervdi/vdi-broker")); got != "the broker's binary" {
			t.Errorf("%%post's vdi-broker: %q", got)
		}
		if got := string(get("http://169.254.24.1:5910/undervdi/pxe/boot.ipxe")); got != "#!ipxe\n" {
			t.Errorf("%%post's pxe/boot.ipxe: %q", got)
		}
	})

	t.Run("boot", func(t *testing.T) {
		for i, mac := range []string{serverMAC, kioskMAC} {
			t.Run(mac, func(t *testing.T) {
				t.Parallel()
				took := bootVM(t, ns, fmt.Sprintf("tap%d", i), mac, false, 4*time.Minute)
				t.Logf("%s: PXE boot to the stand-in's banner in %.1f s", mac, took.Seconds())
			})
		}
	})
	log := pxe.out.String()
	count := func(path string) int {
		n := 0
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "msg=http ") && strings.Contains(l, " method=GET path="+path+" ") && strings.Contains(l, " status=200 ") {
				n++
			}
		}
		return n
	}
	for path, want := range map[string]int{"/install.ipxe": 1, "/install/vmlinuz": 1, "/install/initrd.img": 1, "/" + bootlayout.IPXEScript: 1,
		"/" + bootlayout.Kernel: 1} {
		if got := count(path); got < want {
			t.Errorf("undervdi-pxe's log shows %d GETs of %s, want %d", got, path, want)
		}
	}
	pxe.stop(t, ns)
}
