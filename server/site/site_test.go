package site

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/internal/testlog"
	"undervdi/server/domxml"
	"undervdi/server/pool"
)

func TestShares(t *testing.T) {
	up := func(w, room int) Slot { return Slot{Up: true, Weight: w, Room: room} }
	down := Slot{Weight: 1, Room: 10}
	pinned := func(g string, w, room int) Slot { return Slot{Up: true, Weight: w, Room: room, Pinned: g} }
	for _, tc := range []struct {
		name      string
		placement string
		size      int
		hosts     []Slot
		want      []int
	}{
		{"spread evenly", "spread", 5, []Slot{up(1, 10), up(1, 10)}, []int{3, 2}},
		{"spread by weight", "", 6, []Slot{up(2, 10), up(1, 10)}, []int{4, 2}},
		{"weight 0 counts as 1", "spread", 4, []Slot{up(0, 10), up(1, 10)}, []int{2, 2}},
		{"a full host's share goes to the others", "spread", 6, []Slot{up(1, 1), up(1, 10), up(1, 10)}, []int{1, 3, 2}},
		{"a host down gets none", "spread", 4, []Slot{down, up(1, 10)}, []int{0, 4}},
		{"more than the hosts hold", "spread", 9, []Slot{up(1, 2), up(1, 3)}, []int{2, 3}},
		{"none up", "spread", 3, []Slot{down, down}, []int{0, 0}},
		{"pack fills in order", "pack", 5, []Slot{up(1, 3), up(1, 10)}, []int{3, 2}},
		{"pack skips a host down", "pack", 5, []Slot{down, up(1, 3), up(1, 10)}, []int{0, 3, 2}},
		{"size 0", "spread", 0, []Slot{up(1, 3)}, []int{0}},
		{"a pinned group gets one first", "pack", 2, []Slot{up(1, 5), up(1, 5), pinned("b", 1, 5)}, []int{1, 0, 1}},
		{"each pinned group, on its heaviest host", "spread", 2, []Slot{pinned("a", 1, 5), pinned("a", 3, 5), pinned("b", 1, 5), up(1, 5)}, []int{0, 1, 1, 0}},
		{"a pinned group without room gets none", "spread", 2, []Slot{up(1, 5), pinned("b", 1, 0)}, []int{2, 0}},
		{"fewer VMs than pinned groups", "spread", 1, []Slot{pinned("a", 1, 5), pinned("b", 1, 5)}, []int{1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Shares(tc.placement, tc.size, tc.hosts); !slices.Equal(got, tc.want) {
				t.Errorf("Shares(%q, %d, %+v) = %v, want %v", tc.placement, tc.size, tc.hosts, got, tc.want)
			}
		})
	}
}

func FuzzShares(f *testing.F) {
	f.Add(false, 7, uint64(0x0102030405060708), uint8(3))
	f.Fuzz(func(t *testing.T, pack bool, size int, seed uint64, n uint8) {
		size, n = size%200, n%8+1
		if size < 0 {
			size = -size
		}
		hosts := make([]Slot, n)
		room := 0
		for i := range hosts {
			b := byte(seed >> (8 * (i % 8)))
			hosts[i] = Slot{Up: b&1 == 0, Weight: int(b>>1) % 4, Room: int(b>>3) % 12}
			if b&0x80 != 0 {
				hosts[i].Pinned = string(rune('a' + i%3))
			}
			if hosts[i].Up {
				room += hosts[i].Room
			}
		}
		placement := "spread"
		if pack {
			placement = "pack"
		}
		got := Shares(placement, size, hosts)
		sum := 0
		for i, s := range got {
			if s < 0 || s > hosts[i].Room || (!hosts[i].Up && s != 0) {
				t.Fatalf("host %d %+v got %d", i, hosts[i], s)
			}
			sum += s
		}
		if sum != min(size, room) {
			t.Fatalf("Shares(%s, %d, %+v) = %v: %d placed, want %d", placement, size, hosts, got, sum, min(size, room))
		}
		// Every pinned group that can hold one has one, VMs allowing.
		groups, served := map[string]bool{}, map[string]bool{}
		for i, h := range hosts {
			if h.Pinned != "" && h.Up && h.Room > 0 {
				groups[h.Pinned] = true
				served[h.Pinned] = served[h.Pinned] || got[i] > 0
			}
		}
		if len(groups) <= size {
			for g := range groups {
				if !served[g] {
					t.Fatalf("Shares(%s, %d, %+v) = %v: pinned group %s has none", placement, size, hosts, got, g)
				}
			}
		}
	})
}

