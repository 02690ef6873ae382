//go:build integration

package kioskd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/brokertest"
	"undervdi/internal/freeport"
	"undervdi/internal/procstat"
	"undervdi/internal/testbed"
	"undervdi/internal/xvfb"
	"undervdi/kioskd"
	bconfig "undervdi/server/config"
)

// BenchmarkTouchToFrame measures a visitor's wait with a warm pool: from a
// touch on the slideshow to the guest's screen shown full screen by
// remote-viewer, through the broker and its SPICE gateway. The screen is
// sampled every few milliseconds, which bounds the precision.
func BenchmarkTouchToFrame(b *testing.B) {
	bed := testbed.New(b)
	kioskPort := freeport.Port(b)
	rb := brokertest.Start(b, bed, 2, func(c *bconfig.Config) { c.Sessions.Listen = fmt.Sprintf("0.0.0.0:%d", kioskPort) })
	r := startKiosk(b, bed, kioskPort)
	r.broker = rb
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		rb.WaitFull()
		r.waitState(kioskd.Idle, time.Minute)
		r.slideshowShown()
		b.StartTimer()
		start := time.Now()
		r.touch()
		for {
			img, err := r.x.Screenshot()
			if err != nil {
				b.Fatal(err)
			}
			if ok, _ := xvfb.ConsoleFullScreen(img); ok {
				break
			}
			if time.Since(start) > time.Minute {
				b.Fatal("the guest never showed")
			}
		}
		total += time.Since(start)
		b.StopTimer()
		syscall.Kill(r.viewerPID(), syscall.SIGKILL)
		r.waitState(kioskd.Idle, time.Minute)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-touch-to-frame")
}

// BenchmarkIdleMinute runs the kioskd binary for a minute on the slideshow
// (an image every 5 s, 1024x768) and reports its memory and CPU use.
func BenchmarkIdleMinute(b *testing.B) {
	x, err := xvfb.Start(context.Background(), 1024, 768)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(x.Stop)
	bin := filepath.Join(b.TempDir(), "kioskd")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/kioskd").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v: %s", err, out)
	}
	bg := b.TempDir()
	for i, c := range []string{"red", "green", "blue"} {
		writeTestImage(b, filepath.Join(bg, fmt.Sprintf("%d-%s.png", i, c)), i)
	}
	conf := filepath.Join(b.TempDir(), "kioskd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("server = 127.0.0.1\nport = %d\nkiosk = k\ntoken = t\ntls = false\ndisplay = %s\nads_url = off\n"+
		"ads_dir = %s\nbackground_dir = %s\nsession_dir = %s\nusb_sysfs =\nusb_access =\nlogind = no\nslide_interval = 5s\n",
		freeport.Port(b), x.Display, b.TempDir(), bg, b.TempDir())), 0o644)
	for b.Loop() {
		cmd := exec.Command(bin, "-config", conf, "-cmdline", "/dev/null")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Second) // start-up and first frames
		cpu0 := cpuTicks(b, cmd.Process.Pid)
		time.Sleep(time.Minute)
		cpu := cpuTicks(b, cmd.Process.Pid) - cpu0
		rss := rssKiB(b, cmd.Process.Pid)
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		b.ReportMetric(float64(rss)/1024, "RSS-MiB")
		b.ReportMetric(float64(cpu)/100/60*100, "CPU-%")
	}
}

func cpuTicks(b *testing.B, pid int) int {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(s)[strings.LastIndex(string(s), ")")+2:])
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return u + k // clock ticks, 100 a second
}

func rssKiB(b *testing.B, pid int) int {
	n, err := procstat.StatusKiB(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	return int(n)
}
