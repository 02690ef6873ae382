// Package appliance is kioskd's boot-time work when it is the u-root uinit
// of the kiosk image: it does what an init system and a distribution's
// early boot would, in one place and in order.
//
//  1. A tmpfs on /run; everything the kiosk writes lives in RAM.
//  2. Kernel modules by coldplug (the modalias of every device present,
//     matched against modules.alias) and by hotplug (kernel uevents).
//  3. udevd, so Xorg and libusb see input and USB devices with their
//     properties, and hear about new ones.
//  4. The boot partition (bootlayout.Label), if the kiosk booted from an SD
//     card or USB stick: marked read-only in the kernel and mounted
//     read-only, for the site's kioskd.conf and background images.
//  5. The network by DHCP, which may carry kiosk settings (bootlayout.DHCPOption).
//  6. The settings, lowest first: the image's /etc/undervdi/kioskd.conf, the
//     boot partition's undervdi/kioskd.conf, DHCP's option, and the kernel
//     command line's undervdi.<key>=<value> words.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"undervdi/internal/bootlayout"
	"undervdi/kioskd/config"
)

// Paths on the running kiosk.
const (
	BootMount   = "/run/undervdi/boot"
	imageConfig = config.DefaultPath
	udevd       = "/usr/lib/systemd/systemd-udevd"
	udevadm     = "/usr/bin/udevadm"
)

// Boot prepares the kiosk and returns its settings. Failures of optional
// parts (no boot partition, no DHCP) are logged and the boot goes on: the
// kiosk then shows that the service is unavailable and keeps trying.
// Settings that are wrong are an error naming where they came from.
func Boot(ctx context.Context, log *slog.Logger) (*config.Config, error) {
	stdlog.SetOutput(io.Discard) // u-root's DHCP client talks through the standard logger
	if err := mountTmpfs("/run", 0o755); err != nil {
		return nil, err
	}
	os.MkdirAll("/run/undervdi", 0o755)
	unix.Sethostname([]byte("kiosk"))
	os.Setenv("LANG", "C.UTF-8")
	os.Setenv("PATH", "/bin:/bbin:/usr/bin:/usr/sbin")
	cmdline, _ := os.ReadFile("/proc/cmdline")

	var uts unix.Utsname
	unix.Uname(&uts)
	mods := &Modules{Dir: filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:])), Log: log}
	if err := mods.LoadIndex(); err != nil {
		return nil, fmt.Errorf("the image's kernel modules: %w", err)
	}
	loaded := mods.Coldplug()
	log.Info("kernel modules loaded for the devices present", "count", len(loaded))
	go func() {
		if err := mods.Hotplug(ctx.Done()); err != nil {
			log.Error("device hotplug stopped: new devices get no driver", "err", err)
		}
	}()
	if err := startUdev(ctx, log); err != nil {
		log.Error("udev is not running: Xorg may find no input devices", "err", err)
	}

	cfg := config.Default()
	from := []string{"image"} // where settings came from, for the log
	if err := readFile(cfg, imageConfig); err != nil {
		return nil, err
	}
	if err := mods.Load("vfat", "nls_cp437", "nls_iso8859_1"); err != nil {
		log.Warn("cannot load the FAT file system modules", "err", err)
	}
	// Only a kiosk booted from a card or stick has a boot partition, and
	// only the one with the volume ID GRUB was told is it.
	if vol := cmdlineValue(string(cmdline), bootlayout.BootPartKey); vol != "" {
		if dev, err := findBootPart(ctx, vol, 15*time.Second); err != nil {
			log.Error("the boot partition did not appear; using the image's settings", "err", err)
		} else if err := mountReadOnly(dev, BootMount); err != nil {
			log.Error("cannot mount the boot partition", "device", dev, "err", err)
		} else {
			log.Info("boot partition mounted read-only", "device", dev, "volume", vol)
			site := filepath.Join(BootMount, bootlayout.Dir, bootlayout.Config)
			if err := readFile(cfg, site); err != nil {
				return nil, err
			}
			if _, err := os.Stat(site); err == nil {
				from = append(from, "boot partition")
			}
			if bg := filepath.Join(BootMount, bootlayout.Dir, bootlayout.Background); isDir(bg) {
				cfg.BackgroundDir = bg
			}
		}
	}

	lease, err := dhcp(ctx, log, bootif(string(cmdline)), 30*time.Second)
	switch {
	case err != nil:
		log.Error("no network", "err", err)
	case lease == nil:
		log.Error("no DHCP lease on any interface; check the cable and the kiosk network's DHCP server")
	default:
		log.Info("network up", "interface", lease.Interface, "address", lease.Address, "settings", lease.Settings != "")
		var keep []string
		if cfg.Token != "" {
			// The token is on the card (or in the image): who the kiosk
			// is and whom it trusts never come from the network.
			keep = config.TrustKeys
		}
		ignored, err := cfg.ApplyCmdlineExcept(lease.Settings, keep)
		if err != nil {
			return nil, fmt.Errorf("DHCP option %d: %w", bootlayout.DHCPOption, err)
		}
		if len(ignored) > 0 {
			log.Warn("DHCP sent settings this kiosk takes from its card only; ignored", "keys", strings.Join(ignored, ","))
		}
		if lease.Settings != "" {
			from = append(from, "DHCP")
		}
	}
	if err := cfg.ApplyCmdline(kioskWords(string(cmdline))); err != nil {
		return nil, err
	}
	if strings.Contains(kioskWords(string(cmdline)), "undervdi.") {
		from = append(from, "kernel command line")
	}
	log.Info("kiosk settings", "server", cfg.Server, "kiosk", cfg.Kiosk, "from", strings.Join(from, ", "))
	return cfg, cfg.Validate()
}

