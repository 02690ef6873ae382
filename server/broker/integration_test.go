//go:build integration

package broker_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/server/pool"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/brokertest"
	"undervdi/internal/netns"
	"undervdi/internal/testbed"
	"undervdi/internal/xvfb"
	"undervdi/kioskd/viewer"
	"undervdi/kioskproto"
	"undervdi/server/broker"
	"undervdi/server/config"
	"undervdi/server/session"
	"undervdi/server/spice"
)

const kioskToken = brokertest.Token

// e2e is one broker on real libvirt with its ports.
type e2e struct {
	t       *testing.T
	bed     *testbed.Bed
	b       *broker.Broker
	cfg     *config.Config
	gwPort  int
	kiosk   string // kiosk protocol address
	x       *xvfb.Server
	ns      *netns.NS
	auditAt string
	tls     *tls.Config // a kiosk's, to this broker
	caFile  string
}

func startE2E(t *testing.T) *e2e {
	bed := testbed.New(t)
	e := e2eOf(t, bed, brokertest.Start(t, bed, 2, nil))
	var err error
	if e.ns, err = netns.New(int(time.Now().UnixNano() % 200)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ns.Close() })
	return e
}

// e2eOf is the test's view of a broker running on bed, with an X server
// for viewers; both stop when t ends.
func e2eOf(t *testing.T, bed *testbed.Bed, rb *brokertest.Broker) *e2e {
	t.Helper()
	gwPort, _ := strconv.Atoi(rb.GatewayPort())
	e := &e2e{t: t, bed: bed, b: rb.Broker, cfg: rb.Config, gwPort: gwPort, kiosk: rb.KioskAddr(),
		auditAt: rb.Config.Sessions.AuditLog, tls: rb.KioskTLS(), caFile: rb.CAFile()}
	var err error
	if e.x, err = xvfb.Start(context.Background(), 1024, 768); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.x.Stop)
	return e
}

func (e *e2e) waitFull() {
	e.t.Helper()
	poll.Until(e.t, 5*time.Minute, "a full pool", func() bool {
		return e.b.Pool.Status().Counts[pool.Clean] == e.cfg.PoolSize
	})
}

// kiosk wraps the kiosk-protocol client for tests.
type kiosk struct {
	t *testing.T
	c *kioskproto.Client
}

// connect says hello as kiosk id; the connection closes when t ends.
func (e *e2e) connect(t *testing.T, id string) *kiosk {
	t.Helper()
	k, err := e.dial(t, id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dial is connect for goroutines: it returns its error.
func (e *e2e) dial(t *testing.T, id string) (*kiosk, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := kioskproto.Dialer{Addr: e.kiosk, TLS: e.tls}.Dial(ctx, id, kioskToken, "e2e test")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &kiosk{t: t, c: c}, nil
}

func (k *kiosk) next(d time.Duration) *kioskproto.Message {
	select {
	case m := <-k.c.Messages():
		return m
	case <-time.After(d):
		return nil
	}
}

func (k *kiosk) request() *kioskproto.Offer {
	k.t.Helper()
	k.c.Request(time.Time{})
	for {
		m := k.next(2 * time.Minute)
		if m == nil {
			k.t.Fatal("no offer")
		}
		if m.Type == kioskproto.TOffer {
			return m.Offer
		}
	}
}

func (k *kiosk) waitEnd(d time.Duration) string {
	k.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-k.c.Messages():
			if !ok {
				k.t.Fatal("connection closed before an end")
			}
			if m.Type == kioskproto.TEnd {
				return m.End.Reason
			}
		case <-deadline:
			k.t.Fatal("no end message")
		}
	}
}

// launchViewer runs remote-viewer on an offer as kioskd does: SPICE over
// TLS, verified against the site CA and the subject the welcome gave.
func (e *e2e) launchViewer(t *testing.T, k *kiosk, o *kioskproto.Offer) *viewer.Viewer {
	t.Helper()
	ca, err := os.ReadFile(e.caFile)
	if err != nil {
		t.Fatal(err)
	}
	v, err := viewer.Launch(viewer.Options{Env: e.x.Env(), Kiosk: true}, *o,
		&viewer.Secure{CA: ca, Subject: k.c.Welcome().SpiceSubject})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop(time.Second) })
	return v
}

// linkedLease waits for a linked session of kiosk and returns it.
func (e *e2e) linkedLease(t *testing.T, kiosk string) session.LeaseStatus {
	t.Helper()
	var out session.LeaseStatus
	poll.Until(t, time.Minute, "the viewer to link", func() bool {
		for _, l := range e.b.Sessions.Leases() {
			if l.Kiosk == kiosk && l.Linked != nil {
				out = l
				return true
			}
		}
		return false
	})
	return out
}

