//go:build integration

package virt_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"undervdi/internal/testbed"
	"undervdi/server/domxml"
	"undervdi/server/virt"
	"undervdi/tinyvm"
)

// BenchmarkCloneDefine measures what the broker pays to make one clone
// (overlay through the storage API, derived XML, define) for goldens whose
// disks differ 100-fold in virtual size: a linked clone must cost the same.
// The boot is not included.
func BenchmarkCloneDefine(b *testing.B) {
	bed, host, _ := benchHost(b)
	ctx := context.Background()
	for _, size := range []struct {
		name  string
		bytes uint64
	}{{"golden=1GiB", 1 << 30}, {"golden=100GiB", 100 << 30}} {
		gname := fmt.Sprintf("%s-g%d", bed.Prefix, size.bytes>>30)
		if _, err := tinyvm.Define(bed.L, gname, filepath.Join(bed.Root, gname), bed.Art, 160, size.bytes); err != nil {
			b.Fatal(err)
		}
		g, err := host.Golden(ctx, gname)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(size.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("%s-%08x", bed.Prefix, i)
				path, _, err := host.CreateOverlay(ctx, name+"-vda.qcow2", g.WritableDisks()[0], false)
				if err != nil {
					b.Fatal(err)
				}
				x, err := g.CloneXML(domxml.Clone{
					Name: name, UUID: fmt.Sprintf("00000000-0000-4000-8000-%012x", i),
					Overlays: map[string]string{"vda": path}, SpicePassword: "bench",
					Meta: domxml.Metadata{Pool: bed.Prefix, State: "booting"},
					MAC:  func() string { return fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) },
				})
				if err != nil {
					b.Fatal(err)
				}
				dom, err := bed.L.DomainDefineXML(x)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				bed.L.DomainUndefine(dom)
				if err := host.DeleteOverlay(ctx, path); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkOverlay is what making one clone's overlay costs, plain and
// encrypted (LUKS, with its key's libvirt secret), side by side in one run.
func BenchmarkOverlay(b *testing.B) {
	bed, host, g := benchHost(b)
	ctx := context.Background()
	for _, enc := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "luks"}[enc], func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				path, _, err := host.CreateOverlay(ctx, fmt.Sprintf("%s-o%08x-vda.qcow2", bed.Prefix, i), g.WritableDisks()[0], enc)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := host.DeleteOverlay(ctx, path); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkGuestDisk boots a clone on a plain and on an encrypted overlay,
// side by side in one run, and has the guest write and read 32 MiB of its
// disk past its page cache: the boot (define to guest agent up: with LUKS,
// QEMU derives the key once more) and the guest's throughput.
func BenchmarkGuestDisk(b *testing.B) {
	bed, host, g := benchHost(b)
	ctx := context.Background()
	for _, enc := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "luks"}[enc], func(b *testing.B) {
			var boot time.Duration
			var write, read float64
			n := 0
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("%s-%08x", bed.Prefix, i)
				if enc {
					name = fmt.Sprintf("%s-%08x", bed.Prefix, 1<<24+i)
				}
				path, secret, err := host.CreateOverlay(ctx, name+"-vda.qcow2", g.WritableDisks()[0], enc)
				if err != nil {
					b.Fatal(err)
				}
				secrets := map[string]string{}
				if secret != "" {
					secrets["vda"] = secret
				}
				x, err := g.CloneXML(domxml.Clone{
					Name: name, UUID: uuid.NewString(), Overlays: map[string]string{"vda": path}, Secrets: secrets,
					SpicePassword: "bench", Meta: domxml.Metadata{Pool: bed.Prefix, State: "booting"},
					MAC: func() string { return fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff) },
				})
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				if _, err := host.DefineAndStart(ctx, x); err != nil {
					b.Fatal(err)
				}
				for host.Ping(ctx, name) != nil {
					if time.Since(start) > 3*time.Minute {
						b.Fatalf("%s: no guest agent after 3 minutes", name)
					}
					time.Sleep(100 * time.Millisecond)
				}
				boot += time.Since(start)
				r, err := tinyvm.Exec(ctx, bed.L, name, "disk", "bench", "-", "32")
				if err != nil || r.Err != "" {
					b.Fatalf("disk bench in the guest: %v %s", err, r.Err)
				}
				w, _ := r.Out["write_mbps"].(float64)
				rd, _ := r.Out["read_mbps"].(float64)
				write, read, n = write+w, read+rd, n+1
				b.StopTimer()
				if err := host.Destroy(ctx, name); err != nil {
					b.Fatal(err)
				}
				if err := host.DeleteOverlay(ctx, path); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(boot.Seconds()/float64(n), "boot-s")
			b.ReportMetric(write/float64(n), "write-MB/s")
			b.ReportMetric(read/float64(n), "read-MB/s")
		})
	}
}

// benchHost opens the bed's libvirt as the broker does, with the storage
// pools prepared, and reads the tiny golden.
func benchHost(b *testing.B) (*testbed.Bed, *virt.Host, *domxml.Golden) {
	bed := testbed.New(b)
	ctx := context.Background()
	host, err := virt.Open(ctx, testbed.URI, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	for ev := range host.Events() {
		if ev.Kind == virt.Connected {
			break
		}
	}
	if err := host.PrepareStorage(ctx, bed.Prefix, bed.OverlayDir, bed.VersionDir); err != nil {
		b.Fatal(err)
	}
	g, err := host.Golden(ctx, bed.Golden.Name)
	if err != nil {
		b.Fatal(err)
	}
	return bed, host, g
}
