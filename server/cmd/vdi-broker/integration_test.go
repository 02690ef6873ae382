//go:build integration

package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
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

	"undervdi/internal/brokertest"
	"undervdi/server/siteca"

	"undervdi/internal/freeport"
	"undervdi/internal/poll"
	"undervdi/internal/promtest"
	"undervdi/server/pool"

	"github.com/BurntSushi/toml"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/api"
	"undervdi/server/config"
	"undervdi/server/qcow2"
	"undervdi/server/session"
	"undervdi/server/spice"
	"undervdi/tinyvm"
)

var (
	buildOnce sync.Once
	brokerBin string
	buildErr  error
)

func brokerBinary(t *testing.T) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vdi-broker-test-")
		if err != nil {
			buildErr = err
			return
		}
		brokerBin = filepath.Join(dir, "vdi-broker")
		if out, err := exec.Command("go", "build", "-o", brokerBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return brokerBin
}

type brokerProc struct {
	cmd    *exec.Cmd
	log    *syncbuf.Buffer
	socket string
	done   chan struct{}
	ready  chan struct{} // closed when the broker sent READY=1 to systemd
}

func writeConfig(t *testing.T, cfg *config.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vdi-broker.toml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := toml.NewEncoder(f).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	return path
}

func startBroker(t *testing.T, cfgPath, socket string) *brokerProc {
	t.Helper()
	p := &brokerProc{log: &syncbuf.Buffer{}, socket: socket, done: make(chan struct{}), ready: make(chan struct{})}
	p.cmd = exec.Command(brokerBinary(t), "run", "-config", cfgPath)
	p.cmd.Stderr = p.log
	// Play systemd's part of Type=notify.
	notify := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if slices.Contains(strings.Split(string(buf[:n]), "\n"), "READY=1") {
				close(p.ready)
				return
			}
		}
	}()
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("vdi-broker log:\n%s", p.log.String())
		}
	})
	return p
}

func (p *brokerProc) status() *api.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := api.FetchStatus(ctx, p.socket)
	if err != nil {
		return nil
	}
	return s
}

func (p *brokerProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// waitFull waits until the broker's pool is full and holds nothing else.
func (p *brokerProc) waitFull(t *testing.T, size int) *api.Status {
	t.Helper()
	var s *api.Status
	poll.Until(t, 5*time.Minute, fmt.Sprintf("a full pool of %d", size), func() bool {
		s = p.status()
		return s != nil && s.Pool.Counts[pool.Clean] == size && len(s.Pool.VMs) == size
	})
	select {
	case <-p.ready:
	default:
		t.Errorf("the broker never told systemd READY=1")
	}
	return s
}

// checkNoLeftovers checks libvirt and the overlay directory hold exactly the
// pool's VMs and their overlays.
func checkNoLeftovers(t *testing.T, bed *testbed.Bed, s *api.Status) {
	t.Helper()
	var want, wantOverlays []string
	for _, v := range s.Pool.VMs {
		want = append(want, v.Name)
		wantOverlays = append(wantOverlays, v.Overlays...)
	}
	// Orphan overlays are deleted in the background right after the
	// reconcile; give that a moment.
	poll.Until(t, time.Minute, "libvirt and the overlay directory to match the pool", func() bool {
		doms, overlays, err := bed.Leftovers(bed.L)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(doms)
		slices.Sort(want)
		slices.Sort(overlays)
		slices.Sort(wantOverlays)
		return slices.Equal(doms, want) && slices.Equal(overlays, wantOverlays)
	})
}

func TestKillDuringRefill(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 2)
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	poll.Until(t, 2*time.Minute, "a clone being made", func() bool {
		s := first.status()
		return s != nil && s.Pool.Counts[pool.Booting] > 0
	})
	first.kill9(t)
	doms, overlays, _ := bed.Leftovers(bed.L)
	if len(doms) == 0 || len(overlays) == 0 {
		t.Fatalf("nothing left behind by the kill (domains %v, overlays %v): the test did not hit a refill", doms, overlays)
	}
	t.Logf("killed mid-refill, leaving domains %v and overlays %v", doms, overlays)

	second := startBroker(t, path, cfg.AdminSocket)
	s := second.waitFull(t, 2)
	checkNoLeftovers(t, bed, s)
	for _, v := range s.Pool.VMs {
		if slices.Contains(doms, v.Name) {
			t.Errorf("VM %s, booting when the broker was killed, was kept: it was not provably clean", v.Name)
		}
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	<-second.done
	if code := second.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("vdi-broker exit status after SIGTERM = %d, want 0", code)
	}
}

