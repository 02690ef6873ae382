//go:build integration

package initramfs

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"undervdi/internal/kioskvm"
)

// BenchmarkBootToSlideshow boots the kiosk image in QEMU (TCG, direct
// kernel boot, no broker) until kioskd says the slideshow is shown, and
// reports the time from power-on, and the kernel's and kioskd's shares by
// the kernel's clock: kernel = until it runs /init; userland = from there
// until the slideshow (u-root's init, kioskd's boot work, Xorg, the first
// frame).
func BenchmarkBootToSlideshow(b *testing.B) {
	img := kioskImageB(b)
	st, _ := os.Stat(img.Initramfs)
	var wall, kernel, total time.Duration
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		began := time.Now()
		vm, err := kioskvm.Start(kioskvm.Options{
			Kernel: img.Kernel, Initramfs: img.Initramfs, Dir: dir,
			Cmdline: "console=ttyS0 panic=-1 undervdi.server=10.0.2.2 undervdi.port=1 undervdi.kiosk=k1 undervdi.token=t undervdi.ads_url=off",
		})
		if err != nil {
			b.Fatal(err)
		}
		line, err := vm.WaitFor(context.Background(), "slideshow shown", 5*time.Minute)
		wall += time.Since(began)
		if err != nil {
			vm.Stop()
			b.Fatal(err)
		}
		initLine, _ := vm.WaitFor(context.Background(), "Run /init as init process", time.Second)
		vm.Stop()
		kernel += kernelClock(initLine)
		total += uptime(line)
	}
	n := float64(b.N)
	b.ReportMetric(wall.Seconds()/n, "poweron-to-slideshow-s")
	b.ReportMetric(kernel.Seconds()/n, "kernel-s")
	b.ReportMetric((total-kernel).Seconds()/n, "userland-s")
	b.ReportMetric(float64(st.Size())/(1<<20), "initramfs-MiB")
	b.ReportMetric(0, "ns/op")
}

var kernelStamp = regexp.MustCompile(`^\[\s*([0-9.]+)\]`)

// kernelClock reads "[    5.692743] Run /init as init process".
func kernelClock(line string) time.Duration {
	m := kernelStamp.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		return 0
	}
	s, _ := strconv.ParseFloat(m[1], 64)
	return time.Duration(s * float64(time.Second))
}

// uptime reads kioskd's `msg="slideshow shown" uptime=12.32s`.
func uptime(line string) time.Duration {
	_, v, ok := strings.Cut(line, "uptime=")
	if !ok {
		return 0
	}
	d, _ := time.ParseDuration(strings.Fields(v)[0])
	return d
}

func kioskImageB(b *testing.B) *Image {
	imageOnce.Do(buildImage)
	if imageErr != nil {
		b.Fatal(imageErr)
	}
	return image
}
