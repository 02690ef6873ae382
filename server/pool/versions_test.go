package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/kioskproto"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// byVersion counts the clean VMs of each version.
func byVersion(p *Pool) map[int]int {
	out := map[int]int{}
	for _, v := range p.Status().VMs {
		if v.State == Clean {
			out[v.Version]++
		}
	}
	return out
}

// rolled waits until size clean VMs are all of version seq, the current
// one, and no VM is on its way in or out.
func rolled(t *testing.T, p *Pool, size, seq int) {
	t.Helper()
	var s Status
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pool: current %d, counts %v, vms %+v, versions %+v", s.Current, s.Counts, s.VMs, s.Versions)
		}
	})
	poll.Until(t, 10*time.Second, fmt.Sprintf("%d clean VMs of version %d", size, seq), func() bool {
		s = p.Status()
		moving := 0
		for st, n := range s.Counts {
			if st != Clean && st != Offered && st != Linking && st != InUse {
				moving += n
			}
		}
		return s.Current == seq && byVersion(p)[seq] == size && s.Counts[Clean] == size && moving == 0
	})
}

// watchClean samples the pool's clean count until stop is closed, and
// returns the lowest it saw.
func watchClean(p *Pool, stop <-chan struct{}) <-chan int {
	low := make(chan int, 1)
	go func() {
		lowest := 1 << 30
		for {
			select {
			case <-stop:
				low <- lowest
				return
			default:
			}
			lowest = min(lowest, p.Status().Counts[Clean])
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return low
}

func TestFirstStartPublishes(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
	if got := f.versionNames(); !slices.Equal(got, []string{"t-v1"}) {
		t.Fatalf("versions = %v, want t-v1 published at the first start", got)
	}
	s := p.Status()
	if s.Current != 1 || len(s.Versions) != 1 || !s.Versions[0].Current || s.Versions[0].Clones != 3 {
		t.Errorf("status versions = %+v, current %d", s.Versions, s.Current)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for o, b := range f.backing {
		if b != "/ver/t-v1-vda.qcow2" {
			t.Errorf("overlay %s backed by %s, want the version's copy, never the golden's disk", o, b)
		}
	}
}

// TestPublishRolls: after a publish, clean VMs of the old version are
// replaced in bounded batches, a session on the old version is left alone,
// and the old version goes once nothing uses or keeps it.
func TestPublishRolls(t *testing.T) {
	for _, tc := range []struct {
		name   string
		maxVMs int
	}{{"with room to spare", 8}, {"with no room but for the clean VMs and the session", 4}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHV()
			cfg := testConfig()
			cfg.MaxVMs = tc.maxVMs
			p := startPool(t, f, cfg)
			poll.Until(t, 10*time.Second, "3 clean VMs", func() bool { return clean(p) == 3 })
			visitor, _ := p.Take(anyone)
			if err := p.MarkUsed(context.Background(), visitor.Name); err != nil {
				t.Fatal(err)
			}
			rolled(t, p, 3, 1)

			stop := make(chan struct{})
			low := watchClean(p, stop)
			f.writeGolden()
			seq, err := p.Publish(context.Background())
			if err != nil || seq != 2 {
				t.Fatalf("Publish() = %d, %v; want version 2", seq, err)
			}
			rolled(t, p, 3, 2)
			close(stop)
			floor := cfg.Size - cfg.RefillConcurrency
			if lowest := <-low; lowest < floor {
				t.Errorf("the pool fell to %d clean VMs while rolling; the floor is pool_size - refill_concurrency = %d", lowest, floor)
			}
			s := p.Status()
			for _, v := range s.VMs {
				if v.Name == visitor.Name && (v.State != InUse || v.Version != 1) {
					t.Errorf("the visitor's VM is %s of version %d, want in-use on version 1, untouched", v.State, v.Version)
				}
			}
			if got := f.versionNames(); !slices.Equal(got, []string{"t-v1", "t-v2"}) {
				t.Errorf("versions = %v, want both: version 1 is kept for a rollback", got)
			}

			// A third version: the first is neither kept nor used, once
			// the visitor is done.
			if _, err := p.Publish(context.Background()); err != nil {
				t.Fatal(err)
			}
			rolled(t, p, 3, 3)
			if got := f.versionNames(); !slices.Contains(got, "t-v1") {
				t.Errorf("version 1 deleted while a session runs on it: versions %v", got)
			}
			p.End(visitor.Name, "done")
			poll.Until(t, 10*time.Second, "version 1 deleted", func() bool {
				return slices.Equal(f.versionNames(), []string{"t-v2", "t-v3"})
			})
			f.mu.Lock()
			defer f.mu.Unlock()
			for vol := range f.volumes {
				if strings.Contains(vol, "-v1-") {
					t.Errorf("volume %s of the deleted version remains", vol)
				}
			}
		})
	}
}

func TestRollback(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	rolled(t, p, 3, 1)
	ctx := context.Background()
	if _, _, err := p.Rollback(ctx); !errors.Is(err, ErrNoEarlier) {
		t.Errorf("Rollback() with one version = %v, want ErrNoEarlier", err)
	}
	p.Publish(ctx)
	rolled(t, p, 3, 2)
	from, to, err := p.Rollback(ctx)
	if err != nil || from != 2 || to != 1 {
		t.Fatalf("Rollback() = %d, %d, %v; want 2 -> 1", from, to, err)
	}
	rolled(t, p, 3, 1)
	if _, _, err := p.Rollback(ctx); !errors.Is(err, ErrNoEarlier) {
		t.Errorf("a second Rollback() = %v, want ErrNoEarlier", err)
	}
	// The version rolled back from stays until the next publish, which
	// does not reuse its number, and then goes.
	if got := f.versionNames(); !slices.Equal(got, []string{"t-v1", "t-v2"}) {
		t.Errorf("versions after the rollback = %v, want both", got)
	}
	if seq, err := p.Publish(ctx); err != nil || seq != 3 {
		t.Errorf("Publish() after a rollback = %d, %v; want version 3", seq, err)
	}
	rolled(t, p, 3, 3)
	poll.Until(t, 10*time.Second, "the rolled-back version deleted", func() bool {
		return slices.Equal(f.versionNames(), []string{"t-v1", "t-v3"})
	})
}

func TestPublishRefused(t *testing.T) {
	f := newFakeHV()
	p := startPool(t, f, testConfig())
	rolled(t, p, 3, 1)
	ctx := context.Background()

	f.mu.Lock()
	f.running = true
	f.mu.Unlock()
	_, err := p.Publish(ctx)
	if !errors.Is(err, domxml.ErrGolden) || !strings.Contains(err.Error(), "is running: shut it down") {
		t.Errorf("Publish() while the golden runs = %v, want it refused with the reason", err)
	}
	f.mu.Lock()
	f.running = false
	f.space = 10 << 20
	f.mu.Unlock()
	_, err = p.Publish(ctx)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Publish() without space = %v, want ErrNoSpace", err)
	}
	for _, want := range []string{"storage pool t-versions (/ver)", "needs 66 MiB", "10 MiB free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Publish() without space = %q, want it to say %q", err, want)
		}
	}
	if got := f.versionNames(); len(got) != 1 || len(p.Status().Versions) != 1 {
		t.Errorf("versions after refused publishes = %v", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.volumes) != 1 {
		t.Errorf("volumes after refused publishes = %v: nothing may be copied", f.volumes)
	}
}