func TestKillDuringSession(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 1)
	cfg.Metrics.Listen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	first.waitFull(t, 1)

	// A kiosk takes a session and its viewer links: the VM is in use.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kioskTLS := brokertest.KioskTLS(t, filepath.Join(cfg.SiteCADir(), siteca.CAFile))
	k, err := kioskproto.Dialer{Addr: "127.0.0.1:" + port(cfg.Sessions.Listen), TLS: kioskTLS}.Dial(ctx, "k1", kioskToken, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	k.Request(time.Time{})
	var offer *kioskproto.Offer
	for m := range k.Messages() {
		if m.Type == kioskproto.TOffer {
			offer = m.Offer
			break
		}
	}
	if offer == nil {
		t.Fatalf("no offer: %v", k.Err())
	}
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", offer.TLSPort), kioskTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := spice.Link(c, &spice.LinkMess{ChannelType: spice.ChannelMain,
		CommonCaps: spice.Caps(spice.CapProtocolAuthSelection, spice.CapMiniHeader)}, offer.Ticket); err != nil {
		t.Fatalf("SPICE link through the gateway: %v", err)
	}
	s := first.status()
	if s == nil || len(s.Sessions) != 1 || s.Sessions[0].Linked == nil {
		t.Fatalf("status after the link = %+v, want one linked session", s)
	}
	vm := s.Sessions[0].VM
	checkMetrics(t, "http://"+cfg.Metrics.Listen+"/metrics")
	overlays, _ := filepath.Glob(filepath.Join(bed.OverlayDir, vm+"-*"))
	if len(overlays) != 1 {
		t.Fatalf("overlays of %s: %v", vm, overlays)
	}

	first.kill9(t)
	if _, err := os.Stat(overlays[0]); err != nil {
		t.Fatalf("the session's overlay should outlive the killed broker until the restart: %v", err)
	}
	second := startBroker(t, path, cfg.AdminSocket)
	s = second.waitFull(t, 1)
	checkNoLeftovers(t, bed, s)
	if s.Pool.VMs[0].Name == vm {
		t.Errorf("the in-use VM %s of the killed broker was kept", vm)
	}
	if _, err := os.Stat(overlays[0]); !os.IsNotExist(err) {
		t.Errorf("the in-use VM's overlay %s: %v, want it deleted", overlays[0], err)
	}
	// The session the kill interrupted has its audit line, once.
	var lines []session.AuditRecord
	poll.Until(t, time.Minute, "the interrupted session's audit line", func() bool {
		lines = auditLines(t, cfg.Sessions.AuditLog, offer.Lease)
		return len(lines) > 0
	})
	time.Sleep(time.Second)
	if lines = auditLines(t, cfg.Sessions.AuditLog, offer.Lease); len(lines) != 1 {
		t.Fatalf("audit lines of lease %s = %+v, want exactly one", offer.Lease, lines)
	}
	if r := lines[0]; r.Reason != pool.ReasonRestart || r.Kiosk != "k1" || r.VM != vm || r.Linked == nil || !r.Wiped {
		t.Errorf("audit line = %+v, want the restart's, linked, wiped", r)
	}
}

// checkMetrics scrapes the broker as Prometheus would, during one linked
// session of kiosk k1 on a pool of one: the figures agree with the status.
func checkMetrics(t *testing.T, url string) {
	t.Helper()
	var s promtest.Scrape
	// The pool refills behind the session: wait for its clean VM.
	poll.Until(t, 2*time.Minute, "the metrics to show the refilled pool", func() bool {
		var err error
		if s, err = promtest.Get(url); err != nil {
			t.Fatal(err)
		}
		v, _ := s.Value("undervdi_pool_vms", "state=clean")
		return v == 1
	})
	for _, w := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"undervdi_pool_vms", []string{"state=in-use"}, 1},
		{"undervdi_libvirt_up", nil, 1},
		{"undervdi_golden_version", nil, 1},
		{"undervdi_pool_vms_by_version", []string{"version=1"}, 2},
		{"undervdi_kiosks_connected", nil, 1},
		{"undervdi_sessions", []string{"linked=true"}, 1},
		{"undervdi_queue_length", nil, 0},
	} {
		if got, ok := s.Value(w.name, w.labels...); !ok || got != w.want {
			t.Errorf("%s%v = %v (present: %v), want %v", w.name, w.labels, got, ok, w.want)
		}
	}
	if n, _ := s.Count("undervdi_handoff_seconds", "protocol=kiosk"); n != 1 {
		t.Errorf("kiosk handoffs = %d, want the one offer", n)
	}
	if n, _ := s.Count("undervdi_touch_to_link_seconds", "protocol=kiosk"); n != 1 {
		t.Errorf("touch-to-link figures = %d, want the one session's", n)
	}
	if n, _ := s.Count("undervdi_clone_seconds"); n != 2 {
		t.Errorf("clones timed = %d, want 2: the first and the refill", n)
	}
}