// fakePool is one host's pool as the site sees it.
type fakePool struct {
	mu       sync.Mutex
	st       pool.Status
	clean    []string
	wait     chan struct{}
	ended    chan pool.Ended
	ver      *domxml.Version // its current version
	calls    []string
	replicas []int
}

func newFake(host string, clean int, current int) *fakePool {
	f := &fakePool{wait: make(chan struct{}), ended: make(chan pool.Ended, 16),
		st: pool.Status{Connected: true, Current: current, MaxVMs: 10, Counts: map[pool.State]int{}, Recorded: map[string]int{}}}
	for i := range clean {
		f.clean = append(f.clean, fmt.Sprintf("%s-%d", host, i))
	}
	if current > 0 {
		f.ver = &domxml.Version{Meta: domxml.VersionMeta{Seq: current}}
		f.st.Versions = []pool.VersionStatus{{Version: current}}
	}
	return f
}

func (f *fakePool) log(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakePool) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakePool) set(change func(st *pool.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.st)
}

func (f *fakePool) Take(c pool.Claim) (pool.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.st.Connected {
		return pool.VM{}, fmt.Errorf("%w: libvirt connection lost", pool.ErrUnavailable)
	}
	if len(f.clean) == 0 {
		return pool.VM{}, pool.ErrNoCleanVM
	}
	name := f.clean[0]
	f.clean = f.clean[1:]
	f.st.VMs = append(f.st.VMs, pool.VMStatus{Name: name, State: pool.Offered})
	return pool.VM{Name: name, State: pool.Offered}, nil
}

func (f *fakePool) WaitClean() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wait
}

func (f *fakePool) MarkUsed(ctx context.Context, name string) error {
	f.log("used %s", name)
	return nil
}
func (f *fakePool) Finish(name string, used bool, reason string) {
	if used {
		f.End(name, reason)
		return
	}
	f.log("released %s", name)
}
func (f *fakePool) End(name, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.ContainsFunc(f.st.VMs, func(v pool.VMStatus) bool { return v.Name == name }) {
		return pool.ErrUnknownVM
	}
	f.calls = append(f.calls, "ended "+name+": "+reason)
	return nil
}
func (f *fakePool) Ended() <-chan pool.Ended { return f.ended }
func (f *fakePool) Status() pool.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Counts = map[pool.State]int{pool.Clean: len(f.clean)}
	st.Recorded = map[string]int{"clean": len(f.clean)}
	for _, v := range f.st.VMs {
		st.Counts[v.State]++
		st.Recorded[v.State.Recorded()]++
	}
	st.VMs = slices.Clone(f.st.VMs)
	return st
}
func (f *fakePool) SetSize(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Size = n
	return nil
}
func (f *fakePool) Publish(ctx context.Context) (int, error) {
	f.log("publish")
	return f.st.Current + 1, nil
}
func (f *fakePool) Rollback(ctx context.Context) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "rollback")
	from := f.st.Current
	f.st.Current--
	return from, f.st.Current, nil
}
func (f *fakePool) CurrentVersion() *domxml.Version {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ver
}
func (f *fakePool) Replicate(ver *domxml.Version) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replicas = append(f.replicas, ver.Meta.Seq)
	f.st.Publish = &pool.PublishStatus{Version: ver.Meta.Seq} // under way until the test finishes it
	return nil
}

func (f *fakePool) size() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.Size
}

