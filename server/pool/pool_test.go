package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"undervdi/internal/poll"

	"undervdi/internal/testlog"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

func testLogger() *slog.Logger { return testlog.Logger() }

func testConfig() Config {
	return Config{
		Name: "t", Golden: "golden", Size: 3, MaxVMs: 6, OverlayDir: "/ovl", VersionDir: "/ver", KeepVersions: 1,
		MemoryReserve: 1 << 30, ReadyTimeout: 5 * time.Second, RefillConcurrency: 2,
		FailureLimit: 3, ReconcileInterval: time.Hour,
	}
}

// startPool starts a pool on f and stops it when the test ends.
func startPool(t testing.TB, f *fakeHV, cfg Config) *Pool {
	t.Helper()
	p := New(cfg, f, testLogger())
	p.setBackoff(10*time.Millisecond, 80*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	f.events <- virt.Event{Kind: virt.Connected}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("Start() = %v", err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() {
		p.call(func() {
			if err := p.checkIndex(); err != nil {
				t.Errorf("the pool's index: %v", err)
			}
		})
		cancel()
		<-done
		p.Wait()
	})
	return p
}

// forward copies the pool's announcements to ch until the pool stops.
func forward(p *Pool, ch chan<- Ended) {
	for {
		select {
		case e := <-p.Ended():
			ch <- e
		case <-p.done:
			return
		}
	}
}

func clean(p *Pool) int { return p.Status().Counts[Clean] }

var anyone = Claim{Kiosk: "k1", Lease: "l-test", Addr: "127.0.0.1"}

func TestFillsToSize(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	names := map[string]bool{}
	for _, v := range p.Status().VMs {
		names[v.Name] = true
		if len(v.Overlays) != 1 || !strings.HasPrefix(v.Overlays[0], "/ovl/"+v.Name+"-vda") {
			t.Errorf("VM %s overlays = %v, want /ovl/%s-vda.qcow2", v.Name, v.Overlays, v.Name)
		}
	}
	if len(names) != 3 {
		t.Errorf("VM names = %v, want 3 distinct", names)
	}
	doms, _ := f.Domains(context.Background(), "t-")
	for _, d := range doms {
		if d.Meta.State != "clean" {
			t.Errorf("libvirt metadata of %s = %s, want clean", d.Name, d.Meta.State)
		}
	}
}

func TestTakeNeverGivesAVMTwice(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs = 5, 5
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "5 clean VMs", func() bool { return clean(p) == 5 })

	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			v, err := p.Take(anyone)
			if errors.Is(err, ErrNoCleanVM) {
				return
			}
			if err != nil {
				t.Errorf("Take() = %v", err)
				return
			}
			mu.Lock()
			got[v.Name]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(got) != 5 {
		t.Errorf("64 callers got %d distinct VMs, want all 5 handed out", len(got))
	}
	for name, n := range got {
		if n != 1 {
			t.Errorf("VM %s handed out %d times", name, n)
		}
	}
	if _, peak := f.counts(); peak > 5 {
		t.Errorf("%d domains existed at once, max_vms is 5", peak)
	}
}

func TestStatesRecordedInLibvirt(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) > 0 })
	v, err := p.Take(anyone)
	if err != nil {
		t.Fatal(err)
	}
	if v.Spice.Password == "" || v.Spice.Socket == "" {
		t.Errorf("Take() = %+v, want a SPICE target with a password", v)
	}
	poll.Until(t, 10*time.Second, "the offer recorded in libvirt", func() bool {
		doms, _ := f.Domains(context.Background(), v.Name)
		return len(doms) == 1 && doms[0].Meta.State == "offered"
	})
	if err := p.MarkUsed(context.Background(), v.Name); err != nil {
		t.Fatal(err)
	}
	doms, _ := f.Domains(context.Background(), v.Name)
	if doms[0].Meta.State != "in-use" {
		t.Errorf("after MarkUsed, libvirt state = %s, want in-use", doms[0].Meta.State)
	}
	if err := p.Release(context.Background(), v.Name); !errors.Is(err, ErrNotOffered) {
		t.Errorf("Release(used VM) = %v, want ErrNotOffered: a used VM never goes back", err)
	}
}

