//go:build integration

package pool_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"undervdi/internal/poll"
	"undervdi/server/broker"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/hostsetup"
	"undervdi/internal/testbed"
	"undervdi/internal/testlog"
	"undervdi/server/config"
	"undervdi/server/domxml"
	"undervdi/server/pool"
	"undervdi/server/qcow2"
	"undervdi/server/virt"
)

// realPool runs a pool on the real libvirt for the bed.
type realPool struct {
	*pool.Pool
	host  *virt.Host
	ended chan pool.Ended
}

func startRealPool(t *testing.T, bed *testbed.Bed, size int) *realPool {
	return startRealPoolB(t, bed, size)
}

func startRealPoolB(t testing.TB, bed *testbed.Bed, size int) *realPool {
	t.Helper()
	return startRealPoolC(t, bed.Config(size))
}

// startRealPoolC runs a pool with the configuration cfg.
func startRealPoolC(t testing.TB, cfg *config.Config) *realPool {
	t.Helper()
	log := testlog.Logger()
	ctx, cancel := context.WithCancel(context.Background())
	host, err := virt.Open(ctx, cfg.LibvirtURI, log)
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(broker.PoolConfig(cfg, nil), host, log)
	rp := &realPool{Pool: p, host: host, ended: make(chan pool.Ended, 64)}
	if err := p.Start(ctx); err != nil {
		cancel()
		t.Fatalf("Start() = %v", err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	go func() {
		for {
			select {
			case e := <-p.Ended():
				rp.ended <- e
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; p.Wait() })
	return rp
}

// testClaim is the kiosk the tests hand VMs to.
var testClaim = pool.Claim{Kiosk: "k1", Lease: "l-test", Addr: "127.0.0.1"}

func (rp *realPool) waitFull(t *testing.T, size int) {
	t.Helper()
	poll.Until(t, 5*time.Minute, fmt.Sprintf("%d clean VMs", size), func() bool {
		return rp.Status().Counts[pool.Clean] == size
	})
}

// agent runs a guest agent command and decodes its "return" into out.
func agent(t *testing.T, h *virt.Host, vm string, out any, cmd string, args ...any) {
	t.Helper()
	req := map[string]any{"execute": cmd}
	if len(args) > 0 {
		req["arguments"] = args[0]
	}
	b, _ := json.Marshal(req)
	res, err := h.AgentCommand(context.Background(), vm, string(b))
	if err != nil {
		t.Fatalf("guest agent %s on %s: %v", cmd, vm, err)
	}
	if out != nil {
		var env struct{ Return json.RawMessage }
		if err := json.Unmarshal([]byte(res), &env); err != nil {
			t.Fatalf("guest agent %s answer %q: %v", cmd, res, err)
		}
		if err := json.Unmarshal(env.Return, out); err != nil {
			t.Fatalf("guest agent %s return %q: %v", cmd, env.Return, err)
		}
	}
}

// writeDisk writes data at the start of the guest's /dev/vda and syncs, from
// inside the guest.
func writeDisk(t *testing.T, h *virt.Host, vm string, data []byte) { writeDiskAt(t, h, vm, 0, data) }

// writeDiskAt writes data at offset of the guest's /dev/vda and syncs.
func writeDiskAt(t *testing.T, h *virt.Host, vm string, offset int64, data []byte) {
	t.Helper()
	var handle int
	agent(t, h, vm, &handle, "guest-file-open", map[string]any{"path": "/dev/vda", "mode": "r+"})
	agent(t, h, vm, nil, "guest-file-seek", map[string]any{"handle": handle, "offset": offset, "whence": "set"})
	agent(t, h, vm, nil, "guest-file-write", map[string]any{"handle": handle, "buf-b64": base64.StdEncoding.EncodeToString(data)})
	agent(t, h, vm, nil, "guest-file-close", map[string]any{"handle": handle})
	var exec struct{ PID int }
	agent(t, h, vm, &exec, "guest-exec", map[string]any{"path": "/bbin/sync"})
	poll.Until(t, time.Minute, "sync in the guest", func() bool {
		var st struct{ Exited bool }
		agent(t, h, vm, &st, "guest-exec-status", map[string]any{"pid": exec.PID})
		return st.Exited
	})
}

// readDiskAt reads n bytes at offset of the guest's /dev/vda, from inside
// the guest.
func readDiskAt(t *testing.T, h *virt.Host, vm string, offset int64, n int) []byte {
	t.Helper()
	var handle int
	agent(t, h, vm, &handle, "guest-file-open", map[string]any{"path": "/dev/vda", "mode": "r"})
	defer agent(t, h, vm, nil, "guest-file-close", map[string]any{"handle": handle})
	agent(t, h, vm, nil, "guest-file-seek", map[string]any{"handle": handle, "offset": offset, "whence": "set"})
	var r struct {
		Buf string `json:"buf-b64"`
	}
	agent(t, h, vm, &r, "guest-file-read", map[string]any{"handle": handle, "count": n})
	b, err := base64.StdEncoding.DecodeString(r.Buf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestRealPool runs the pool's whole life on real libvirt and QEMU, sharing
// one pool between steps because every boot under TCG costs seconds.
func TestRealPool(t *testing.T) {
	bed := testbed.New(t)
	goldenSum := fileSum(t, bed.Golden.DiskPath)
	cfg := bed.Config(2)
	cfg.EncryptDisks = true // the default a site has
	rp := startRealPoolC(t, cfg)
	rp.waitFull(t, 2)
	ctx := context.Background()

	t.Run("clones are distinct and backed by the current version, never the golden", func(t *testing.T) {
		st := rp.Status()
		if len(st.Versions) != 1 || !st.Versions[0].Current || len(st.Versions[0].Volumes) != 1 {
			t.Fatalf("versions = %+v, want version 1 published at the first start", st.Versions)
		}
		version := st.Versions[0].Volumes[0]
		if fi, err := os.Stat(version); err != nil || fi.Mode().Perm() != 0o444 || !strings.HasPrefix(version, bed.VersionDir+"/") {
			t.Errorf("version volume %s: %v, %v; want a read-only file in %s", version, fi, err, bed.VersionDir)
		}
		doms, err := rp.host.Domains(ctx, bed.Prefix+"-")
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]string{}
		clones := 0
		for _, d := range doms {
			if d.Name == bed.Golden.Name {
				continue
			}
			clones++
			var overlays []string
			for _, disk := range d.Disks {
				if disk.Device == "disk" {
					overlays = append(overlays, disk.Path)
				}
			}
			ids := append([]string{"name:" + d.Name, "uuid:" + d.UUID, "spice:" + d.SpiceSocket, "password:" + d.SpicePassword}, overlays...)
			for _, m := range d.MACs {
				ids = append(ids, "mac:"+m)
			}
			for _, id := range ids {
				if other, dup := seen[id]; dup {
					t.Errorf("%s shared by %s and %s", id, other, d.Name)
				}
				seen[id] = d.Name
			}
			if len(overlays) != 1 || !strings.HasPrefix(overlays[0], bed.OverlayDir+"/") {
				t.Fatalf("%s disks = %v, want one overlay in %s", d.Name, overlays, bed.OverlayDir)
			}
			head, err := os.ReadFile(overlays[0])
			if err != nil {
				t.Fatal(err)
			}
			h, err := qcow2.Parse(head)
			if err != nil || h.BackingFile != version {
				t.Errorf("overlay %s: header %+v, %v; want backing file %s, the current version", overlays[0], h, err, version)
			}
			if d.SpiceSocket == "" || d.SpicePassword == "" {
				t.Errorf("%s has no SPICE socket or password: %q", d.Name, d.SpiceSocket)
			}
			// QEMU itself refuses USB devices the site does not allow:
			// keyboards and mice (HID, class 3) and hubs (9) never.
			dom, err := bed.L.DomainLookupByName(d.Name)
			if err != nil {
				t.Fatal(err)
			}
			live, err := bed.L.DomainGetXMLDesc(dom, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"<redirfilter>", `<usbdev class='0x03' allow='no'/>`, `<usbdev class='0x09' allow='no'/>`,
				`<usbdev class='0x08' allow='yes'/>`} {
				if !strings.Contains(live, want) {
					t.Errorf("the running %s lacks %s in its USB filter", d.Name, want)
				}
			}
		}
		if clones != 2 {
			t.Errorf("%d clones in libvirt, want 2", clones)
		}
	})

	t.Run("writes go to the encrypted overlay, never the golden, and are crypto-erased", func(t *testing.T) {
		v, err := rp.Take(testClaim)
		if err != nil {
			t.Fatal(err)
		}
		if err := rp.MarkUsed(ctx, v.Name); err != nil {
			t.Fatal(err)
		}
		secret := overlayKey(t, bed.L, v.Overlays[0])
		if secret == "" {
			t.Fatalf("overlay %s has no key with encrypt_disks on", v.Overlays[0])
		}
		marker := []byte("undervdi-visitor-data-" + strconv.FormatInt(time.Now().UnixNano(), 36))
		before := fileSum(t, v.Overlays[0])
		writeDisk(t, rp.host, v.Name, marker)
		if got := readDiskAt(t, rp.host, v.Name, 0, len(marker)); !bytes.Equal(got, marker) {
			t.Fatalf("the guest reads back %q, want %q", got, marker)
		}
		overlay, err := os.ReadFile(v.Overlays[0])
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(overlay, marker) {
			t.Errorf("the guest's write is in clear in its overlay %s", v.Overlays[0])
		}
		if sha256.Sum256(overlay) == before {
			t.Errorf("overlay unchanged by the guest's write")
		}
		if fileSum(t, bed.Golden.DiskPath) != goldenSum {
			t.Errorf("the golden disk changed")
		}
		// The guest's memory is no file and in no core dump.
		dom, err := bed.L.DomainLookupByName(v.Name)
		if err != nil {
			t.Fatal(err)
		}
		live, err := bed.L.DomainGetXMLDesc(dom, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(live, "dumpCore='off'") || strings.Contains(live, "<source type='file'") {
			t.Errorf("the running clone's memory is not kept out of dumps and files:\n%s", live)
		}
		rp.End(v.Name, "test done")
		waitEnded(t, rp, v.Name)
		if found := filesNamed(t, "/var/lib/libvirt/qemu", v.Name); len(found) > 0 {
			t.Errorf("libvirt keeps files of the wiped %s: %v", v.Name, found)
		}
		if _, err := os.Stat(v.Overlays[0]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("overlay %s after the session: %v, want it gone", v.Overlays[0], err)
		}
		if key := overlayKey(t, bed.L, v.Overlays[0]); key != "" {
			t.Errorf("the key of %s after the session: %s, want none", v.Overlays[0], key)
		}
		if found := scanFor(t, bed.Root, marker); len(found) > 0 {
			t.Errorf("the visitor's data is still in %v", found)
		}
	})

	t.Run("guest power-off ends the VM and wipes its disk", func(t *testing.T) {
		rp.waitFull(t, 2)
		v, err := rp.Take(testClaim)
		if err != nil {
			t.Fatal(err)
		}
		rp.MarkUsed(ctx, v.Name)
		if _, err := rp.host.AgentCommand(ctx, v.Name, `{"execute":"guest-shutdown"}`); !testbed.PoweredOff(err) {
			t.Fatalf("guest-shutdown: %v", err)
		}
		e := waitEnded(t, rp, v.Name)
		if e.Reason != "guest powered off or rebooted" || !e.Wiped || !e.Used {
			t.Errorf("Ended = %+v", e)
		}
		l, err := testbed.Connect()
		if err != nil {
			t.Fatal(err)
		}
		defer l.Disconnect()
		if _, err := l.DomainLookupByName(v.Name); !libvirt.IsNotFound(err) {
			t.Errorf("domain %s after power-off: lookup = %v, want not found", v.Name, err)
		}
		for _, o := range v.Overlays {
			if _, err := os.Stat(o); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("overlay %s after power-off: %v, want it gone", o, err)
			}
		}
		rp.waitFull(t, 2)
	})

	t.Run("concurrent takers never share a VM", func(t *testing.T) {
		rp.waitFull(t, 2)
		var mu sync.Mutex
		got := map[string]int{}
		var wg sync.WaitGroup
		for range 24 {
			wg.Go(func() {
				v, err := rp.Take(testClaim)
				if err != nil {
					return
				}
				mu.Lock()
				got[v.Name]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if len(got) != 2 {
			t.Errorf("24 takers got %v, want both clean VMs handed out once", got)
		}
		for name, n := range got {
			if n != 1 {
				t.Errorf("%s handed out %d times", name, n)
			}
			rp.End(name, "test done")
		}
	})

	if fileSum(t, bed.Golden.DiskPath) != goldenSum {
		t.Errorf("the golden disk changed during the test")
	}
}

// overlayKey returns the UUID of the libvirt secret that holds the key of
// the overlay at path, or "".
func overlayKey(t *testing.T, l *libvirt.Libvirt, path string) string {
	t.Helper()
	s, err := l.SecretLookupByUsage(int32(libvirt.SecretUsageTypeVolume), path)
	if e := (libvirt.Error{}); errors.As(err, &e) && e.Code == uint32(libvirt.ErrNoSecret) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", s.UUID)
}

// filesNamed returns the files under root whose path holds name: a
// managed save, a memory backing file, UEFI variables of a VM.
func filesNamed(t *testing.T, root, name string) []string {
	t.Helper()
	var found []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(path, name) {
			found = append(found, path)
		}
		return nil
	})
	return found
}

// scanFor returns the files under root that contain data.
func scanFor(t *testing.T, root string, data []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, data) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestRealPlainOverlay is the control of the crypto-erase checks above:
// with encrypt_disks off, the same write is there in clear in the overlay
// for the same scan to find, and the overlay has no key.
func TestRealPlainOverlay(t *testing.T) {
	bed := testbed.New(t)
	cfg := bed.Config(1)
	cfg.EncryptDisks = false
	rp := startRealPoolC(t, cfg)
	rp.waitFull(t, 1)
	v, err := rp.Take(testClaim)
	if err != nil {
		t.Fatal(err)
	}
	if err := rp.MarkUsed(context.Background(), v.Name); err != nil {
		t.Fatal(err)
	}
	if key := overlayKey(t, bed.L, v.Overlays[0]); key != "" {
		t.Errorf("plain overlay %s has a key %s", v.Overlays[0], key)
	}
	marker := []byte("undervdi-plain-data-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	writeDisk(t, rp.host, v.Name, marker)
	if found := scanFor(t, bed.Root, marker); len(found) != 1 || found[0] != v.Overlays[0] {
		t.Errorf("the guest's write found in %v, want in its plain overlay %s only", found, v.Overlays[0])
	}
	rp.End(v.Name, "test done")
	waitEnded(t, rp, v.Name)
}

func waitEnded(t *testing.T, rp *realPool, vm string) pool.Ended {
	t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case e := <-rp.ended:
			if e.VM == vm {
				return e
			}
		case <-timeout:
			t.Fatalf("%s did not end", vm)
		}
	}
}

func TestRealBadGolden(t *testing.T) {
	bed := testbed.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host, err := virt.Open(ctx, testbed.URI, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for ev := range host.Events() {
		if ev.Kind == virt.Connected {
			break
		}
	}
	if err := host.PrepareStorage(ctx, bed.Prefix, bed.OverlayDir, bed.VersionDir); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Golden(ctx, bed.Golden.Name); err != nil {
		t.Fatalf("Golden(good golden) = %v", err)
	}
	check := func(name string, want ...string) {
		t.Helper()
		_, err := host.Golden(ctx, name)
		if err == nil || !errors.Is(err, domxml.ErrGolden) {
			t.Errorf("Golden(%s) = %v, want ErrGolden", name, err)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Golden(%s) = %q, want it to say %q", name, err, w)
			}
		}
	}
	check(bed.Prefix+"-nosuchvm", "does not exist")

	t.Run("running", func(t *testing.T) {
		dom, _ := bed.L.DomainLookupByName(bed.Golden.Name)
		if err := bed.L.DomainCreate(dom); err != nil {
			t.Fatal(err)
		}
		check(bed.Golden.Name, "is running", "shut it down")
		bed.L.DomainDestroy(dom)
	})

	t.Run("internal snapshot", func(t *testing.T) {
		qemuImg(t, "snapshot", "-c", "oops", bed.Golden.DiskPath)
		check(bed.Golden.Name, "1 internal snapshot(s)", bed.Golden.DiskPath)
		qemuImg(t, "snapshot", "-d", "oops", bed.Golden.DiskPath)
		if _, err := host.Golden(ctx, bed.Golden.Name); err != nil {
			t.Errorf("Golden() after deleting the snapshot = %v", err)
		}
	})

	t.Run("disk that is not a file image", func(t *testing.T) {
		name := bed.Prefix + "-blockgolden"
		x := strings.Replace(strings.Replace(
			strings.Replace(testGoldenXML(bed), "<name>"+bed.Golden.Name+"</name>", "<name>"+name+"</name>", 1),
			"<disk type='file' device='disk'>", "<disk type='block' device='disk'>", 1),
			"<source file='"+bed.Golden.DiskPath+"'/>", "<source dev='/dev/null'/>", 1)
		dom, err := bed.L.DomainDefineXML(x)
		if err != nil {
			t.Fatal(err)
		}
		defer bed.L.DomainUndefine(dom)
		check(name, "disk vda is a \"block\" disk, not a file image")
	})

	t.Run("pool refuses to start", func(t *testing.T) {
		cfg := bed.Config(1)
		h2, err := virt.Open(ctx, testbed.URI, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		p := pool.New(pool.Config{Name: cfg.PoolName, Golden: bed.Prefix + "-nosuchvm", Size: 1, MaxVMs: 1,
			OverlayDir: cfg.OverlayDir, ReadyTimeout: time.Minute, RefillConcurrency: 1, FailureLimit: 1,
			ReconcileInterval: time.Minute}, h2, slog.New(slog.DiscardHandler))
		sctx, scancel := context.WithTimeout(ctx, time.Minute)
		defer scancel()
		if err := p.Start(sctx); !errors.Is(err, domxml.ErrGolden) {
			t.Errorf("Start() with a missing golden = %v, want ErrGolden", err)
		}
	})
}

// testGoldenXML is the golden's definition without its UUID, to define
// variants of it.
func testGoldenXML(bed *testbed.Bed) string {
	x, err := bed.L.DomainGetXMLDesc(mustLookup(bed), libvirt.DomainXMLInactive)
	if err != nil {
		panic(err)
	}
	return regexp.MustCompile(`<uuid>[^<]*</uuid>`).ReplaceAllString(x, "")
}

func mustLookup(bed *testbed.Bed) libvirt.Domain {
	d, err := bed.L.DomainLookupByName(bed.Golden.Name)
	if err != nil {
		panic(err)
	}
	return d
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

// TestRealLibvirtdRestart restarts libvirtd under a running pool: the pool
// must notice, reconnect by itself, keep its clean VM (QEMU outlives
// libvirtd), and serve again.
func TestRealLibvirtdRestart(t *testing.T) {
	bed := testbed.New(t)
	rp := startRealPool(t, bed, 1)
	rp.waitFull(t, 1)
	before := rp.Status().VMs[0].Name

	restartLibvirtd(t)
	poll.Until(t, 2*time.Minute, "reconnected and full", func() bool {
		s := rp.Status()
		return s.Connected && !s.Reconciling && s.Counts[pool.Clean] == 1
	})
	v, err := rp.Take(testClaim)
	if err != nil {
		t.Fatalf("Take() after the restart = %v", err)
	}
	if v.Name != before {
		t.Logf("clean VM %s was replaced by %s across the restart", before, v.Name)
	}
	if err := rp.host.Ping(context.Background(), v.Name); err != nil {
		t.Errorf("the VM's agent after the restart: %v", err)
	}
	rp.End(v.Name, "test done")
	waitEnded(t, rp, v.Name)
}

// restartLibvirtd restarts the libvirtd that .ci/run started, the same way.
func restartLibvirtd(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := hostsetup.RestartLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
}
