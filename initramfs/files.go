package initramfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KioskUID is the kiosk session user's uid and gid in the image: the viewer
// runs as it, never as root.
const KioskUID = 1000

// XServer is how kioskd starts Xorg in the image: no TCP, never reset or
// blank the screen (the slideshow is the screen saver).
const XServer = "/usr/lib/xorg/Xorg :0 vt1 -nolisten tcp -noreset -s 0 -dpms -novtswitch"

// kioskdDefaults are the image's kioskd settings, the lowest layer: the boot
// partition's file, DHCP and the kernel command line override them.
var kioskdDefaults = `# The kiosk image's defaults. The boot partition's undervdi/kioskd.conf,
# DHCP option 224 and undervdi.<key>=<value> on the kernel command line
# override them, in that order.
xserver = ` + XServer + `
display = :0
session_user = kiosk
session_dir = /run/undervdi/session
ads_dir = /run/undervdi/ads
background_dir = /usr/share/undervdi/background
viewer = /usr/bin/remote-viewer
logind = no
usb_sysfs = /sys
usb_access = /run/undervdi/usb-access.sock
`

// xorgConf keeps Xorg from blanking and from loading GLX (not in the image).
const xorgConf = `Section "ServerFlags"
	Option "BlankTime" "0"
	Option "StandbyTime" "0"
	Option "SuspendTime" "0"
	Option "OffTime" "0"
	Option "DontVTSwitch" "true"
	Option "DontZap" "true"
EndSection

Section "Module"
	Disable "glx"
EndSection
`

// udevRules lets the session user open USB devices for redirection (the
// viewer is not root, and there is no polkit to ask).
const udevRules = `# undervdi: USB devices belong to the kiosk session, for redirection into the VM.
SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device", GROUP="kiosk", MODE="0660"
`

// generatedFiles returns the files the image gets that no package ships.
func generatedFiles(ctx context.Context, sys *sysroot) (map[string][]byte, error) {
	ca, err := caBundle(sys)
	if err != nil {
		return nil, err
	}
	mime, err := mimeCache(ctx, sys)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		"/etc/passwd":                             []byte(fmt.Sprintf("root:x:0:0:root:/root:/bin/false\nkiosk:x:%d:%d:kiosk session:/run/undervdi/session:/bin/false\n", KioskUID, KioskUID)),
		"/etc/group":                              []byte(fmt.Sprintf("root:x:0:\ntty:x:5:\ninput:x:101:\nvideo:x:44:\nkiosk:x:%d:\n", KioskUID)),
		"/etc/nsswitch.conf":                      []byte("passwd: files\ngroup: files\nhosts: files dns\n"),
		"/etc/hosts":                              []byte("127.0.0.1 localhost\n::1 localhost\n"),
		"/etc/os-release":                         []byte("NAME=\"undervdi kiosk\"\nID=undervdi-kiosk\nID_LIKE=debian\n"),
		"/etc/X11/xorg.conf.d/10-undervdi.conf":   []byte(xorgConf),
		"/etc/udev/rules.d/70-undervdi-usb.rules": []byte(udevRules),
		"/etc/undervdi/kioskd.conf":               []byte(kioskdDefaults),
		"/etc/ssl/certs/ca-certificates.crt":      ca,
		"/usr/share/mime/mime.cache":              mime,
	}, nil
}

// caBundle concatenates Mozilla's CA certificates the way
// update-ca-certificates would.
func caBundle(sys *sysroot) ([]byte, error) {
	var b bytes.Buffer
	for _, p := range sys.under("/usr/share/ca-certificates/mozilla") {
		if !strings.HasSuffix(p, ".crt") {
			continue
		}
		data, err := sys.read(p)
		if err != nil {
			return nil, err
		}
		b.Write(bytes.TrimSpace(data))
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return nil, fmt.Errorf("the ca-certificates package has no certificates")
	}
	return b.Bytes(), nil
}

// mimeCache builds the shared MIME database the way the package's install
// trigger would, with the package's own update-mime-database (it needs only
// GLib and libxml2, which the build host has), and returns mime.cache: GLib
// reads just that file.
func mimeCache(ctx context.Context, sys *sysroot) ([]byte, error) {
	tool, err := sys.resolve("/usr/bin/update-mime-database")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "undervdi-mime-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	pkgs := filepath.Join(tmp, "mime", "packages")
	if err := os.MkdirAll(pkgs, 0o755); err != nil {
		return nil, err
	}
	for _, p := range sys.under("/usr/share/mime/packages") {
		data, err := sys.read(p)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(pkgs, filepath.Base(p)), data, 0o644); err != nil {
			return nil, err
		}
	}
	if out, err := exec.CommandContext(ctx, tool.host, "-n", filepath.Join(tmp, "mime")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("update-mime-database: %v: %s", err, out)
	}
	return os.ReadFile(filepath.Join(tmp, "mime", "mime.cache"))
}