func TestReleaseReturnsPristineVM(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs = 1, 1
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) == 1 })
	v, err := p.Take(anyone)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Take(anyone); !errors.Is(err, ErrNoCleanVM) {
		t.Errorf("second Take() = %v, want ErrNoCleanVM", err)
	}
	if err := p.Release(context.Background(), v.Name); err != nil {
		t.Fatal(err)
	}
	again, err := p.Take(anyone)
	if err != nil || again.Name != v.Name {
		t.Errorf("Take() after Release = %v, %v; want %s again", again.Name, err, v.Name)
	}
}

// TestFinish: a session's end, told without waiting: an unused VM goes
// back clean, a used one is wiped and announced, one the pool does not
// know changes nothing.
func TestFinish(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs = 2, 2
	p := startPool(t, f, cfg)
	ended := make(chan Ended, 1)
	go forward(p, ended)
	poll.Until(t, 10*time.Second, "2 clean VMs", func() bool { return clean(p) == 2 })
	unused, _ := p.Take(anyone)
	used, _ := p.Take(anyone)
	if err := p.MarkUsed(context.Background(), used.Name); err != nil {
		t.Fatal(err)
	}
	p.Finish("nosuchvm", true, "over")
	p.Finish(unused.Name, false, "not linked")
	p.Finish(used.Name, true, "visitor finished")
	if e := <-ended; e.VM != used.Name || !e.Wiped || !e.Used || e.Reason != "visitor finished" {
		t.Errorf("Ended = %+v, want %s wiped, used, for the visitor", e, used.Name)
	}
	poll.Until(t, 10*time.Second, "the unused VM clean again and the used one replaced", func() bool {
		st := p.Status()
		return st.Counts[Clean] == 2 && slices.ContainsFunc(st.VMs, func(v VMStatus) bool { return v.Name == unused.Name && v.State == Clean })
	})
}

func TestEndWipesAndRefills(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	ended := make(chan Ended, 1)
	go forward(p, ended)
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	v, _ := p.Take(anyone)
	p.MarkUsed(context.Background(), v.Name)
	if err := p.End(v.Name, "visitor finished"); err != nil {
		t.Fatal(err)
	}
	e := <-ended
	if e.VM != v.Name || !e.Wiped || !e.Used || e.Reason != "visitor finished" {
		t.Errorf("Ended = %+v", e)
	}
	for _, n := range f.domainNames() {
		if n == v.Name {
			t.Errorf("domain %s still defined after End", n)
		}
	}
	f.mu.Lock()
	for _, o := range v.Overlays {
		if f.overlays[o] {
			t.Errorf("overlay %s still present after End", o)
		}
	}
	f.mu.Unlock()
	poll.Until(t, 10*time.Second, "the pool refilled", func() bool { return clean(p) == 3 })
}

func TestGuestPowerOffEndsSession(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	ended := make(chan Ended, 4)
	go forward(p, ended)
	poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) > 0 })
	v, _ := p.Take(anyone)
	p.MarkUsed(context.Background(), v.Name)
	f.stop(v.Name)
	e := <-ended
	if e.VM != v.Name || e.Reason != "guest powered off or rebooted" {
		t.Errorf("Ended = %+v, want %s ended by the guest", e, v.Name)
	}
}

func TestCleanVMDeathIsReplaced(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	victim := p.Status().VMs[0].Name
	f.stop(victim)
	poll.Until(t, 10*time.Second, "a replacement", func() bool {
		s := p.Status()
		for _, v := range s.VMs {
			if v.Name == victim {
				return false
			}
		}
		return s.Counts[Clean] == 3
	})
}

func TestNeverExceedsMaxVMs(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs, cfg.RefillConcurrency = 2, 3, 3
	p := startPool(t, f, cfg)
	var used []string
	for range 3 {
		poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) > 0 })
		v, err := p.Take(anyone)
		if err != nil {
			t.Fatal(err)
		}
		p.MarkUsed(context.Background(), v.Name)
		used = append(used, v.Name)
	}
	// Three sessions fill max_vms: no clone may be made for the pool now.
	p.call(p.sync)
	if _, err := p.Take(anyone); !errors.Is(err, ErrNoCleanVM) {
		t.Errorf("Take() at max_vms = %v, want ErrNoCleanVM", err)
	}
	p.End(used[0], "done")
	poll.Until(t, 10*time.Second, "a clean VM after a session ended", func() bool { return clean(p) == 1 })
	if _, peak := f.counts(); peak > 3 {
		t.Errorf("%d domains existed at once, max_vms is 3", peak)
	}
}

