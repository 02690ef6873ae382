//go:build integration

package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/internal/testlog"
	"undervdi/server/broker"
	"undervdi/server/pool"
	"undervdi/server/virt"
)

// markerAt is where the tests write inside the golden: past the first
// megabyte, which a visitor's write in TestRealPool's way overwrites.
const markerAt = 1 << 20

// startGolden boots the golden VM and waits for its guest agent.
func startGolden(t *testing.T, bed *testbed.Bed, h *virt.Host) {
	t.Helper()
	dom, err := bed.L.DomainLookupByName(bed.Golden.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.L.DomainCreate(dom); err != nil {
		t.Fatalf("starting the golden while the pool serves: %v", err)
	}
	poll.Until(t, 3*time.Minute, "the golden's guest agent", func() bool { return h.Ping(context.Background(), bed.Golden.Name) == nil })
}

// shutdownGolden powers the golden off from inside and waits until it is.
func shutdownGolden(t *testing.T, bed *testbed.Bed, h *virt.Host) {
	t.Helper()
	if _, err := h.AgentCommand(context.Background(), bed.Golden.Name, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
		t.Fatal(err)
	}
	dom, _ := bed.L.DomainLookupByName(bed.Golden.Name)
	poll.Until(t, time.Minute, "the golden shut off", func() bool {
		st, _, err := bed.L.DomainGetState(dom, 0)
		return err == nil && libvirt.DomainState(st) == libvirt.DomainShutoff
	})
}

// waitRolled waits until size clean VMs are all of version seq, the current
// one, and no VM is on its way in or out.
func (rp *realPool) waitRolled(t *testing.T, size, seq int) pool.Status {
	t.Helper()
	var s pool.Status
	poll.Until(t, 5*time.Minute, fmt.Sprintf("%d clean VMs of version %d", size, seq), func() bool {
		s = rp.Status()
		n, moving := 0, 0
		for _, v := range s.VMs {
			switch {
			case v.State == pool.Clean && v.Version == seq:
				n++
			case v.State != pool.InUse && v.State != pool.Offered && v.State != pool.Linking:
				moving++
			}
		}
		return s.Current == seq && n == size && moving == 0
	})
	return s
}

func cleanVM(t *testing.T, s pool.Status) string {
	t.Helper()
	for _, v := range s.VMs {
		if v.State == pool.Clean {
			return v.Name
		}
	}
	t.Fatal("no clean VM")
	return ""
}

func versionVolume(t *testing.T, s pool.Status, seq int) string {
	t.Helper()
	for _, v := range s.Versions {
		if v.Version == seq {
			return v.Volumes[0]
		}
	}
	t.Fatalf("no version %d in %+v", seq, s.Versions)
	return ""
}

// TestRealVersions is a golden's month on real libvirt and QEMU: the golden
// runs and is updated while the pool serves a visitor; the update is
// published and rolls through the pool, leaving the visitor alone; a
// rollback rolls back; old versions go when nothing uses or keeps them.
func TestRealVersions(t *testing.T) {
	bed := testbed.New(t)
	rp := startRealPool(t, bed, 2)
	rp.waitFull(t, 2)
	ctx := context.Background()
	marker := []byte("undervdi-golden-update-" + fmt.Sprint(time.Now().UnixNano()))

	var visitor pool.VM
	t.Run("the golden runs and is updated while a visitor works", func(t *testing.T) {
		startGolden(t, bed, rp.host)
		var err error
		if visitor, err = rp.Take(testClaim); err != nil {
			t.Fatal(err)
		}
		if err := rp.MarkUsed(ctx, visitor.Name); err != nil {
			t.Fatal(err)
		}
		writeDisk(t, rp.host, visitor.Name, []byte("visitor data"))
		writeDiskAt(t, rp.host, bed.Golden.Name, markerAt, marker)
		s := rp.Status()
		if s.Paused != "" || s.Counts[pool.InUse] != 1 {
			t.Errorf("status while the golden runs: paused %q, counts %v", s.Paused, s.Counts)
		}
		rp.waitRolled(t, 2, 1) // the visitor's VM was replaced, from version 1
		for _, v := range rp.Status().VMs {
			if v.State == pool.Clean {
				if err := rp.host.Ping(ctx, v.Name); err != nil {
					t.Errorf("clean VM %s while the golden runs: %v", v.Name, err)
				}
			}
		}
		if _, err := rp.Publish(ctx); err == nil || !strings.Contains(err.Error(), "is running") {
			t.Errorf("Publish() while the golden runs = %v, want it refused", err)
		}
		shutdownGolden(t, bed, rp.host)
	})

	t.Run("a publish rolls the pool and leaves the visitor alone", func(t *testing.T) {
		seq, err := rp.Publish(ctx)
		if err != nil || seq != 2 {
			t.Fatalf("Publish() = %d, %v", seq, err)
		}
		s := rp.waitRolled(t, 2, 2)
		if got := readDiskAt(t, rp.host, cleanVM(t, s), markerAt, len(marker)); !bytes.Equal(got, marker) {
			t.Errorf("a clone of version 2 reads %q where the golden's update wrote %q", got, marker)
		}
		if got := readDiskAt(t, rp.host, visitor.Name, markerAt, len(marker)); bytes.Equal(got, marker) {
			t.Errorf("the visitor's VM of version 1 sees the update: its disk changed under it")
		}
		for _, v := range s.VMs {
			if v.Name == visitor.Name && (v.State != pool.InUse || v.Version != 1) {
				t.Errorf("visitor's VM = %+v, want in-use on version 1", v)
			}
		}
		if p := s.Publish; p == nil || p.Finished == nil || p.Error != "" || p.Written != p.Total {
			t.Errorf("publish status = %+v", p)
		}
		rp.End(visitor.Name, "the visitor finished")
		waitEnded(t, rp, visitor.Name)
	})

	t.Run("a rollback rolls back", func(t *testing.T) {
		from, to, err := rp.Rollback(ctx)
		if err != nil || from != 2 || to != 1 {
			t.Fatalf("Rollback() = %d, %d, %v", from, to, err)
		}
		s := rp.waitRolled(t, 2, 1)
		if got := readDiskAt(t, rp.host, cleanVM(t, s), markerAt, len(marker)); bytes.Equal(got, marker) {
			t.Errorf("a clone after the rollback still sees version 2's update")
		}
	})

	t.Run("versions nothing uses or keeps are deleted", func(t *testing.T) {
		s := rp.Status()
		v1, v2 := versionVolume(t, s, 1), versionVolume(t, s, 2)
		seq, err := rp.Publish(ctx)
		if err != nil || seq != 3 {
			t.Fatalf("Publish() after the rollback = %d, %v; want version 3", seq, err)
		}
		rp.waitRolled(t, 2, 3)
		poll.Until(t, time.Minute, "version 2, rolled back from, deleted", func() bool {
			_, err := os.Stat(v2)
			return errors.Is(err, os.ErrNotExist)
		})
		if _, err := os.Stat(v1); err != nil {
			t.Errorf("version 1, the one kept for a rollback, is gone: %v", err)
		}
		if _, err := bed.L.DomainLookupByName(bed.Prefix + "-v2"); !libvirt.IsNotFound(err) {
			t.Errorf("version 2's template: lookup = %v, want it undefined", err)
		}
	})
}

// TestRealNoSpaceForVersion: a versions pool too small for the golden's
// disks refuses the publish before copying anything, and says why.
func TestRealNoSpaceForVersion(t *testing.T) {
	bed := testbed.New(t)
	if err := os.MkdirAll(bed.VersionDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "undervdi-test", bed.VersionDir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", bed.VersionDir).Run() })
	cfg := bed.Config(1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host, err := virt.Open(ctx, cfg.LibvirtURI, testlog.Logger())
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(broker.PoolConfig(cfg, nil), host, testlog.Logger())
	err = p.Start(ctx)
	if !errors.Is(err, pool.ErrNoSpace) {
		t.Fatalf("Start() with no room for the first version = %v, want ErrNoSpace", err)
	}
	for _, want := range []string{bed.Prefix + "-versions", bed.VersionDir, "needs", "free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start() = %q, want it to name %q", err, want)
		}
	}
	if files, _ := filepath.Glob(filepath.Join(bed.VersionDir, "*")); len(files) != 0 {
		t.Errorf("the refused publish copied %v", files)
	}
}
