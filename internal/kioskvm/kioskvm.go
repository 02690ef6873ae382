// Package kioskvm runs a kiosk machine in QEMU for tests and figures: the
// kiosk image booted directly, from a disk image (SD card or USB stick) or
// from the network, with a serial console to read, and QMP to take
// screenshots and to touch the screen.
package kioskvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"undervdi/internal/xvfb"
)

// Options say how to boot the kiosk.
type Options struct {
	Kernel, Initramfs, Cmdline string // direct kernel boot, if Kernel is set
	Disk                       string // a raw disk image, attached read-only
	DiskBus                    string // "virtio" (default), "usb" or "sd"
	UEFI                       bool   // OVMF instead of SeaBIOS
	NetBoot                    bool   // boot from the network card
	// Net is QEMU's -netdev value; default: user networking, where the host
	// is 10.0.2.2 (its loopback) and the kiosk 10.0.2.15.
	Net    string
	Memory int      // MiB, default 1536
	Extra  []string // more QEMU arguments
	Dir    string   // where logs and sockets go (a test's TempDir)
	// Prefix runs QEMU through another command (ip netns exec NAME).
	Prefix []string
}

// VM is a running kiosk machine.
type VM struct {
	Serial string // the serial console's log file
	cmd    *exec.Cmd
	qmp    string
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

// Start boots the kiosk.
func Start(o Options) (*VM, error) {
	if o.Memory == 0 {
		o.Memory = 1536
	}
	if o.Net == "" {
		o.Net = "user,id=net0"
	}
	vm := &VM{Serial: filepath.Join(o.Dir, "serial.log"), qmp: filepath.Join(o.Dir, "qmp.sock"), done: make(chan struct{})}
	args := []string{
		"-machine", "q35", "-cpu", "max", "-smp", "2", "-m", fmt.Sprint(o.Memory),
		"-display", "none", "-vga", "std", "-no-reboot",
		"-serial", "file:" + vm.Serial, "-qmp", "unix:" + vm.qmp + ",server=on,wait=off",
		"-netdev", o.Net, "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
		"-device", "virtio-rng-pci", "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet",
		"-audiodev", "none,id=snd0", // for a USB sound card plugged in (PlugUSBAudio)
	}
	if o.UEFI {
		vars := filepath.Join(o.Dir, "OVMF_VARS.fd")
		b, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS.fd")
		if err != nil {
			return nil, fmt.Errorf("UEFI firmware (apt-get install ovmf): %w", err)
		}
		if err := os.WriteFile(vars, b, 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
			"-drive", "if=pflash,format=raw,file="+vars)
	}
	if o.Kernel != "" {
		args = append(args, "-kernel", o.Kernel, "-initrd", o.Initramfs, "-append", o.Cmdline)
	}
	if o.Disk != "" {
		args = append(args, "-drive", "if=none,id=sd,format=raw,readonly=on,file="+o.Disk)
		switch o.DiskBus {
		case "", "virtio":
			args = append(args, "-device", "virtio-blk-pci,drive=sd,bootindex=1")
		case "usb":
			args = append(args, "-device", "usb-storage,bus=xhci.0,drive=sd,bootindex=1")
		default:
			return nil, fmt.Errorf("unknown disk bus %q", o.DiskBus)
		}
	}
	if o.NetBoot {
		args = append(args, "-boot", "n")
	}
	args = append(args, o.Extra...)
	argv := append(append([]string{}, o.Prefix...), append([]string{"qemu-system-x86_64"}, args...)...)
	vm.cmd = exec.Command(argv[0], argv[1:]...)
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := vm.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := vm.cmd.Wait()
		vm.mu.Lock()
		vm.err = fmt.Errorf("QEMU exited: %v: %s", err, strings.TrimSpace(stderr.String()))
		vm.mu.Unlock()
		close(vm.done)
	}()
	return vm, nil
}

// WaitFor waits until the serial console shows marker and returns the line.
func (vm *VM) WaitFor(ctx context.Context, marker string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		if line := vm.find(marker); line != "" {
			return line, nil
		}
		select {
		case <-vm.done:
			vm.mu.Lock()
			defer vm.mu.Unlock()
			return "", fmt.Errorf("waiting for %q: %v; console:\n%s", marker, vm.err, vm.Tail(30))
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no %q on the console within %v; console:\n%s", marker, d, vm.Tail(30))
		}
	}
}

// Seen tells whether the serial console has shown marker yet.
func (vm *VM) Seen(marker string) bool { return vm.find(marker) != "" }

// Count is how many lines of the console so far contain marker.
func (vm *VM) Count(marker string) int {
	b, _ := os.ReadFile(vm.Serial)
	return strings.Count(string(b), marker) // a marker never spans lines
}

func (vm *VM) find(marker string) string {
	f, err := os.Open(vm.Serial)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), marker) {
			return sc.Text()
		}
	}
	return ""
}

