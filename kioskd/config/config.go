// Package config reads kioskd's settings: a key=value file like the
// original kiosk's /etc/client.conf (whose keys it accepts), then
// undervdi.<key>=<value> overrides from the kernel command line, which is
// how a network-booted or SD-card kiosk is told who it is.
package config

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"undervdi/internal/bootlayout"
	"undervdi/kioskproto"
)

// Example is the documented example configuration.
//
//go:embed kioskd.example.conf
var Example string

// DefaultPath is where kioskd reads its file.
const DefaultPath = "/etc/undervdi/kioskd.conf"

// DefaultCA is where the broker's CA is, on the kiosk image and on a
// systemd kiosk: image-build puts the site's there.
const DefaultCA = "/" + bootlayout.CAPath

// Config holds kioskd's settings.
type Config struct {
	Server        string        // the broker's host (client.conf: server_ip)
	Port          int           // the kiosk protocol's port
	Kiosk         string        // this kiosk's id; empty means legacy mode
	Token         string        // this kiosk's secret
	TLS           bool          // speak TLS to the broker (the default); never falls back to plaintext
	CA            string        // the CA the broker's certificate must chain to; "system": the system's
	BrokerName    string        // the name the broker's certificate must carry
	LegacyPort    int           // the original signal port (client.conf: vdi_signal_port)
	SpicePort     int           // the SPICE gateway, for legacy mode (client.conf: vdi_spice_port)
	AdsURL        string        // where the broker serves the ads; "off" to disable
	AdsEvery      time.Duration // how often the ads are mirrored
	AdsDir        string        // the ads mirror, in tmpfs (client.conf: animation_folder)
	BackgroundDir string        // shown when there are no ads (client.conf: background_folder)
	SlideInterval time.Duration
	Touch         string        // what starts a session: "key", "button" or "key,button"
	IdleLimit     time.Duration // 0: the broker's
	IdleWarning   time.Duration
	Display       string
	XServer       string // command that starts the X server; empty: use the running one
	SessionUser   string // user (name or uid) the viewer runs as, never root; empty: kioskd's own, if it is not root
	SessionDir    string // the session's tmpfs home, wiped at every logout
	Viewer        string
	ViewerArgs    string // extra remote-viewer arguments, space separated
	USBRedirect   string // spice-gtk USB filter used instead of the broker's; "": the broker's
	USBSysfs      string // sysfs root for the USB reset; empty disables it
	USBAccess     string // kioskd's socket granting the viewer USB devices; empty: none granted
	Logind        string // "auto", "yes" or "no": end sessions through logind (systemd kiosks)
	LogLevel      string
}

// Default returns the settings a key takes when nothing sets it.
// DefaultSessionUser is the dedicated unprivileged user visitors' sessions
// run as; the boot image has it (uid 1000).
const DefaultSessionUser = "kiosk"

func Default() *Config {
	return &Config{
		Port:          5907,
		TLS:           true,
		CA:            DefaultCA,
		BrokerName:    "vdi-broker",
		LegacyPort:    5905,
		SpicePort:     5906,
		AdsEvery:      5 * time.Minute,
		AdsDir:        "/run/undervdi/ads",
		BackgroundDir: "/usr/share/undervdi/background",
		SlideInterval: 5 * time.Second,
		Touch:         "key,button",
		IdleWarning:   30 * time.Second,
		Display:       ":0",
		SessionUser:   DefaultSessionUser,
		SessionDir:    "/run/undervdi/session",
		Viewer:        "/usr/bin/remote-viewer",
		USBSysfs:      "/sys",
		USBAccess:     "/run/undervdi/usb-access.sock",
		Logind:        "auto",
		LogLevel:      "info",
	}
}

// key describes one setting: its name and the original's name for it.
type key struct {
	name, legacy string
	set          func(c *Config, v string) error
}

func str(f func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *f(c) = v; return nil }
}

func port(f func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q is not a port number", v)
		}
		*f(c) = n
		return nil
	}
}

func dur(f func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			// The original counted in seconds.
			n, nerr := strconv.Atoi(v)
			if nerr != nil {
				return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
			}
			d = time.Duration(n) * time.Second
		}
		if d < 0 {
			return fmt.Errorf("%q must not be negative", v)
		}
		*f(c) = d
		return nil
	}
}

