package appliance

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"undervdi/internal/kmod"
)

// Modules loads kernel modules by modalias from the image's module
// directory, using the index files the image builder wrote (modules.alias,
// modules.dep; read back by kmod.ReadIndex). It is safe for concurrent use.
type Modules struct {
	Dir string // /lib/modules/<release>
	Log *slog.Logger

	mu     sync.Mutex
	tree   *kmod.Tree
	loaded map[string]bool
}

// LoadIndex reads modules.alias and modules.dep.
func (m *Modules) LoadIndex() error {
	t, err := kmod.ReadIndex(os.DirFS(m.Dir))
	if err != nil {
		return err
	}
	m.tree, m.loaded = t, map[string]bool{}
	return nil
}

// ForAlias loads every module whose alias pattern matches modalias, with
// its dependencies, and returns the names newly loaded.
func (m *Modules) ForAlias(modalias string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, mod := range m.tree.Match(modalias) {
		if m.loaded[mod] {
			continue
		}
		if err := m.load(mod); err != nil {
			m.Log.Warn("cannot load a kernel module a device asks for", "module", mod, "device", modalias, "err", err)
			continue
		}
		out = append(out, mod)
	}
	return out
}

// order returns the module files to insert for name, dependencies first.
func (m *Modules) order(name string) ([]string, error) {
	mods, err := m.tree.Closure(name)
	if err != nil {
		return nil, err
	}
	files := make([]string, 0, len(mods))
	for _, mod := range mods {
		files = append(files, mod.Path)
	}
	return files, nil
}

// load inserts a module after its dependencies (deepest first).
func (m *Modules) load(name string) error {
	files, err := m.order(name)
	if err != nil {
		return err
	}
	for _, file := range files {
		dep := kmod.Canonical(strings.TrimSuffix(path.Base(file), ".ko"))
		if m.loaded[dep] {
			continue
		}
		f, err := os.Open(filepath.Join(m.Dir, file))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", file, err)
		}
		m.loaded[dep] = true
	}
	return nil
}

// Coldplug loads modules for the devices already present, repeating while
// loading drivers makes new devices appear (a USB host controller's driver
// brings up the keyboard behind it).
func (m *Modules) Coldplug() []string {
	var all []string
	seen := map[string]bool{}
	for round := 0; round < 5; round++ {
		var fresh []string
		filepath.WalkDir("/sys/devices", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "modalias" || d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			a := strings.TrimSpace(string(b))
			if a != "" && !seen[a] {
				seen[a] = true
				fresh = append(fresh, a)
			}
			return nil
		})
		if len(fresh) == 0 {
			break
		}
		for _, a := range fresh {
			all = append(all, m.ForAlias(a)...)
		}
	}
	return all
}

// Hotplug loads modules for devices that appear later (a USB keyboard
// plugged in, a flash drive), from the kernel's uevents, until done closes.
func (m *Modules) Hotplug(done <-chan struct{}) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) // room for udevadm trigger's burst
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return err
	}
	go func() { <-done; unix.Close(fd) }()
	buf := make([]byte, 16<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.ENOBUFS) {
			// Events were lost while the buffer was full: look at every
			// device again instead.
			if got := m.Coldplug(); len(got) > 0 {
				m.Log.Info("loaded kernel modules for new devices", "modules", got)
			}
			continue
		}
		if err != nil {
			select {
			case <-done:
				return nil
			default:
				return err
			}
		}
		if a := ueventModalias(buf[:n]); a != "" {
			if got := m.ForAlias(a); len(got) > 0 {
				m.Log.Info("loaded kernel modules for a new device", "modules", got, "device", a)
			}
		}
	}
}

// ueventModalias returns MODALIAS of an "add" uevent: "add@/devices/...\0
// ACTION=add\0...\0MODALIAS=usb:v...\0".
func ueventModalias(msg []byte) string {
	fields := bytes.Split(msg, []byte{0})
	if len(fields) == 0 || !bytes.HasPrefix(fields[0], []byte("add@")) {
		return ""
	}
	for _, f := range fields[1:] {
		if v, ok := bytes.CutPrefix(f, []byte("MODALIAS=")); ok {
			return string(v)
		}
	}
	return ""
}

// Load loads modules by name (file systems and character sets, which no
// device asks for by alias).
func (m *Modules) Load(names ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, n := range names {
		if !m.loaded[n] {
			errs = append(errs, m.load(n))
		}
	}
	return errors.Join(errs...)
}