// Tail returns the console's last n lines.
func (vm *VM) Tail(n int) string {
	b, _ := os.ReadFile(vm.Serial)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop ends QEMU.
func (vm *VM) Stop() {
	vm.cmd.Process.Kill()
	<-vm.done
}

// qmp runs QMP commands and returns the last one's reply.
func (vm *VM) qmpRun(cmds ...map[string]any) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", vm.qmp, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return nil, err
	}
	var last json.RawMessage
	for _, cmd := range append([]map[string]any{{"execute": "qmp_capabilities"}}, cmds...) {
		b, _ := json.Marshal(cmd)
		if _, err := c.Write(append(b, '\n')); err != nil {
			return nil, err
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var reply struct {
				Return json.RawMessage `json:"return"`
				Error  *struct{ Desc string }
				Event  string
			}
			json.Unmarshal(line, &reply)
			if reply.Event != "" {
				continue
			}
			if reply.Error != nil {
				return nil, fmt.Errorf("QMP %v: %s", cmd["execute"], reply.Error.Desc)
			}
			last = reply.Return
			break
		}
	}
	return last, nil
}

// PlugUSBStick hot-plugs a USB flash drive, as id, whose contents are the
// raw disk image at path (written to, as a real stick would be).
func (vm *VM) PlugUSBStick(id, path string) error {
	_, err := vm.qmpRun(
		map[string]any{"execute": "blockdev-add", "arguments": map[string]any{"node-name": id, "driver": "raw",
			"file": map[string]any{"driver": "file", "filename": path}}},
		map[string]any{"execute": "device_add", "arguments": map[string]any{"driver": "usb-storage", "id": id,
			"drive": id, "bus": "xhci.0", "removable": true}},
	)
	return err
}

// PlugUSBAudio hot-plugs a USB sound card (46f4:0002, audio class), as id.
func (vm *VM) PlugUSBAudio(id string) error {
	_, err := vm.qmpRun(map[string]any{"execute": "device_add", "arguments": map[string]any{"driver": "usb-audio", "id": id, "bus": "xhci.0", "audiodev": "snd0"}})
	return err
}

// PlugUSBKeyboard hot-plugs a USB keyboard, as id.
func (vm *VM) PlugUSBKeyboard(id string) error {
	_, err := vm.qmpRun(map[string]any{"execute": "device_add", "arguments": map[string]any{"driver": "usb-kbd", "id": id, "bus": "xhci.0"}})
	return err
}

// Unplug removes a hot-plugged device.
func (vm *VM) Unplug(id string) error {
	_, err := vm.qmpRun(map[string]any{"execute": "device_del", "arguments": map[string]any{"id": id}})
	return err
}

// Touch presses and releases the left button at the screen's centre, as a
// finger on a touch screen does (QEMU's USB tablet has absolute axes).
func (vm *VM) Touch() error {
	ev := func(down bool) map[string]any {
		return map[string]any{"execute": "input-send-event", "arguments": map[string]any{"events": []any{
			map[string]any{"type": "abs", "data": map[string]any{"axis": "x", "value": 16384}},
			map[string]any{"type": "abs", "data": map[string]any{"axis": "y", "value": 16384}},
			map[string]any{"type": "btn", "data": map[string]any{"button": "left", "down": down}},
		}}}
	}
	_, err := vm.qmpRun(ev(true), ev(false))
	return err
}

// Screenshot returns the kiosk's screen.
func (vm *VM) Screenshot(dir string) (image.Image, error) {
	p := filepath.Join(dir, fmt.Sprintf("screen-%d.ppm", time.Now().UnixNano()))
	if _, err := vm.qmpRun(map[string]any{"execute": "screendump", "arguments": map[string]any{"filename": p}}); err != nil {
		return nil, err
	}
	defer os.Remove(p)
	return readPPM(p)
}

// WaitScreen takes screenshots until ok says the screen is right, for up to
// d (the first frame may follow the console's message). If it never is, the
// last screenshot is saved as dir/screen.png and the error says so.
func (vm *VM) WaitScreen(dir string, d time.Duration, ok func(image.Image) bool) error {
	deadline := time.Now().Add(d)
	for {
		shot, err := vm.Screenshot(dir)
		if err != nil {
			return err
		}
		if ok(shot) {
			return nil
		}
		if time.Now().After(deadline) {
			p := filepath.Join(dir, "screen.png")
			f, err := os.Create(p)
			if err == nil {
				png.Encode(f, shot)
				f.Close()
			}
			return fmt.Errorf("the screen was not as expected within %v (last screenshot: %s)", d, p)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ShowsSlideshow tells a screen with a picture and text on it (the
// slideshow's background and its status line) from a blank or text-mode
// one: at least three colours.
func ShowsSlideshow(img image.Image) bool { return xvfb.Colors(img, 3) >= 3 }

// readPPM decodes QEMU's screendump format (binary P6, 8 bits).
func readPPM(p string) (image.Image, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	r := bufio.NewReader(bytes.NewReader(b))
	var magic string
	var w, h, max int
	if _, err := fmt.Fscan(r, &magic, &w, &h, &max); err != nil || magic != "P6" || max != 255 {
		return nil, fmt.Errorf("%s: not an 8-bit P6 image (%v)", p, err)
	}
	r.ReadByte()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	px := make([]byte, 3)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			if _, err := r.Read(px[:1]); err != nil {
				return nil, err
			}
			r.Read(px[1:2])
			r.Read(px[2:3])
			img.SetRGBA(x, y, color.RGBA{px[0], px[1], px[2], 255})
		}
	}
	return img, nil
}