func TestKeepsMemoryReserve(t *testing.T) {
	f := newFakeHV()
	f.mem = 1<<30 + 256<<20 // the reserve plus one clone
	cfg := testConfig()
	p := startPool(t, f, cfg)
	// A VM is on the table before its clone is made: wait for the clone.
	poll.Until(t, 10*time.Second, "one clone and a memory note", func() bool {
		created, _ := f.counts()
		return created >= 1 && p.Status().Memory != ""
	})
	if created, _ := f.counts(); created != 1 || len(p.Status().VMs) != 1 {
		t.Errorf("created %d clones, %d VMs on the table, with memory for one", created, len(p.Status().VMs))
	}
	if s := p.Status(); !strings.Contains(s.Memory, "a clone needs 256 MiB and 1.0 GiB stay reserved") {
		t.Errorf("Status().Memory = %q, want the available memory named", s.Memory)
	}
	f.mu.Lock()
	f.mem = 64 << 30
	f.mu.Unlock()
	poll.Until(t, 10*time.Second, "the pool filled once memory is free", func() bool { return clean(p) == 3 })
}

func TestFailuresBackOffAndDegrade(t *testing.T) {
	f := newFakeHV()
	f.defineErr = errors.New("qemu exploded")
	cfg := testConfig()
	cfg.Size, cfg.RefillConcurrency = 1, 1
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "a degraded pool", func() bool { return p.Status().Degraded != "" })
	s := p.Status()
	if !strings.Contains(s.Degraded, "3 clones in a row failed") || !strings.Contains(s.Degraded, "qemu exploded") {
		t.Errorf("Degraded = %q", s.Degraded)
	}
	poll.Until(t, 10*time.Second, "failed clones' overlays deleted", func() bool { return f.overlayCount() == 0 })
	// Backoff: with 10ms doubling to 80ms, a quarter second holds few tries.
	before := s.Failures
	time.Sleep(250 * time.Millisecond)
	if n := p.Status().Failures - before; n > 6 {
		t.Errorf("%d retries in 250ms: no backoff", n)
	}
	f.mu.Lock()
	f.defineErr = nil
	f.mu.Unlock()
	poll.Until(t, 10*time.Second, "recovery", func() bool { s := p.Status(); return s.Degraded == "" && s.Counts[Clean] == 1 })
}

func TestNotReadyInTimeIsReplaced(t *testing.T) {
	f := newFakeHV()
	var mu sync.Mutex
	deaf := "" // the first VM's agent never answers
	f.pingErr = func(name string) error {
		mu.Lock()
		defer mu.Unlock()
		if deaf == "" {
			deaf = name
		}
		if name == deaf {
			return virt.ErrAgent
		}
		return nil
	}
	cfg := testConfig()
	cfg.Size, cfg.RefillConcurrency, cfg.ReadyTimeout = 1, 1, 50*time.Millisecond
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "a clean replacement", func() bool { return clean(p) == 1 })
	mu.Lock()
	defer mu.Unlock()
	for _, n := range f.domainNames() {
		if n == deaf {
			t.Errorf("VM %s whose agent never answered is still defined", deaf)
		}
	}
}