// auditLines returns the audit log's session lines of lease.
func auditLines(t *testing.T, path, lease string) []session.AuditRecord {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []session.AuditRecord
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r session.AuditRecord
		if json.Unmarshal([]byte(line), &r) == nil && r.Event == "session" && r.Lease == lease {
			out = append(out, r)
		}
	}
	return out
}

// checkVersions checks that the versions directory holds exactly the
// volumes of the published versions, each complete, and that every clone
// is backed by a version's volume.
func checkVersions(t *testing.T, bed *testbed.Bed, p *brokerProc) *api.Status {
	t.Helper()
	var s *api.Status
	poll.Until(t, 2*time.Minute, "the versions directory to hold only published versions", func() bool {
		s = p.status()
		if s == nil {
			return false
		}
		var want []string
		for _, v := range s.Pool.Versions {
			want = append(want, v.Volumes...)
		}
		files, _ := filepath.Glob(filepath.Join(bed.VersionDir, "*"))
		slices.Sort(want)
		slices.Sort(files)
		return slices.Equal(files, want)
	})
	for _, v := range s.Pool.Versions {
		for _, vol := range v.Volumes {
			f, err := os.Open(vol)
			if err != nil {
				t.Fatal(err)
			}
			head := make([]byte, 64<<10)
			n, _ := io.ReadFull(f, head)
			f.Close()
			h, err := qcow2.Parse(head[:n])
			if err != nil || h.BackingFile != "" || h.Size != 2<<30 && h.Size != 64<<20 {
				t.Errorf("version %d volume %s: %+v, %v", v.Version, vol, h, err)
			}
		}
	}
	return s
}

func TestKillDuringPublish(t *testing.T) {
	bed := testbed.New(t)
	// 1 GiB to copy: a few seconds, long enough to kill the broker meanwhile.
	if err := bed.GrowGolden(2<<30, 1<<30); err != nil {
		t.Fatal(err)
	}
	cfg := brokerConfig(t, bed, 1)
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	// The copy may take well under a second (the page cache), less than
	// the progress reports' interval, and the admin socket may not even be
	// up yet: the kill comes as the copy's file appears, watched every
	// millisecond.
	var files []string
	for deadline := time.Now().Add(2 * time.Minute); len(files) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first version's copy never started")
		}
		files, _ = filepath.Glob(filepath.Join(bed.VersionDir, "*"))
	}
	first.kill9(t)
	t.Logf("killed mid-copy, leaving %v", files)
	if strings.Contains(first.log.String(), "version published") {
		t.Fatal("the copy finished before the kill: the test did not hit the publish")
	}

	second := startBroker(t, path, cfg.AdminSocket)
	s := second.waitFull(t, 1)
	checkNoLeftovers(t, bed, s)
	s = checkVersions(t, bed, second)
	if len(s.Pool.Versions) != 1 || !s.Pool.Versions[0].Current {
		t.Errorf("versions after the restart = %+v, want the one the second broker published", s.Pool.Versions)
	}
}

