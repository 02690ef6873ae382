// Package testbed sets up real libvirt fixtures for integration tests and the
// demo: the tiny golden VM under a unique name prefix, an overlay directory,
// and a cleanup that removes every domain, volume, storage pool and file
// carrying the prefix, even when the test fails.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/hostsetup"
	"undervdi/internal/testlog"
	"undervdi/server/config"
	"undervdi/tinyvm"
)

// URI is the libvirt the tests use.
const URI = "qemu:///system"

// CacheDir holds downloaded packages and built images between runs.
func CacheDir() string {
	if d := os.Getenv("UNDERVDI_CACHE"); d != "" {
		return d
	}
	return "/var/cache/undervdi"
}

// Bed is one test's fixtures.
type Bed struct {
	Prefix     string // unique; also the broker's pool name
	Root       string // directory for the test's files
	OverlayDir string
	VersionDir string
	L          *libvirt.Libvirt
	Art        *tinyvm.Artifacts
	Golden     *tinyvm.Golden
	Log        *slog.Logger
	// Subnet is the guest network the bed's broker config gets: a /24
	// of 10.214.0.0/16 no other bed on the machine holds.
	Subnet     string
	subnetLock string
}

// supervise starts, once per test binary, the stand-in for systemd's
// restart of a crashed libvirtd.
var supervise sync.Once

// Connect opens a libvirt connection for test code.
func Connect() (*libvirt.Libvirt, error) {
	u, _ := url.Parse(URI)
	return libvirt.ConnectToURI(u)
}

// New builds (or reuses) the tiny VM image and defines a golden VM with a
// fresh prefix. Everything is removed when t ends.
func New(t testing.TB) *Bed {
	t.Helper()
	supervise.Do(func() {
		go hostsetup.SuperviseLibvirtd(context.Background(), func(msg string) { fmt.Fprintln(os.Stderr, "testbed:", msg) })
	})
	b, err := Setup(context.Background(), "it", testLogger(t))
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("testbed cleanup: %v", err)
		}
	})
	return b
}

// Setup is New for non-test callers (the demo). namePrefix starts the prefix.
func Setup(ctx context.Context, namePrefix string, log *slog.Logger) (*Bed, error) {
	rnd := make([]byte, 3)
	rand.Read(rnd)
	prefix := namePrefix + hex.EncodeToString(rnd)
	root := filepath.Join("/var/lib/undervdi-test", prefix)
	art, err := (&tinyvm.Builder{CacheDir: filepath.Join(CacheDir(), "tinyvm"), Log: log}).Build(ctx)
	if err != nil {
		return nil, err
	}
	l, err := Connect()
	if err != nil {
		return nil, fmt.Errorf("connecting to libvirt (is libvirtd running?): %w", err)
	}
	b := &Bed{Prefix: prefix, Root: root, OverlayDir: filepath.Join(root, "overlays"), VersionDir: filepath.Join(root, "versions"),
		L: l, Art: art, Log: log}
	if b.Subnet, b.subnetLock, err = claimSubnet(prefix); err != nil {
		l.Disconnect()
		return nil, err
	}
	g, err := tinyvm.Define(l, prefix+"-golden", filepath.Join(root, "golden"), art, 160, tinyvm.DiskSize)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Golden = g
	return b, nil
}

// Config returns a broker configuration for this bed.
func (b *Bed) Config(poolSize int) *config.Config {
	c := config.Default()
	c.Golden = b.Golden.Name
	c.PoolName = b.Prefix
	c.PoolSize = poolSize
	c.MaxVMs = poolSize + 4
	c.OverlayDir = b.OverlayDir
	c.VersionDir = b.VersionDir
	c.MemoryReserve = 512 << 20
	c.ReadyTimeout = config.Duration(3 * time.Minute)
	c.AdminSocket = filepath.Join(b.Root, "admin.sock")
	c.StateDir = filepath.Join(b.Root, "broker") // the site CA the kiosk protocol's TLS uses
	c.ReconcileInterval = config.Duration(20 * time.Second)
	c.LogLevel = "debug"
	c.Ads.Dir = filepath.Join(b.Root, "ads")
	c.Ads.Listen = ""     // tests that want the ads open a port
	c.Metrics.Listen = "" // and the metrics
	c.API.Listen = ""     // and the HTTPS API
	c.API.Accounts = filepath.Join(b.Root, "accounts.json")
	c.Network.Subnet = b.Subnet
	// LUKS overlays (the default) cost about five seconds of a core per
	// clone under emulation (qemu-img's and QEMU's key derivations); the
	// tests that prove the crypto-erase, and the demo, turn them on.
	c.EncryptDisks = false
	return c
}