func TestStartupReconcile(t *testing.T) {
	f := newFakeHV()
	f.seed("t-00000001", "clean", true, "/ovl/t-00000001-vda.qcow2")   // provably clean: kept
	f.seed("t-00000002", "in-use", true, "/ovl/t-00000002-vda.qcow2")  // a session of the old run
	f.seed("t-00000003", "offered", true, "/ovl/t-00000003-vda.qcow2") // offered, maybe linked
	f.seed("t-00000004", "clean", false, "/ovl/t-00000004-vda.qcow2")  // clean but shut off
	f.seed("t-00000005", "booting", true, "/ovl/t-00000005-vda.qcow2") // killed mid-boot
	f.seed("t-00000006", "clean", true, "/ovl/t-00000006-vda.qcow2")   // clean, agent dead
	f.overlays["/ovl/t-0000000a-vda.qcow2"] = true                     // crash between overlay and define
	f.overlays["/ovl/somebody-elses.qcow2"] = true                     // not ours: untouched
	f.pingErr = func(name string) error {
		if name == "t-00000006" {
			return virt.ErrAgent
		}
		return nil
	}
	cfg := testConfig()
	cfg.Size = 2
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "leftovers gone and the pool full", func() bool {
		s := p.Status()
		return len(s.VMs) == 2 && s.Counts[Clean] == 2 && f.overlayCount() == 3
	})
	names := f.domainNames()
	kept := false
	for _, n := range names {
		switch n {
		case "t-00000001":
			kept = true
		case "t-00000002", "t-00000003", "t-00000004", "t-00000005", "t-00000006":
			t.Errorf("leftover %s survived the reconcile", n)
		}
	}
	if !kept {
		t.Errorf("the provably clean VM t-00000001 was destroyed")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overlays["/ovl/t-0000000a-vda.qcow2"] {
		t.Errorf("orphaned overlay survived")
	}
	if !f.overlays["/ovl/somebody-elses.qcow2"] {
		t.Errorf("a file that is not the pool's was deleted")
	}
}

func TestReconnect(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	v, _ := p.Take(anyone)
	p.MarkUsed(context.Background(), v.Name)

	f.events <- virt.Event{Kind: virt.Disconnected}
	poll.Until(t, 10*time.Second, "disconnected", func() bool { return !p.Status().Connected })
	if _, err := p.Take(anyone); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Take() while disconnected = %v, want ErrUnavailable", err)
	}
	// While libvirt was away, the in-use guest powered off: no event for it.
	f.mu.Lock()
	f.domains[v.Name].running = false
	f.mu.Unlock()
	ended := make(chan Ended, 4)
	go forward(p, ended)
	f.events <- virt.Event{Kind: virt.Connected}
	if e := <-ended; e.VM != v.Name || e.Reason != "guest powered off or rebooted" {
		t.Errorf("Ended = %+v, want %s ended as powered off", e, v.Name)
	}
	poll.Until(t, 10*time.Second, "the missed power-off handled", func() bool {
		for _, n := range f.domainNames() {
			if n == v.Name {
				return false
			}
		}
		return clean(p) == 3
	})
}

// TestGoldenRunningKeepsServing: clones are made of the published version,
// not of the golden's disk, so the golden may run while the pool refills.
func TestGoldenRunningKeepsServing(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size = 1
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) == 1 })
	f.events <- virt.Event{Kind: virt.Started, Domain: "golden"}
	v, _ := p.Take(anyone)
	p.End(v.Name, "done")
	poll.Until(t, 10*time.Second, "a clean replacement while the golden runs", func() bool {
		s := p.Status()
		return s.Counts[Clean] == 1 && s.Paused == "" && len(s.VMs) == 1 && s.VMs[0].Name != v.Name
	})
	f.events <- virt.Event{Kind: virt.Stopped, Domain: "golden", Detail: "shutdown"}
	if got := f.versionNames(); len(got) != 1 {
		t.Errorf("versions after the golden ran = %v, want only the first: auto_publish is off", got)
	}
}

func TestStartFailsOnBadGolden(t *testing.T) {
	f := newFakeHV()
	f.goldenErr = domxml.ErrGolden
	p := New(testConfig(), f, testLogger())
	f.events <- virt.Event{Kind: virt.Connected}
	if err := p.Start(context.Background()); !errors.Is(err, domxml.ErrGolden) {
		t.Errorf("Start() = %v, want the golden's error", err)
	}
}

func TestOverlayOwner(t *testing.T) {
	p := New(testConfig(), nil, testLogger())
	for path, want := range map[string]string{
		"/ovl/t-0a1b2c3d-vda.qcow2":   "t-0a1b2c3d",
		"/ovl/t-0a1b2c3d-sda.qcow2":   "t-0a1b2c3d",
		"/other/t-0a1b2c3d-vda.qcow2": "",
		"/ovl/t2-0a1b2c3d-vda.qcow2":  "",
		"/ovl/t-zzzzzzzz-vda.qcow2":   "",
		"/ovl/t-0a1b2c3d.qcow2":       "",
		"/ovl/golden.qcow2":           "",
	} {
		if got := p.overlayOwner(path); got != want {
			t.Errorf("overlayOwner(%s) = %q, want %q", path, got, want)
		}
	}
}