func oneOf(f func(*Config) *string, allowed ...string) func(*Config, string) error {
	return func(c *Config, v string) error {
		for _, a := range allowed {
			if v == a {
				*f(c) = v
				return nil
			}
		}
		return fmt.Errorf("%q: must be one of %s", v, strings.Join(allowed, ", "))
	}
}

var keys = []key{
	{"server", "server_ip", str(func(c *Config) *string { return &c.Server })},
	{"port", "", port(func(c *Config) *int { return &c.Port })},
	{"kiosk", "", str(func(c *Config) *string { return &c.Kiosk })},
	{"token", "", str(func(c *Config) *string { return &c.Token })},
	{"tls", "", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q: must be true or false", v)
		}
		c.TLS = b
		return nil
	}},
	{"ca", "", str(func(c *Config) *string { return &c.CA })},
	{"broker_name", "", str(func(c *Config) *string { return &c.BrokerName })},
	{"legacy_port", "vdi_signal_port", port(func(c *Config) *int { return &c.LegacyPort })},
	{"spice_port", "vdi_spice_port", port(func(c *Config) *int { return &c.SpicePort })},
	{"ads_url", "", str(func(c *Config) *string { return &c.AdsURL })},
	{"ads_every", "", dur(func(c *Config) *time.Duration { return &c.AdsEvery })},
	{"ads_dir", "animation_folder", str(func(c *Config) *string { return &c.AdsDir })},
	{"background_dir", "background_folder", str(func(c *Config) *string { return &c.BackgroundDir })},
	{"slide_interval", "", dur(func(c *Config) *time.Duration { return &c.SlideInterval })},
	{"touch", "", oneOf(func(c *Config) *string { return &c.Touch }, "key", "button", "key,button")},
	{"idle_limit", "", dur(func(c *Config) *time.Duration { return &c.IdleLimit })},
	{"idle_warning", "", dur(func(c *Config) *time.Duration { return &c.IdleWarning })},
	{"display", "", str(func(c *Config) *string { return &c.Display })},
	{"xserver", "", str(func(c *Config) *string { return &c.XServer })},
	{"session_user", "", str(func(c *Config) *string { return &c.SessionUser })},
	{"session_dir", "", str(func(c *Config) *string { return &c.SessionDir })},
	{"viewer", "", str(func(c *Config) *string { return &c.Viewer })},
	{"viewer_args", "", str(func(c *Config) *string { return &c.ViewerArgs })},
	{"usb_redirect", "", str(func(c *Config) *string { return &c.USBRedirect })},
	{"usb_sysfs", "", str(func(c *Config) *string { return &c.USBSysfs })},
	{"usb_access", "", str(func(c *Config) *string { return &c.USBAccess })},
	{"logind", "", oneOf(func(c *Config) *string { return &c.Logind }, "auto", "yes", "no")},
	{"log_level", "", oneOf(func(c *Config) *string { return &c.LogLevel }, "debug", "info", "warn", "error")},
}

func lookup(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name || (k.legacy != "" && k.legacy == name) {
			return k, true
		}
	}
	return key{}, false
}

// Load reads the file at path over the defaults.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c := Default()
	if err := c.Read(f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Read applies key=value lines; '#' starts a comment. Unknown keys and bad
// values are errors naming the line and the key; all are reported.
func (c *Config) Read(r io.Reader) error {
	var errs []error
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("line %d: %q is not key=value", n, line))
			continue
		}
		if err := c.set(strings.TrimSpace(name), unquote(strings.TrimSpace(value))); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
		}
	}
	return errors.Join(append(errs, sc.Err())...)
}