// screenShowsGuest waits until the X screen shows the guest's console: a
// large black area (the VGA text screen) with light text in it, which
// remote-viewer's own grey window never has.
func (e *e2e) screenShowsGuest(t *testing.T, name string) {
	t.Helper()
	path := filepath.Join(os.TempDir(), "undervdi-e2e-"+name+".png")
	var black, light float64
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		img, err := e.x.Screenshot()
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		ok, black, light = xvfb.ShowsConsole(img)
		xvfb.SavePNG(img, path)
		if ok {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("the screen does not show the guest's console (%.1f%% black, %.2f%% light); see %s", 100*black, 100*light, path)
}

func (e *e2e) vmState(vm string) string {
	doms, err := e.b.Host.Domains(context.Background(), vm)
	if err != nil || len(doms) != 1 {
		return ""
	}
	return doms[0].Meta.State
}

// checkWiped waits until the VM's domain and overlay are gone.
func (e *e2e) checkWiped(t *testing.T, vm string) {
	t.Helper()
	poll.Until(t, time.Minute, vm+" destroyed with its disk", func() bool {
		_, err := e.bed.L.DomainLookupByName(vm)
		overlays, _ := filepath.Glob(filepath.Join(e.bed.OverlayDir, vm+"-*"))
		return libvirt.IsNotFound(err) && len(overlays) == 0
	})
}

// dialTLS connects to the gateway's TLS port from the kiosk's address.
func (e *e2e) dialTLS(t *testing.T, o *kioskproto.Offer) net.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", o.TLSPort), e.tls)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// spiceLink tries a SPICE main-channel link through the gateway, and
// closes it.
func spiceLink(c net.Conn, ticket string) error {
	c, err := linkMain(c, ticket)
	if err == nil {
		c.Close()
	}
	return err
}

// linkMain links a SPICE main channel through the gateway and keeps it; a
// refused link's connection is closed.
func linkMain(c net.Conn, ticket string) (net.Conn, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
		CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapAuthSASL, spice.CapMiniHeader)}, ticket)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func TestRealSessions(t *testing.T) {
	e := startE2E(t)
	ctx := context.Background()
	gw := fmt.Sprintf("127.0.0.1:%d", e.gwPort)

	// The golden VM runs, as an operator updating it would have it, while
	// the first visitor is served: clones are made of the published
	// version, not of the golden's disk.
	golden, err := e.bed.L.DomainLookupByName(e.bed.Golden.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bed.L.DomainCreate(golden); err != nil {
		t.Fatalf("starting the golden while the pool serves: %v", err)
	}

	t.Run("remote-viewer shows the guest; ending it destroys the VM", func(t *testing.T) {
		k := e.connect(t, "k1")
		offer := k.request()
		v := e.launchViewer(t, k, offer)
		l := e.linkedLease(t, "k1")
		if s := e.vmState(l.VM); s != "in-use" {
			t.Errorf("libvirt says %s is %q after the link, want in-use", l.VM, s)
		}
		e.screenShowsGuest(t, "viewer")

		// Someone else with the ticket, from another address: refused.
		c, err := e.ns.Dial(ctx, "tcp", fmt.Sprintf("%s:%d", e.ns.HostIP, offer.TLSPort))
		if err != nil {
			t.Fatal(err)
		}
		if err := spiceLink(tls.Client(c, e.tls), offer.Ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
			t.Errorf("link from %s with a valid ticket = %v, want permission denied", e.ns.NSIP, err)
		}
		// A second client from the kiosk's own address cannot take over.
		if err := spiceLink(e.dialTLS(t, offer), offer.Ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
			t.Errorf("second main link = %v, want permission denied", err)
		}
		// Nor can a link in plaintext, even with the ticket: this kiosk's
		// SPICE goes over TLS only.
		c, _ = net.Dial("tcp", gw)
		if err := spiceLink(c, offer.Ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
			t.Errorf("plaintext link to a TLS kiosk's session = %v, want permission denied", err)
		}

		v.Stop(time.Second) // the viewer is killed
		if reason := k.waitEnd(30 * time.Second); reason != "the viewer disconnected" {
			t.Errorf("end reason = %q", reason)
		}
		e.checkWiped(t, l.VM)
		if err := spiceLink(e.dialTLS(t, offer), offer.Ticket); !errors.Is(err, spice.LinkErrPermissionDenied) {
			t.Errorf("replayed ticket = %v, want permission denied", err)
		}
		e.waitFull()
	})

	if st, _, err := e.bed.L.DomainGetState(golden, 0); err != nil || libvirt.DomainState(st) != libvirt.DomainRunning {
		t.Errorf("the golden's state after the session = %d, %v; want it still running", st, err)
	}
	e.bed.L.DomainDestroy(golden)

	t.Run("guest power-off ends the session at the kiosk", func(t *testing.T) {
		k := e.connect(t, "k1")
		v := e.launchViewer(t, k, k.request())
		l := e.linkedLease(t, "k1")
		if _, err := e.b.Host.AgentCommand(ctx, l.VM, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
			t.Fatal(err)
		}
		if reason := k.waitEnd(time.Minute); reason != "guest powered off or rebooted" {
			t.Errorf("end reason = %q", reason)
		}
		select {
		case <-v.Done(): // --kiosk-quit=on-disconnect
		case <-time.After(30 * time.Second):
			t.Errorf("remote-viewer still running after the VM went away")
		}
		e.checkWiped(t, l.VM)
		e.waitFull()
	})

	t.Run("50 kiosks at once get distinct VMs or a place in the queue", func(t *testing.T) {
		e.waitFull()
		type answer struct {
			offer *kioskproto.Offer
			ahead int
		}
		answers := make(chan answer, 50)
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				k, err := e.dial(t, fmt.Sprintf("many-%02d", i))
				if err != nil {
					t.Error(err)
					return
				}
				k.c.Request(time.Time{})
				for m := k.next(time.Minute); m != nil; m = k.next(time.Minute) {
					switch m.Type {
					case kioskproto.TOffer:
						answers <- answer{offer: m.Offer}
						return
					case kioskproto.TStatus:
						answers <- answer{ahead: m.Status.Ahead}
						return
					}
				}
				t.Errorf("kiosk many-%02d: no answer", i)
			})
		}
		wg.Wait()
		close(answers)
		offers, queued := 0, 0
		for a := range answers {
			if a.offer != nil {
				offers++
			} else {
				queued++
			}
		}
		if offers != e.cfg.PoolSize || queued != 50-offers {
			t.Errorf("%d offers and %d queue places, want %d and %d", offers, queued, e.cfg.PoolSize, 50-e.cfg.PoolSize)
		}
		vms := map[string]bool{}
		for _, l := range e.b.Sessions.Leases() {
			if vms[l.VM] {
				t.Errorf("VM %s offered twice", l.VM)
			}
			vms[l.VM] = true
		}
	})
	// The 50 kiosks left with the subtest: their unused VMs go back.
	poll.Until(t, time.Minute, "the unused offers returned", func() bool { return len(e.b.Sessions.Leases()) == 0 })

	t.Run("the original remote.sh gets a session", func(t *testing.T) {
		e.legacyRemoteSh(t)
	})

	checkAudit(t, e.auditAt)
}