// TestMetricsHooks: the pool tells the metrics each clone's time to clean,
// each wipe's time and each failed clone.
func TestMetricsHooks(t *testing.T) {
	f := newFakeHV()
	var mu sync.Mutex
	var cloned, wiped []time.Duration
	failed := 0
	cfg := testConfig()
	cfg.Metrics = Metrics{
		Cloned:      func(d time.Duration) { mu.Lock(); cloned = append(cloned, d); mu.Unlock() },
		Wiped:       func(d time.Duration) { mu.Lock(); wiped = append(wiped, d); mu.Unlock() },
		CloneFailed: func() { mu.Lock(); failed++; mu.Unlock() },
	}
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	v, _ := p.Take(anyone)
	p.MarkUsed(context.Background(), v.Name)
	if err := p.End(v.Name, "visitor finished"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the pool refilled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(cloned) == 4 && len(wiped) == 1
	})
	f.mu.Lock()
	f.defineErr = errors.New("qemu exploded")
	f.mu.Unlock()
	v, _ = p.Take(anyone)
	p.End(v.Name, "visitor finished")
	poll.Until(t, 10*time.Second, "a failed clone counted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failed > 0
	})
	mu.Lock()
	defer mu.Unlock()
	for _, d := range append(cloned, wiped...) {
		if d <= 0 || d > time.Minute {
			t.Errorf("measured %v, want a positive duration from this test's run", d)
		}
	}
}

// TestSetSize grows the pool at run time, then shrinks it below what runs:
// the surplus clean VMs go, the one in use stays, and a size beyond
// max_vms is refused with nothing changed.
func TestSetSize(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	if err := p.SetSize(cfg.MaxVMs + 1); !errors.Is(err, ErrBadSize) {
		t.Fatalf("SetSize(max_vms+1) = %v, want ErrBadSize", err)
	}
	if err := p.SetSize(-1); !errors.Is(err, ErrBadSize) {
		t.Fatalf("SetSize(-1) = %v, want ErrBadSize", err)
	}
	if err := p.SetSize(5); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "5 clean VMs", func() bool { return clean(p) == 5 })
	if s := p.Status(); s.Size != 5 {
		t.Errorf("Status().Size = %d after SetSize(5)", s.Size)
	}
	v, err := p.Take(anyone)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.MarkUsed(context.Background(), v.Name); err != nil {
		t.Fatal(err)
	}
	if err := p.SetSize(1); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "1 clean VM and the used one", func() bool {
		s := p.Status()
		return s.Counts[Clean] == 1 && s.Counts[InUse] == 1 && len(s.VMs) == 2
	})
	if err := p.SetSize(0); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "no clean VM", func() bool { return clean(p) == 0 })
}

// testNet is a guest network of n slots: 10.9.0.(10+i).
type testNet struct{ n int }

func (t testNet) Slots() int                  { return t.n }
func (t testNet) Addr(i int) netip.Addr       { return netip.AddrFrom4([4]byte{10, 9, 0, byte(10 + i)}) }
func (t testNet) Policy() string              { return "net:test" }
func (t testNet) NetworkXML() string          { return "<network/>" }
func (t testNet) FilterXML() (string, string) { return "<filter chain/>", "<filter root/>" }
func (t testNet) NIC(i int) domxml.NIC {
	return domxml.NIC{Network: "n", MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), Filter: "f",
		Params: []domxml.FilterParam{{Name: "IP", Value: t.Addr(i).String()}}}
}
func (t testNet) Slot(ip string) int {
	a, err := netip.ParseAddr(ip)
	if b := a.As4(); err != nil || b[3] < 10 || int(b[3]) >= 10+t.n {
		return -1
	}
	return int(a.As4()[3]) - 10
}