// subnetDir holds one file per claimed guest subnet, naming its bed.
const subnetDir = "/var/lib/undervdi-test/.subnets"

// claimSubnet claims a 10.214.X.0/24 for prefix: one no bed of a running
// test holds (a file of its own in subnetDir) and no interface of the
// machine is on. A claim whose bed is gone for an hour is stale.
func claimSubnet(prefix string) (subnet, lock string, err error) {
	if err := os.MkdirAll(subnetDir, 0o755); err != nil {
		return "", "", err
	}
	addrs, _ := net.InterfaceAddrs()
	inUse := func(x int) bool {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.To4()[0] == 10 && n.IP.To4()[1] == 214 && int(n.IP.To4()[2]) == x {
				return true
			}
		}
		return false
	}
	for x := 1; x < 255; x++ {
		if inUse(x) {
			continue
		}
		lock = filepath.Join(subnetDir, strconv.Itoa(x))
		f, err := os.OpenFile(lock, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if errors.Is(err, os.ErrExist) {
			owner, _ := os.ReadFile(lock)
			fi, serr := os.Stat(lock)
			if _, gone := os.Stat(filepath.Join("/var/lib/undervdi-test", string(owner))); errors.Is(gone, os.ErrNotExist) &&
				serr == nil && time.Since(fi.ModTime()) > time.Hour {
				os.Remove(lock)
				x--
			}
			continue
		}
		if err != nil {
			return "", "", err
		}
		f.WriteString(prefix)
		f.Close()
		return fmt.Sprintf("10.214.%d.0/24", x), lock, nil
	}
	return "", "", errors.New("testbed: every 10.214.X.0/24 guest subnet is claimed")
}

// Close removes everything carrying the prefix: clone domains, the golden,
// overlays, storage pools, files. It reconnects if libvirt was restarted,
// and starts over once if libvirtd went away while it removed (Debian's
// libvirtd 9.0 crashes now and then under these tests; the supervisor
// starts it again, as systemd would).
func (b *Bed) Close() error {
	if b.subnetLock != "" {
		defer os.Remove(b.subnetLock)
	}
	lost, err := b.remove(b.L)
	if err != nil && lost {
		var again *libvirt.Libvirt
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			if again, err = Connect(); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("libvirtd went away during the cleanup and did not come back: %w", err)
		}
		_, err = b.remove(again)
	}
	if rmErr := os.RemoveAll(b.Root); rmErr != nil {
		err = errors.Join(err, rmErr)
	}
	return err
}