func TestKillDuringRoll(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 2)
	path := writeConfig(t, cfg)
	first := startBroker(t, path, cfg.AdminSocket)
	first.waitFull(t, 2)
	var out, errOut strings.Builder
	if code := run([]string{"publish", "-no-wait", "-socket", cfg.AdminSocket}, &out, &errOut); code != exitOK ||
		!strings.Contains(out.String(), "publishing version 2") {
		t.Fatalf("vdi-broker publish -no-wait = %d: %s%s", code, out.String(), errOut.String())
	}
	poll.Until(t, 2*time.Minute, "a roll under way", func() bool {
		s := first.status()
		if s == nil || s.Pool.Current != 2 {
			return false
		}
		old, coming := 0, 0
		for _, v := range s.Pool.VMs {
			switch {
			case v.State == pool.Clean && v.Version == 1:
				old++
			case v.Version == 2 && v.State != pool.Clean:
				coming++
			}
		}
		return old > 0 && coming > 0
	})
	first.kill9(t)

	second := startBroker(t, path, cfg.AdminSocket)
	s := second.waitFull(t, 2)
	checkNoLeftovers(t, bed, s)
	for _, v := range s.Pool.VMs {
		if v.Version != 2 {
			t.Errorf("after the restart %s is a clone of version %d, want 2: clean clones of an old version are replaced", v.Name, v.Version)
		}
	}
	checkVersions(t, bed, second)

	// The golden runs (an operator updates it): the unit's check before a
	// restart still passes, as the pool serves the published version.
	golden, err := bed.L.DomainLookupByName(bed.Golden.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.L.DomainCreate(golden); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"check", "-config", path}, &out, &errOut); code != exitOK || !strings.Contains(out.String(), "running") {
		t.Errorf("vdi-broker check while the golden runs = %d: %s%s", code, out.String(), errOut.String())
	}
	if code := run([]string{"publish", "-socket", cfg.AdminSocket}, &out, &errOut); code == exitOK || !strings.Contains(errOut.String(), "shut it down") {
		t.Errorf("vdi-broker publish while the golden runs = %d: %s%s, want it refused", code, out.String(), errOut.String())
	}
	bed.L.DomainDestroy(golden)

	// The operator's commands, on the running broker.
	out.Reset()
	errOut.Reset()
	if code := run([]string{"publish", "-socket", cfg.AdminSocket}, &out, &errOut); code != exitOK ||
		!strings.Contains(out.String(), "version 3 published") {
		t.Fatalf("vdi-broker publish = %d: %s%s", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := run([]string{"rollback", "-socket", cfg.AdminSocket}, &out, &errOut); code != exitOK ||
		!strings.Contains(out.String(), "rolled back from version 3 to 2") {
		t.Fatalf("vdi-broker rollback = %d: %s%s", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := run([]string{"versions", "-socket", cfg.AdminSocket}, &out, &errOut); code != exitOK {
		t.Fatalf("vdi-broker versions = %d: %s", code, errOut.String())
	}
	for _, want := range []string{"VERSION", "2 ", "current", "3 ", "rolled back"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("vdi-broker versions printed\n%s\nwant %q in it", out.String(), want)
		}
	}
}

// TestCheckLeavesNothing: checking a golden whose disk no storage pool holds
// makes a transient pool to read it, and removes it again.
func TestCheckLeavesNothing(t *testing.T) {
	bed := testbed.New(t)
	dir := filepath.Join(bed.Root, "loose")
	disk := filepath.Join(dir, "loose.qcow2")
	os.MkdirAll(dir, 0o755)
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	name := bed.Prefix + "-loose"
	if _, err := bed.L.DomainDefineXML(tinyvm.DomainXML(name, disk, bed.Art, 160)); err != nil {
		t.Fatal(err)
	}
	pools := func() []string {
		ps, _, err := bed.L.ConnectListAllStoragePools(1, 0)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range ps {
			names = append(names, p.Name)
		}
		slices.Sort(names)
		return names
	}
	before := pools()
	cfg := brokerConfig(t, bed, 1)
	cfg.Golden = name
	var out, errOut strings.Builder
	if code := run([]string{"check", "-config", writeConfig(t, cfg)}, &out, &errOut); code != exitOK {
		t.Fatalf("vdi-broker check = %d: %s%s", code, out.String(), errOut.String())
	}
	if after := pools(); !slices.Equal(before, after) {
		t.Errorf("storage pools before check %v, after %v: the check left one behind", before, after)
	}
}

// brokerConfig is the bed's configuration with free ports and one kiosk.
func brokerConfig(t *testing.T, bed *testbed.Bed, size int) *config.Config {
	cfg := bed.Config(size)
	cfg.Gateway.Listen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	cfg.Gateway.TLSListen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	cfg.Sessions.Listen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	cfg.Sessions.LegacyListen = ""
	cfg.Sessions.AuditLog = filepath.Join(bed.Root, "sessions.jsonl")
	cfg.Kiosks = []config.Kiosk{{ID: "k1", Address: "127.0.0.1", Token: kioskToken}}
	return cfg
}

const kioskToken = "kill-test-token-0123456789"

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