// Each clone holds a guest network address of its own until it is
// destroyed; the pool makes no clone it has no address for, and a restarted
// pool reads the addresses back from the domains.
func TestGuestNetworkSlots(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs, cfg.Network = 3, 6, testNet{4}
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	f.mu.Lock()
	if f.network != "<network/>" || fmt.Sprint(f.filters) != "[<filter chain/> <filter root/>]" {
		t.Errorf("network %q, filters %v: want both made at start, the chain first", f.network, f.filters)
	}
	f.mu.Unlock()
	ips := map[string]string{}
	for _, v := range p.Status().VMs {
		if v.IP == "" || ips[v.IP] != "" {
			t.Fatalf("VM %s has address %q (others: %v)", v.Name, v.IP, ips)
		}
		ips[v.IP] = v.Name
		if got, ok := p.AtAddress(netip.MustParseAddr(v.IP)); !ok || got.Name != v.Name {
			t.Errorf("AtAddress(%s) = %v %v, want %s", v.IP, got.Name, ok, v.Name)
		}
	}
	if _, ok := p.AtAddress(netip.MustParseAddr("10.9.0.200")); ok {
		t.Errorf("AtAddress of no clone's address found one")
	}
	// Take all three: refill wants three more, but one address is left.
	for range 3 {
		if _, err := p.Take(anyone); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "the fourth address used", func() bool { return len(p.Status().VMs) == 4 && clean(p) == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := len(p.Status().VMs); n != 4 {
		t.Fatalf("%d VMs on 4 addresses", n)
	}
	// The domain records the address the pool gave it: a restarted pool reads it back.
	var cleanIP string
	for _, v := range p.Status().VMs {
		if v.State == Clean {
			cleanIP = v.IP
		}
	}
	doms, _ := f.Domains(context.Background(), "t-")
	for _, d := range doms {
		if d.Meta.State == "clean" && d.GuestIP != cleanIP {
			t.Errorf("the clean clone's domain says %s, the pool %s", d.GuestIP, cleanIP)
		}
	}
}

// TestSharedGuestSlot: a leftover found in libvirt may hold the address of a
// VM made since (its wipe's result came after a reconnect). The address
// stays taken while either holds it, the live VM is the one the egress guard
// sees, and once the leftover is gone the live one still is.
func TestSharedGuestSlot(t *testing.T) {
	cfg := testConfig()
	cfg.Network = testNet{2}
	p := New(cfg, newFakeHV(), testLogger())
	live := &vm{name: "t-live", state: Clean, since: time.Now(), slot: 0}
	left := &vm{name: "t-left", state: Destroying, since: time.Now(), slot: 0}
	p.add(live)
	p.add(left)
	addr := cfg.Network.Addr(0)
	if got, _ := p.AtAddress(addr); got.Name != "t-live" {
		t.Errorf("AtAddress with a leftover on the same address = %q, want the live VM", got.Name)
	}
	if s := p.freeSlot(); s != 1 {
		t.Errorf("freeSlot() = %d, want 1: slot 0 is held", s)
	}
	p.drop(left)
	if got, ok := p.AtAddress(addr); !ok || got.Name != "t-live" {
		t.Errorf("AtAddress after the leftover left = %q %v, want the live VM", got.Name, ok)
	}
	if s := p.freeSlot(); s != 1 {
		t.Errorf("freeSlot() after the leftover left = %d, want 1", s)
	}
	if err := p.checkIndex(); err != nil {
		t.Error(err)
	}
	p.drop(live)
	if _, ok := p.AtAddress(addr); ok || p.freeSlot() != 0 {
		t.Errorf("slot 0 after both left: shown %v, free slot %d; want free", ok, p.freeSlot())
	}
}

// TestJobBacklog takes more VMs at once than the executor runs actions:
// the actions beyond maxJobs wait without a goroutine each, and all of
// them run once the first ones end.
func TestJobBacklog(t *testing.T) {
	const n = 3 * maxJobs
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs, cfg.RefillConcurrency = n, n, n
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "the pool full", func() bool { return clean(p) == n })

	gate := make(chan struct{})
	f.mu.Lock()
	f.metaGate = gate
	f.mu.Unlock()
	before := runtime.NumGoroutine()
	for i := range n {
		if _, err := p.Take(Claim{Kiosk: fmt.Sprintf("k%d", i), Lease: fmt.Sprintf("l%d", i)}); err != nil {
			t.Fatalf("Take %d: %v", i, err)
		}
	}
	held := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.metaHeld }
	poll.Until(t, 10*time.Second, "maxJobs offers being recorded", func() bool { return held() == maxJobs })
	time.Sleep(50 * time.Millisecond) // no more start
	if h := held(); h != maxJobs {
		t.Errorf("%d actions run at once, want maxJobs (%d)", h, maxJobs)
	}
	// One goroutine per running action; the others wait in the backlog.
	// (Before the backlog, each waiting action had a goroutine too.)
	if g := runtime.NumGoroutine() - before; g > maxJobs+4 {
		t.Errorf("%d more goroutines with %d actions asked for, want at most %d", g, n, maxJobs+4)
	}
	f.mu.Lock()
	f.metaGate = nil
	f.mu.Unlock()
	close(gate)
	poll.Until(t, 10*time.Second, "every offer recorded", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		recorded := 0
		for _, d := range f.domains {
			if d.d.Meta != nil && d.d.Meta.State == "offered" {
				recorded++
			}
		}
		return recorded == n
	})
}

