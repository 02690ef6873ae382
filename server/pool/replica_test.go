package pool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// TestReplica: a host without the golden serves nothing until it holds a
// copy of the golden host's current version; it then fills with clones of
// its own copy, never publishes, and rolls to the next copy as a publish
// rolls.
func TestReplica(t *testing.T) {
	gold := startPool(t, newFakeHV(), testConfig())
	poll.Until(t, 10*time.Second, "the golden host's first version", func() bool { return gold.Status().Current == 1 })

	f := newFakeHV()
	f.goldenErr = errors.New("no golden on this host") // Golden() is never asked
	cfg := testConfig()
	cfg.VersionDir = "/ver2"
	cfg.ReconcileInterval = 20 * time.Millisecond // the tick lists while there is no version yet
	f.seed("t-0badf00d", "in-use", true, "/ovl/t-0badf00d-vda.qcow2")
	copies := 0
	cfg.Replica = &Replica{From: "a", Copy: func(ctx context.Context, src domxml.Disk, name string, progress func(uint64, uint64)) (string, error) {
		copies++
		if !strings.HasPrefix(src.Path, "/ver/") {
			t.Errorf("copy of %s: want a version's volume on the golden's host", src.Path)
		}
		return f.CopyDisk(ctx, src, name, func(n uint64) { progress(n, src.Allocation) })
	}}
	p := New(cfg, f, testLogger())
	p.setBackoff(10*time.Millisecond, 80*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	f.events <- virt.Event{Kind: virt.Connected}
	started := make(chan error, 1)
	go func() { started <- p.Start(ctx) }()
	t.Cleanup(func() { cancel(); p.Wait() })

	poll.Until(t, 10*time.Second, "the replica paused for its copy", func() bool {
		return strings.Contains(p.Status().Paused, "waiting for a copy of the current version from host a")
	})
	time.Sleep(100 * time.Millisecond) // ticks with a leftover and no version: nothing to judge it by
	if _, err := p.Take(anyone); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Take() before any copy = %v, want ErrUnavailable", err)
	}
	if _, err := p.Publish(ctx); !errors.Is(err, ErrReplica) {
		t.Fatalf("Publish() on a replica = %v, want ErrReplica", err)
	}
	if err := p.Replicate(gold.CurrentVersion()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("Start() = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the replica did not start after its copy")
	}
	go p.Run(ctx)
	rolled(t, p, 3, 1)
	if copies != 1 {
		t.Errorf("copies = %d, want 1", copies)
	}
	s := p.Status()
	if s.Publish == nil || s.Publish.Written != s.Publish.Total || !strings.Contains(s.Publish.Reason, "from host a") {
		t.Errorf("status publish = %+v, want the finished copy from host a", s.Publish)
	}
	f.mu.Lock()
	for o, b := range f.backing {
		if b != "/ver2/t-v1-vda.qcow2" {
			t.Errorf("overlay %s backed by %s, want this host's copy", o, b)
		}
	}
	f.mu.Unlock()
	if slices.Contains(f.domainNames(), "t-0badf00d") {
		t.Errorf("the leftover in-use VM is still there after the first reconcile: %v", f.domainNames())
	}
	before := p.Status().Publish
	if err := p.Replicate(gold.CurrentVersion()); err != nil {
		t.Errorf("Replicate() of a version held = %v", err)
	}
	if after := p.Status().Publish; after.Started != before.Started {
		t.Errorf("Replicate() of a version held started a copy: %+v", after)
	}

	if _, err := gold.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "version 2 on the golden's host", func() bool { return gold.Status().Current == 2 })
	if err := p.Replicate(gold.CurrentVersion()); err != nil {
		t.Fatal(err)
	}
	rolled(t, p, 3, 2)
}