func (c *Config) set(name, value string) error {
	k, ok := lookup(name)
	if !ok {
		return fmt.Errorf("unknown key %q", name)
	}
	if err := k.set(c, value); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// ApplyCmdline applies undervdi.<key>=<value> words of a kernel command
// line (/proc/cmdline); values may be double-quoted. Other words are the
// kernel's and are ignored.
func (c *Config) ApplyCmdline(cmdline string) error {
	_, err := c.ApplyCmdlineExcept(cmdline, nil)
	return err
}

// TrustKeys are the settings that say who the kiosk is and which broker it
// trusts. A kiosk that has its token on its own card takes none of them
// from the network: DHCP is anyone's on the kiosk LAN, and a rogue server
// could otherwise turn TLS off, or name a CA of its own, and be sent the
// card's token.
var TrustKeys = []string{"kiosk", "token", "tls", "ca", "broker_name"}

// ApplyCmdlineExcept is ApplyCmdline, leaving the keys in skip as they are;
// it returns the ones it left.
func (c *Config) ApplyCmdlineExcept(cmdline string, skip []string) (skipped []string, err error) {
	var errs []error
	for _, w := range splitCmdline(cmdline) {
		rest, ok := strings.CutPrefix(w, "undervdi.")
		if !ok {
			continue
		}
		name, value, _ := strings.Cut(rest, "=")
		if slices.Contains(skip, name) {
			skipped = append(skipped, name)
			continue
		}
		if err := c.set(name, unquote(value)); err != nil {
			errs = append(errs, fmt.Errorf("kernel command line: %w", err))
		}
	}
	return skipped, errors.Join(errs...)
}

// splitCmdline splits on spaces outside double quotes, as the kernel does.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case unicode.IsSpace(r) && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// Legacy reports whether the kiosk speaks the original signal-port
// protocol (no kiosk id and token configured).
func (c *Config) Legacy() bool { return c.Kiosk == "" }

// Validate checks the settings as a whole.
func (c *Config) Validate() error {
	var errs []error
	bad := func(k, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", k, fmt.Sprintf(format, a...)))
	}
	if c.Server == "" {
		bad("server", "required: the broker's address (server_ip in the original client.conf)")
	} else if strings.ContainsAny(c.Server, "/ ") {
		bad("server", "%q is not a host name or address", c.Server)
	}
	if c.Kiosk != "" && c.Token == "" {
		bad("token", "required with kiosk (the secret the broker knows this kiosk by)")
	}
	if c.Kiosk == "" && c.Token != "" {
		bad("kiosk", "required with token")
	}
	for k, dir := range map[string]string{"ads_dir": c.AdsDir, "background_dir": c.BackgroundDir, "session_dir": c.SessionDir, "usb_access": c.USBAccess} {
		if dir != "" && !filepath.IsAbs(dir) {
			bad(k, "%q must be an absolute path", dir)
		}
	}
	if c.USBAccess != "" && c.SessionDir != "" && strings.HasPrefix(filepath.Clean(c.USBAccess)+"/", filepath.Clean(c.SessionDir)+"/") {
		bad("usb_access", "%q must not be in session_dir (%s): the visitor's files are wiped there", c.USBAccess, c.SessionDir)
	}
	if c.SessionDir == "" || filepath.Clean(c.SessionDir) == "/" {
		bad("session_dir", "required, and not /: it is wiped at every logout")
	}
	if c.SlideInterval < 100*time.Millisecond {
		bad("slide_interval", "%v: too short", c.SlideInterval)
	}
	if c.TLS && !c.Legacy() {
		switch {
		case c.CA == "":
			bad("ca", "required with tls: the broker's CA (vdi-broker ca prints it), or \"system\"")
		case c.CA != "system" && !filepath.IsAbs(c.CA):
			bad("ca", "%q must be an absolute path, or \"system\"", c.CA)
		}
		if c.BrokerName == "" {
			bad("broker_name", "required with tls: the name in the broker's certificate")
		}
	}
	if _, err := kioskproto.ParseUSBFilter(c.USBRedirect); err != nil {
		bad("usb_redirect", "%v", err)
	}
	if c.IdleLimit != 0 && c.IdleWarning >= c.IdleLimit {
		bad("idle_warning", "%v must be shorter than idle_limit (%v)", c.IdleWarning, c.IdleLimit)
	}
	return errors.Join(errs...)
}

// BrokerAddr is the kiosk protocol's host:port.
func (c *Config) BrokerAddr() string { return net.JoinHostPort(c.Server, strconv.Itoa(c.Port)) }

// Ads returns the ads URL: the configured one, or the broker's default.
func (c *Config) Ads() string {
	switch c.AdsURL {
	case "off":
		return ""
	case "":
		return "http://" + net.JoinHostPort(c.Server, "5908") + "/ads/"
	}
	return c.AdsURL
}

// Keys lists the setting names, for documentation and tests.
func Keys() []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.name)
	}
	sort.Strings(out)
	return out
}