// remove removes the bed's libvirt objects through l, or a new connection
// if l is closed, and closes the connection it used; lost says whether
// that connection was lost before the end.
func (b *Bed) remove(l *libvirt.Libvirt) (lost bool, err error) {
	if !l.IsConnected() {
		if l, err = Connect(); err != nil {
			return true, err
		}
	}
	defer func() {
		lost = !l.IsConnected()
		l.Disconnect()
	}()
	var errs []string
	doms, _, err := l.ConnectListAllDomains(1, 0)
	if err != nil {
		errs = append(errs, err.Error())
	}
	for _, d := range doms {
		if strings.HasPrefix(d.Name, b.Prefix+"-") {
			l.DomainDestroy(d)
			if err := l.DomainUndefineFlags(d, libvirt.DomainUndefineNvram|libvirt.DomainUndefineManagedSave); err != nil && !libvirt.IsNotFound(err) {
				errs = append(errs, err.Error())
			}
		}
	}
	if b.Golden != nil {
		if err := b.Golden.Remove(l); err != nil {
			errs = append(errs, err.Error())
		}
	}
	pools, _, _ := l.ConnectListAllStoragePools(1, 0)
	for _, p := range pools {
		if strings.HasPrefix(p.Name, b.Prefix+"-") {
			l.StoragePoolDestroy(p)
			l.StoragePoolUndefine(p)
		}
	}
	for _, k := range b.keys(l) {
		l.SecretUndefine(k)
	}
	if nets, _, err := l.ConnectListAllNetworks(1, 0); err == nil {
		for _, n := range nets {
			if strings.HasPrefix(n.Name, b.Prefix+"-") {
				l.NetworkDestroy(n)
				l.NetworkUndefine(n)
			}
		}
	}
	// Filters after the domains that used them, the root filter before the
	// chain it references.
	if filters, _, err := l.ConnectListAllNwfilters(1, 0); err == nil {
		slices.SortFunc(filters, func(a, b libvirt.Nwfilter) int { return len(a.Name) - len(b.Name) })
		for _, f := range filters {
			if strings.HasPrefix(f.Name, b.Prefix+"-") {
				if err := l.NwfilterUndefine(f); err != nil {
					errs = append(errs, err.Error())
				}
			}
		}
	}
	if len(errs) > 0 {
		return false, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return false, nil
}

// IsClone reports whether a domain name is one of the bed's pool's clones
// (<prefix>-<8 hex>), not its golden or a published version's template.
func (b *Bed) IsClone(name string) bool {
	rest, ok := strings.CutPrefix(name, b.Prefix+"-")
	if !ok || len(rest) != 8 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// keys returns the libvirt secrets of volumes under the bed's root: the
// keys of encrypted overlays.
func (b *Bed) keys(l *libvirt.Libvirt) []libvirt.Secret {
	secrets, _, _ := l.ConnectListAllSecrets(1, 0)
	var out []libvirt.Secret
	for _, s := range secrets {
		if s.UsageType == int32(libvirt.SecretUsageTypeVolume) && strings.HasPrefix(s.UsageID, b.Root+"/") {
			out = append(out, s)
		}
	}
	return out
}

// Leftovers lists the clone domains and overlay files of the bed's pool,
// and the overlay keys ("key:" and the volume's path) libvirt still holds:
// what a crash could leak.
func (b *Bed) Leftovers(l *libvirt.Libvirt) (domains []string, overlays []string, err error) {
	doms, _, err := l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range doms {
		if b.IsClone(d.Name) {
			domains = append(domains, d.Name)
		}
	}
	overlays, _ = filepath.Glob(filepath.Join(b.OverlayDir, "*"))
	for _, k := range b.keys(l) {
		overlays = append(overlays, "key:"+k.UsageID)
	}
	return domains, overlays, nil
}

// GrowGolden makes the golden's disk virtual bytes big with the first
// written bytes written (a pattern, not zeros), for tests and benchmarks of
// copies whose time depends on what a disk holds. qemu-img and qemu-io make
// this fixture; the broker itself only ever goes through libvirt.
func (b *Bed) GrowGolden(virtual, written uint64) error {
	write := []string{"qemu-io"}
	for off := uint64(0); off < written; off += 1 << 30 { // qemu-io writes at most 2 GiB at once
		write = append(write, "-c", fmt.Sprintf("write -P 0x5a %d %d", off, min(1<<30, written-off)))
	}
	for _, args := range [][]string{
		{"qemu-img", "resize", b.Golden.DiskPath, fmt.Sprint(virtual)},
		append(write, b.Golden.DiskPath),
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %v: %s", args, err, out)
		}
	}
	return nil
}

func testLogger(testing.TB) *slog.Logger { return testlog.Logger() }

// PoweredOff reports whether err, from a guest-shutdown agent command, only
// says that the guest went away before its agent could answer: that is what
// a power-off looks like from outside, and libvirt words it several ways.
func PoweredOff(err error) bool {
	if err == nil {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "disappeared") || strings.Contains(msg, "End of file from agent") ||
		strings.Contains(msg, "domain is not running") || strings.Contains(msg, "not connected")
}