// killablePool starts a pool that kill stops as a crash would: its loop
// ends at once and nothing waits for what it was doing.
func killablePool(t *testing.T, f *fakeHV, cfg Config) (*Pool, func()) {
	t.Helper()
	p := New(cfg, f, testLogger())
	p.setBackoff(10*time.Millisecond, 80*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	f.events <- virt.Event{Kind: virt.Connected}
	go func() {
		if err := p.Start(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("Start() = %v", err)
		}
	}()
	return p, func() {
		// Under the fake's lock, as a kill -9 is: no call of this pool's
		// that has not changed the fake yet will.
		f.mu.Lock()
		cancel()
		f.mu.Unlock()
		<-p.done
	}
}

// TestKillDuringPublish kills the broker at each step of a publish and of
// the roll after it: the next start uses no half-made version and leaks
// nothing.
func TestKillDuringPublish(t *testing.T) {
	for _, step := range []string{"copy", "copied", "define", "roll"} {
		t.Run(step, func(t *testing.T) {
			f := newFakeHV()
			cfg := testConfig()
			old, kill := killablePool(t, f, cfg)
			rolled(t, old, 3, 1)
			ctx := context.Background()
			if step == "roll" {
				f.pingErr = func(string) error { time.Sleep(50 * time.Millisecond); return nil } // a roll takes a moment
				if _, err := old.Publish(ctx); err != nil {
					t.Fatal(err)
				}
				poll.Until(t, 10*time.Second, "a roll under way", func() bool {
					s := old.Status()
					return s.Current == 2 && byVersion(old)[1] > 0 && s.Counts[Creating]+s.Counts[Booting]+s.Counts[Readying] > 0
				})
			} else {
				reached, release := make(chan struct{}), make(chan struct{})
				t.Cleanup(func() { close(release) })
				f.mu.Lock()
				f.step = func(s string) {
					if s == step {
						close(reached)
						<-release // the broker died here; its copy never returns
					}
				}
				f.mu.Unlock()
				go old.Publish(ctx)
				<-reached
			}
			kill()
			f.mu.Lock()
			f.step = nil
			f.mu.Unlock()

			p := startPool(t, f, cfg)
			want := 1
			if step == "roll" {
				want = 2
			}
			rolled(t, p, 3, want)
			poll.Until(t, 10*time.Second, "nothing left of the crash", func() bool {
				f.mu.Lock()
				defer f.mu.Unlock()
				for vol := range f.volumes {
					if !strings.HasPrefix(vol, "/ver/t-v1-") && !(want == 2 && strings.HasPrefix(vol, "/ver/t-v2-")) {
						return false // a half-made version's copy
					}
				}
				return len(f.domains) == 3 && len(f.overlays) == 3
			})
			if s := p.Status(); len(s.Versions) != want {
				t.Errorf("versions after the restart = %+v, want %d", s.Versions, want)
			}
		})
	}
}

func TestSurplusIsTrimmed(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.Size = 2
	p := startPool(t, f, cfg)
	rolled(t, p, 2, 1)
	// A legacy kiosk that asks and never links, 23 times: each offer's
	// replacement is made, and the offer comes back unused.
	for range 23 {
		poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) > 0 })
		v, err := p.Take(anyone)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Release(context.Background(), v.Name); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "the pool back at its size", func() bool {
		s := p.Status()
		return s.Counts[Clean] == 2 && len(s.VMs) == 2
	})
}