// runSite runs a site of the fakes, a and b, the golden on a.
func runSite(t *testing.T, cfg Config, a, b *fakePool) *Site {
	t.Helper()
	if cfg.Tick == 0 {
		cfg.Tick = 5 * time.Millisecond
	}
	s := New(cfg, []Host{{Name: "a", Group: "main", Weight: 1, Capacity: 10, Pool: a},
		{Name: "b", Group: "branch", Weight: 1, Capacity: 10, Pool: b}}, testlog.Logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func TestTakeRoutesByHost(t *testing.T) {
	a, b := newFake("a", 2, 1), newFake("b", 2, 1)
	s := runSite(t, Config{Size: 4, KioskGroup: func(k string) string {
		if k == "branch-kiosk" {
			return "branch"
		}
		return ""
	}}, a, b)
	poll.Until(t, 5*time.Second, "shares 2 and 2", func() bool { return a.size() == 2 && b.size() == 2 })

	got := map[string]bool{}
	for range 2 {
		vm, err := s.Take(pool.Claim{Kiosk: "k1"})
		if err != nil {
			t.Fatal(err)
		}
		got[vm.Name[:1]] = true
	}
	if !got["a"] || !got["b"] {
		t.Errorf("two Takes with spread took from %v, want one of each host", got)
	}
	vm, err := s.Take(pool.Claim{Kiosk: "branch-kiosk"})
	if err != nil || vm.Name != "b-1" {
		t.Fatalf("a branch kiosk's Take() = %q, %v; want b-1, from its group's host", vm.Name, err)
	}
	if _, err := s.Take(pool.Claim{Kiosk: "branch-kiosk"}); !errors.Is(err, pool.ErrNoCleanVM) {
		t.Errorf("a branch kiosk's Take() with its host empty = %v, want ErrNoCleanVM although host a has one", err)
	}
	if err := s.MarkUsed(context.Background(), "b-1"); err != nil {
		t.Fatal(err)
	}
	s.Finish("a-0", false, "not linked")
	s.Finish("b-1", true, "over")
	s.Finish("nowhere", true, "over")
	if err := s.End("b-0", "done"); err != nil {
		t.Fatal(err)
	}
	if err := s.End("nowhere", "done"); !errors.Is(err, pool.ErrUnknownVM) {
		t.Errorf("End(unknown) = %v, want ErrUnknownVM", err)
	}
	if !slices.Equal(a.Calls(), []string{"released a-0"}) || !slices.Equal(b.Calls(), []string{"used b-1", "ended b-1: over", "ended b-0: done"}) {
		t.Errorf("calls: a %v, b %v", a.Calls(), b.Calls())
	}

	a.ended <- pool.Ended{VM: "a-0"}
	select {
	case e := <-s.Ended():
		if e.VM != "a-0" {
			t.Errorf("Ended() = %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a host's announcement did not reach the site's")
	}
	if err := s.MarkUsed(context.Background(), "a-0"); !errors.Is(err, pool.ErrUnknownVM) {
		t.Errorf("MarkUsed of a VM ended = %v, want ErrUnknownVM", err)
	}

	st := s.Status()
	if len(st.Hosts) != 2 || st.Hosts[1].Name != "b" || st.Hosts[1].Group != "branch" || st.Size != 4 || st.MaxVMs != 20 {
		t.Errorf("status = %+v", st)
	}
	for _, v := range st.VMs {
		if v.Host != v.Name[:1] {
			t.Errorf("VM %s listed on host %q", v.Name, v.Host)
		}
	}
}

func TestHostLost(t *testing.T) {
	a, b := newFake("a", 2, 1), newFake("b", 2, 1)
	var mu sync.Mutex
	var lost []string
	s := runSite(t, Config{Size: 4, LostAfter: 50 * time.Millisecond, Lost: func(vm, reason string) bool {
		mu.Lock()
		defer mu.Unlock()
		lost = append(lost, vm+": "+reason)
		return true
	}}, a, b)
	poll.Until(t, 5*time.Second, "shares 2 and 2", func() bool { return a.size() == 2 && b.size() == 2 })
	var onB string
	for onB == "" {
		vm, err := s.Take(pool.Claim{Kiosk: "k1"})
		if err != nil {
			t.Fatal(err)
		}
		if vm.Name[0] == 'b' {
			onB = vm.Name
		}
	}

	b.set(func(st *pool.Status) { st.Connected = false })
	poll.Until(t, 5*time.Second, "host a to carry the whole pool", func() bool { return a.size() == 4 })
	if b.size() != 2 {
		t.Errorf("the lost host's size = %d, want it left at 2 for when it is back", b.size())
	}
	poll.Until(t, 5*time.Second, "the session on b ended", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lost) > 0
	})
	mu.Lock()
	if lost[0] != onB+": "+ReasonHostLost {
		t.Errorf("lost = %v, want %s ended with %q", lost, onB, ReasonHostLost)
	}
	mu.Unlock()
	if h := s.Status().Hosts[1]; h.Connected || h.Lost == nil {
		t.Errorf("host b's status = %+v, want lost", h)
	}

	b.set(func(st *pool.Status) { st.Connected, st.Reconciling = true, true })
	time.Sleep(50 * time.Millisecond)
	if a.size() != 4 {
		t.Errorf("host a's share = %d while b reconciles, want the whole pool", a.size())
	}
	b.set(func(st *pool.Status) { st.Reconciling = false })
	poll.Until(t, 5*time.Second, "the shares spread again", func() bool { return b.size() == 2 && a.size() == 2 })
}

func TestReplicatesTheGoldensVersion(t *testing.T) {
	a, b := newFake("a", 0, 2), newFake("b", 0, 1)
	s := runSite(t, Config{Size: 2}, a, b)
	poll.Until(t, 5*time.Second, "a copy of version 2 to b", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return slices.Equal(b.replicas, []int{2})
	})
	time.Sleep(50 * time.Millisecond)
	b.mu.Lock()
	if len(b.replicas) != 1 {
		t.Errorf("copies asked = %v while one runs, want one", b.replicas)
	}
	now := time.Now()
	b.st.Publish, b.st.Current = &pool.PublishStatus{Version: 2, Finished: &now}, 2
	b.st.Versions = append(b.st.Versions, pool.VersionStatus{Version: 2})
	b.mu.Unlock()

	// The golden's host rolls back: b follows.
	if _, _, err := s.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.ver = &domxml.Version{Meta: domxml.VersionMeta{Seq: 1}}
	a.mu.Unlock()
	poll.Until(t, 5*time.Second, "host b rolled back", func() bool { return slices.Contains(b.Calls(), "rollback") })
	if _, err := s.Publish(context.Background()); err != nil || !slices.Contains(a.Calls(), "publish") {
		t.Errorf("Publish() = %v; calls on a %v, want it on the golden's host", err, a.Calls())
	}
}