// kioskWords drops the command-line words that are the appliance's own
// (bootlayout.BootPartKey), leaving kioskd's settings.
func kioskWords(cmdline string) string {
	var keep []string
	for _, w := range strings.Fields(cmdline) {
		if !strings.HasPrefix(w, bootlayout.BootPartKey+"=") {
			keep = append(keep, w)
		}
	}
	return strings.Join(keep, " ")
}

// cmdlineValue returns the value of key=value on the command line.
func cmdlineValue(cmdline, key string) string {
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, key+"="); ok {
			return v
		}
	}
	return ""
}

// readFile applies a settings file over cfg; a missing file is fine.
func readFile(cfg *config.Config, path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := cfg.Read(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// startUdev runs udevd and replays the devices present, so its database
// has the properties (ID_INPUT_*) Xorg's input hotplug needs.
func startUdev(ctx context.Context, log *slog.Logger) error {
	d := exec.CommandContext(ctx, udevd)
	if err := d.Start(); err != nil {
		return err
	}
	go func() {
		if err := d.Wait(); err != nil && ctx.Err() == nil {
			log.Error("udevd exited", "err", err)
		}
	}()
	for _, args := range [][]string{{"trigger", "--type=subsystems", "--action=add"}, {"trigger", "--type=devices", "--action=add"}, {"settle", "--timeout=10"}} {
		if out, err := exec.CommandContext(ctx, udevadm, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("udevadm %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func mountTmpfs(dir string, mode os.FileMode) error {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+strconv.FormatUint(uint64(mode), 8)); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", dir, err)
	}
	return nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// Uptime is the time since the kernel started (the boot figures).
func Uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return time.Duration(s * float64(time.Second))
}

// Reboot restarts the machine after a fatal error, once the message had
// time to be read. It does not return: if the kernel refuses, kioskd exits,
// and init's end panics the kernel, which the image's panic= setting
// reboots.
func Reboot(after time.Duration) {
	time.Sleep(after)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	fmt.Fprintln(os.Stderr, "kioskd: reboot:", err)
	os.Exit(1)
}

// ImageVersion is the kiosk image's version, as the image build wrote it
// (initramfs.VersionFile); "" where kioskd does not run from the image.
func ImageVersion() string {
	b, err := os.ReadFile("/etc/undervdi-image")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