// TestFailedWipeIsRetriedPromptly: a transient libvirt error while wiping
// is retried with backoff, not left for the slow reconcile.
func TestFailedWipeIsRetriedPromptly(t *testing.T) {
	f := newFakeHV()
	fails := 0
	f.deleteErr = func(string) error {
		if fails < 3 {
			fails++
			return errors.New("refreshing storage pool t-overlays: internal error: pool 't-overlays' has asynchronous jobs running")
		}
		return nil
	}
	cfg := testConfig()
	cfg.ReconcileInterval = time.Hour
	p := startPool(t, f, cfg)
	ended := make(chan Ended, 8)
	go forward(p, ended)
	poll.Until(t, 10*time.Second, "a clean VM", func() bool { return clean(p) > 0 })
	f.mu.Lock()
	fails = 0
	f.mu.Unlock()
	v, _ := p.Take(anyone)
	p.MarkUsed(context.Background(), v.Name)
	p.End(v.Name, "done")
	select {
	case e := <-ended:
		for e.VM != v.Name {
			e = <-ended
		}
		if !e.Wiped {
			t.Errorf("Ended = %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the VM was not wiped after transient failures; status %+v", p.Status().VMs)
	}
}

func TestStartReplacesForeignVersions(t *testing.T) {
	f := newFakeHV()
	f.seedMeta("t-0000000a", domxml.Metadata{Pool: "t", State: "clean", Golden: "golden", Version: 7}, true, "/ovl/t-0000000a-vda.qcow2")
	f.seedMeta("t-0000000b", domxml.Metadata{Pool: "t", State: "clean", Golden: "win7", Version: 1}, true, "/ovl/t-0000000b-vda.qcow2")
	f.seed("t-0000000c", "clean", true, "/ovl/t-0000000c-vda.qcow2")
	cfg := testConfig()
	cfg.Size = 1
	p := startPool(t, f, cfg)
	rolled(t, p, 1, 1)
	names := f.domainNames()
	if !slices.Equal(names, []string{"t-0000000c"}) {
		t.Errorf("domains = %v, want only t-0000000c: clean clones of another version or golden are replaced, not kept", names)
	}
}

// TestStartReplacesCleanClonesOfAnotherPolicy: a clean clone made before
// the site changed its USB filter has the old <redirfilter>: it is
// replaced, and one made under the site's filter now is kept.
func TestStartReplacesCleanClonesOfAnotherPolicy(t *testing.T) {
	f := newFakeHV()
	f.seedMeta("t-0000000a", domxml.Metadata{Pool: "t", State: "clean", Golden: "golden", Version: 1}, true, "/ovl/t-0000000a-vda.qcow2")
	f.seedMeta("t-0000000b", domxml.Metadata{Pool: "t", State: "clean", Golden: "golden", Version: 1,
		Policy: "usb:8,-1,-1,-1,true|-1,-1,-1,-1,false"}, true, "/ovl/t-0000000b-vda.qcow2")
	cfg := testConfig()
	cfg.Size = 1
	cfg.USBFilter, _ = kioskproto.ParseUSBFilter("0x08,-1,-1,-1,1|-1,-1,-1,-1,0")
	p := startPool(t, f, cfg)
	rolled(t, p, 1, 1)
	if names := f.domainNames(); !slices.Equal(names, []string{"t-0000000b"}) {
		t.Errorf("domains = %v, want only t-0000000b: a clean clone of another USB policy is replaced", names)
	}
}

// TestRestartAnnouncesInterruptedSessions: VMs a killed broker left offered,
// in use or ending are announced with whom they were offered to, so their
// sessions get their audit lines.
func TestRestartAnnouncesInterruptedSessions(t *testing.T) {
	f := newFakeHV()
	linked := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i, state := range []string{"offered", "in-use", "ending"} {
		m := domxml.Metadata{Pool: "t", State: state, Golden: "golden", Version: 1, Kiosk: "k1", Lease: fmt.Sprintf("l-%d", i),
			Addr: "169.254.24.10", Offered: linked.Add(-time.Minute)}
		if state != "offered" {
			m.Linked = linked
		}
		f.seedMeta(fmt.Sprintf("t-0000000%d", i), m, true, fmt.Sprintf("/ovl/t-0000000%d-vda.qcow2", i))
	}
	f.seed("t-0000000f", "booting", true, "/ovl/t-0000000f-vda.qcow2") // no session: nothing to say
	p := New(testConfig(), f, testLogger())
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); p.Wait() }()
	f.events <- virt.Event{Kind: virt.Connected}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)
	got := map[string]Ended{}
	for len(got) < 4 {
		select {
		case e := <-p.Ended():
			got[e.VM] = e
		case <-time.After(10 * time.Second):
			t.Fatalf("announced %v, want 4", got)
		}
	}
	for i := range 3 {
		e := got[fmt.Sprintf("t-0000000%d", i)]
		if !e.Restart || e.Reason != ReasonRestart || e.Claim.Lease != fmt.Sprintf("l-%d", i) || e.Claim.Kiosk != "k1" || !e.Wiped {
			t.Errorf("Ended = %+v, want the lease and kiosk, ended by the restart, wiped", e)
		}
		if e.Used != (i > 0) || (i > 0 && !e.Linked.Equal(linked)) {
			t.Errorf("Ended = %+v: used and linked from the metadata", e)
		}
	}
	if e := got["t-0000000f"]; e.Restart {
		t.Errorf("a VM with no session announced as a restart's: %+v", e)
	}
}