func TestNames(t *testing.T) {
	var n Names
	a, b := n.For("a"), n.For("b")
	if !a.Claim("vm-1") || !a.Claim("vm-1") {
		t.Error("a host cannot claim a name it holds")
	}
	if b.Claim("vm-1") {
		t.Error("a name live on host a was claimed on b")
	}
	b.Release("vm-1") // not b's: nothing happens
	if b.Claim("vm-1") {
		t.Error("another host's release freed a's name")
	}
	a.Release("vm-1")
	if !b.Claim("vm-1") {
		t.Error("a name released is still taken")
	}
}

// TestFailedCopyRetried: a copy that failed is asked again, not at once
// but after CopyRetry.
func TestFailedCopyRetried(t *testing.T) {
	a, b := newFake("a", 0, 2), newFake("b", 0, 1)
	runSite(t, Config{Size: 2, CopyRetry: 200 * time.Millisecond}, a, b)
	asked := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.replicas)
	}
	poll.Until(t, 5*time.Second, "a first copy", func() bool { return asked() == 1 })
	failed := time.Now()
	b.set(func(st *pool.Status) {
		st.Publish = &pool.PublishStatus{Version: 2, Finished: &failed, Error: "the versions pool is full"}
	})
	time.Sleep(100 * time.Millisecond)
	if n := asked(); n != 1 {
		t.Fatalf("copies asked = %d right after a failure, want 1: no retry before CopyRetry", n)
	}
	poll.Until(t, 5*time.Second, "the copy asked again", func() bool { return asked() == 2 })
	if since := time.Since(failed); since < 200*time.Millisecond {
		t.Errorf("asked again %v after the failure, want CopyRetry (200ms)", since)
	}
}
