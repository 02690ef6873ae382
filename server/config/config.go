// Package config reads the broker's configuration file (TOML). Every key is
// documented in vdi-broker.example.toml; unknown keys and bad values are
// errors that name the key and say what is wrong, so a typo never silently
// falls back to a default.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
)

// Example is the documented example configuration shipped with the broker.
//
//go:embed vdi-broker.example.toml
var Example string

// DefaultPath is where the systemd unit points the broker.
const DefaultPath = "/etc/undervdi/vdi-broker.toml"

// Config is the broker's configuration.
type Config struct {
	LibvirtURI        string   `toml:"libvirt_uri"`
	Golden            string   `toml:"golden"`
	PoolName          string   `toml:"pool_name"`
	PoolSize          int      `toml:"pool_size"`
	MaxVMs            int      `toml:"max_vms"`
	OverlayDir        string   `toml:"overlay_dir"`
	MemoryReserve     ByteSize `toml:"memory_reserve"`
	ReadyTimeout      Duration `toml:"ready_timeout"`
	RefillConcurrency int      `toml:"refill_concurrency"`
	FailureLimit      int      `toml:"failure_limit"`
	ReconcileInterval Duration `toml:"reconcile_interval"`
	AdminSocket       string   `toml:"admin_socket"`
	LogLevel          string   `toml:"log_level"`
}

// Default returns the configuration used for keys the file leaves out.
func Default() *Config {
	return &Config{
		LibvirtURI:        "qemu:///system",
		PoolName:          "undervdi",
		PoolSize:          2,
		MaxVMs:            8,
		OverlayDir:        "/var/lib/undervdi/overlays",
		MemoryReserve:     ByteSize(1 << 30),
		ReadyTimeout:      Duration(5 * time.Minute),
		RefillConcurrency: 2,
		FailureLimit:      3,
		ReconcileInterval: Duration(time.Minute),
		AdminSocket:       "/run/undervdi/admin.sock",
		LogLevel:          "info",
	}
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a configuration.
func Parse(data []byte) (*Config, error) {
	c := Default()
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, fmt.Errorf("line %d: %s: %s", pe.Position.Line, pe.LastKey, pe.Message)
			}
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, err
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("unknown key %q", k.String()))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, c.Validate()
}

var poolNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// Validate checks every value and reports all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(c.LibvirtURI); err != nil || u.Scheme == "" {
		bad("libvirt_uri", "%q is not a libvirt URI such as qemu:///system", c.LibvirtURI)
	}
	if c.Golden == "" {
		bad("golden", "required: the name of the shut-off libvirt domain to clone")
	}
	if !poolNameRE.MatchString(c.PoolName) {
		bad("pool_name", "%q must be 1-16 lowercase letters and digits, starting with a letter (it prefixes VM and overlay names)", c.PoolName)
	}
	if c.PoolSize < 1 {
		bad("pool_size", "%d: must be at least 1", c.PoolSize)
	}
	if c.MaxVMs < c.PoolSize {
		bad("max_vms", "%d: must be at least pool_size (%d)", c.MaxVMs, c.PoolSize)
	}
	if !filepath.IsAbs(c.OverlayDir) {
		bad("overlay_dir", "%q must be an absolute path", c.OverlayDir)
	}
	if c.ReadyTimeout < Duration(time.Second) {
		bad("ready_timeout", "%v: must be at least 1s", c.ReadyTimeout)
	}
	if c.RefillConcurrency < 1 {
		bad("refill_concurrency", "%d: must be at least 1", c.RefillConcurrency)
	}
	if c.FailureLimit < 1 {
		bad("failure_limit", "%d: must be at least 1", c.FailureLimit)
	}
	if c.ReconcileInterval < Duration(time.Second) {
		bad("reconcile_interval", "%v: must be at least 1s", c.ReconcileInterval)
	}
	if !filepath.IsAbs(c.AdminSocket) {
		bad("admin_socket", "%q must be an absolute path", c.AdminSocket)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q: must be debug, info, warn or error", c.LogLevel)
	}
	return errors.Join(errs...)
}

// Duration is a time.Duration written as "90s", "5m" or "1h30m".
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 90s or 5m", b)
	}
	if v < 0 {
		return fmt.Errorf("%q: must not be negative", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is an amount of memory or disk written as "512MiB" or "2GiB".
type ByteSize uint64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *ByteSize) UnmarshalText(b []byte) error {
	str := strings.TrimSpace(string(b))
	if str != "" && strings.Trim(str, "0123456789") == "" {
		return fmt.Errorf("%q needs a unit, such as %sMiB or %sGiB", str, str, str)
	}
	v, err := humanize.ParseBytes(str)
	if err != nil {
		return fmt.Errorf("%q is not a size such as 512MiB or 2GiB", str)
	}
	*s = ByteSize(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s ByteSize) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s ByteSize) String() string { return humanize.IBytes(uint64(s)) }