// TestShelfRestocks: VMs taken and released again and again fill the
// shelf's stock past its room, which the loop publishes anew; the shelf
// keeps the clean VMs in the table's order, and hands out each once, through
// a lost connection (the shelf closed) and its return.
func TestShelfRestocks(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs = 3, 3
	p := startPool(t, f, cfg)
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	check := func(when string) {
		t.Helper()
		p.call(func() {
			if err := p.checkShelf(); err != nil {
				t.Errorf("%s: %v", when, err)
			}
		})
	}
	for round := range 20 {
		var taken []string
		for range 3 {
			v, err := p.Take(anyone)
			if err != nil {
				t.Fatalf("round %d: Take() = %v", round, err)
			}
			if slices.Contains(taken, v.Name) {
				t.Fatalf("round %d: %s handed out twice", round, v.Name)
			}
			taken = append(taken, v.Name)
		}
		if _, err := p.Take(anyone); !errors.Is(err, ErrNoCleanVM) {
			t.Fatalf("round %d: a fourth Take() = %v, want ErrNoCleanVM", round, err)
		}
		for _, name := range taken {
			p.Finish(name, false, "not linked")
		}
		poll.Until(t, 10*time.Second, "the VMs back", func() bool { return clean(p) == 3 })
		check(fmt.Sprintf("round %d", round))
		if round == 10 {
			f.events <- virt.Event{Kind: virt.Disconnected}
			poll.Until(t, 10*time.Second, "disconnected", func() bool { return !p.Status().Connected })
			if _, err := p.Take(anyone); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Take() while disconnected = %v, want ErrUnavailable", err)
			}
			check("disconnected")
			f.events <- virt.Event{Kind: virt.Connected}
			poll.Until(t, 10*time.Second, "the pool back", func() bool {
				st := p.Status()
				return st.Connected && !st.Reconciling && st.Counts[Clean] == 3
			})
		}
	}
}

// TestShelfRacesTheLoop: Takes served from the shelf while the loop retires
// the same clean VMs (the pool shrunk to none) and libvirt reports some of
// them stopped. Each VM goes one way: to exactly one taker, and then it is
// offered (its first link is recorded), or retired or ended, never both.
func TestShelfRacesTheLoop(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size, cfg.MaxVMs, cfg.RefillConcurrency = 30, 30, 8
	p := startPool(t, f, cfg)
	poll.Until(t, 20*time.Second, "30 clean VMs", func() bool { return clean(p) == 30 })
	var stopped []string
	for _, v := range p.Status().VMs {
		if len(stopped) < 5 {
			stopped = append(stopped, v.Name)
		}
	}

	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			<-start
			for {
				v, err := p.Take(anyone)
				if err != nil {
					return
				}
				mu.Lock()
				got[v.Name]++
				mu.Unlock()
			}
		})
	}
	close(start)
	if err := p.SetSize(0); err != nil {
		t.Fatal(err)
	}
	for _, name := range stopped {
		f.events <- virt.Event{Kind: virt.Stopped, Domain: name, Detail: "shutdown"}
	}
	wg.Wait()
	for name, n := range got {
		if n != 1 {
			t.Errorf("VM %s handed out %d times", name, n)
		}
		err := p.MarkUsed(context.Background(), name)
		if slices.Contains(stopped, name) {
			continue // offered, then stopped: either answer is right
		}
		if err != nil {
			t.Errorf("MarkUsed(%s), a VM handed out = %v; want it offered, not retired", name, err)
		}
	}
	t.Logf("%d of 30 VMs handed out, the rest retired", len(got))
	poll.Until(t, 20*time.Second, "no clean VM left", func() bool { return clean(p) == 0 })
}