// legacyRemoteSh runs the original kiosk script as an unprivileged user,
// with nc and remote-viewer, against the legacy signal port.
func (e *e2e) legacyRemoteSh(t *testing.T) {
	e.waitFull()
	u := brokertest.KioskUser(t)
	// t.TempDir's tree is private to root; the kiosk user must read this.
	dir, err := os.MkdirTemp("", "undervdi-kiosk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	conf := filepath.Join(dir, "client.conf")
	_, legacyPort, _ := net.SplitHostPort(e.cfg.Sessions.LegacyListen)
	anim := filepath.Join(dir, "animation")
	os.Mkdir(anim, 0o755)
	os.WriteFile(conf, []byte(fmt.Sprintf("server_ip=127.0.0.1\nvdi_signal_port=%s\nvdi_spice_port=%d\nanimation_folder=%s\nbackground_folder=%s\n",
		legacyPort, e.gwPort, anim, anim)), 0o644)
	script, err := os.ReadFile("testdata/remote.sh")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "remote.sh")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(script), "/etc/client.conf", conf)), 0o755)

	cmd := exec.Command("setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--init-groups", "/bin/sh", path)
	// USER matters: the script ends with `killall -u $USER`.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "USER=" + u.Username, "HOME=" + dir, "DISPLAY=" + e.x.Display}
	cmd.Dir = dir
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("remote.sh output:\n%s", out)
		}
	})
	start := time.Now()
	l := e.linkedLease(t, "legacy-127.0.0.1")
	t.Logf("remote.sh linked %v after start (nc -i 1 reads a line a second)", time.Since(start).Round(time.Millisecond))
	if !l.Legacy {
		t.Errorf("lease %+v is not a legacy one", l)
	}
	e.screenShowsGuest(t, "legacy")
	// The visitor finishes: the guest powers off, remote-viewer quits on the
	// disconnect, and the script logs its user out with killall.
	if _, err := e.b.Host.AgentCommand(context.Background(), l.VM, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
		t.Fatal(err)
	}
	e.checkWiped(t, l.VM)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Errorf("remote.sh did not finish after the session ended; output:\n%s", out)
	}
}

// checkAudit reads the audit log: each used session ended wiped, the
// refused links are there, and no ticket or token is.
func checkAudit(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), kioskToken) {
		t.Errorf("the audit log contains a kiosk token")
	}
	used, wiped, refused, legacy := 0, 0, 0, 0
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var r session.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		switch {
		case r.Event == "refused":
			refused++
		case r.Linked != nil:
			used++
			if r.Wiped && r.WipedAt != nil {
				wiped++
			}
			if r.Legacy {
				legacy++
			}
		}
	}
	if used != 3 || wiped != 3 || legacy != 1 || refused < 3 {
		t.Errorf("audit: %d used sessions (%d wiped, %d legacy), %d refusals; want 3 (3, 1), at least 3:\n%s", used, wiped, legacy, refused, b)
	}
}
