//go:build integration

package virt_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

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