// TestAutoPublish: with auto_publish, shutting the golden off after it ran
// publishes and rolls; at start, a golden changed since the current version
// is published too.
func TestAutoPublish(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.AutoPublish = true
	p := startPool(t, f, cfg)
	rolled(t, p, 3, 1)
	f.events <- virt.Event{Kind: virt.Started, Domain: "golden"}
	f.writeGolden()
	f.events <- virt.Event{Kind: virt.Stopped, Domain: "golden", Detail: "shutdown"}
	rolled(t, p, 3, 2)
	if r := p.Status().Publish.Reason; !strings.Contains(r, "auto_publish") {
		t.Errorf("publish reason = %q", r)
	}
}

func TestAutoPublishAtStart(t *testing.T) {
	f := newFakeHV()
	cfg := testConfig()
	cfg.AutoPublish = true
	first, kill := killablePool(t, f, cfg)
	rolled(t, first, 3, 1)
	kill()
	f.writeGolden() // changed while no broker ran
	second, kill2 := killablePool(t, f, cfg)
	rolled(t, second, 3, 2)
	kill2()

	// Unchanged: no new version at the next start.
	p2 := startPool(t, f, cfg)
	rolled(t, p2, 3, 2)
	time.Sleep(50 * time.Millisecond)
	if s := p2.Status(); s.Publish != nil {
		t.Errorf("a start with an unchanged golden published: %+v", s.Publish)
	}
}
