// Package config reads the broker's configuration file (TOML). Every key is
// documented in vdi-broker.example.toml; unknown keys and bad values are
// errors that name the key and say what is wrong, so a typo never silently
// falls back to a default.
package config

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"

	"undervdi/kioskproto"
	"undervdi/server/egress"
	"undervdi/server/schedule"
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
	VersionDir        string   `toml:"versions_dir"`
	KeepVersions      int      `toml:"keep_versions"`
	AutoPublish       bool     `toml:"auto_publish"`
	EncryptDisks      bool     `toml:"encrypt_disks"`
	MemoryReserve     ByteSize `toml:"memory_reserve"`
	ReadyTimeout      Duration `toml:"ready_timeout"`
	RefillConcurrency int      `toml:"refill_concurrency"`
	FailureLimit      int      `toml:"failure_limit"`
	ReconcileInterval Duration `toml:"reconcile_interval"`
	AdminSocket       string   `toml:"admin_socket"`
	StateDir          string   `toml:"state_dir"`
	LogLevel          string   `toml:"log_level"`
	// Hosts are the site's KVM hosts (hosts.go); none: libvirt_uri alone.
	Hosts     []Host `toml:"hosts"`
	Placement string `toml:"placement"`         // spread or pack
	VMUnits   int    `toml:"vm_units,omitzero"` // what one VM costs of a host's units

	Gateway  Gateway         `toml:"gateway"`
	Sessions Sessions        `toml:"sessions"`
	Viewer   Viewer          `toml:"viewer"`
	Ads      Ads             `toml:"ads"`
	Metrics  Metrics         `toml:"metrics"`
	API      API             `toml:"api"`
	Images   Images          `toml:"images"`
	Network  Network         `toml:"network"`
	Schedule schedule.Config `toml:"schedule"`
	Kiosks   []Kiosk         `toml:"kiosk"`
}

// Network is the guest network: what visitors' VMs may reach.
type Network struct {
	// Mode "isolated": each clone gets one interface on the broker's
	// libvirt network, behind the broker's filters; "golden": clones keep
	// the golden's interfaces, and the site's own network design must keep
	// visitors apart (nothing of this section applies).
	Mode      string   `toml:"mode"`
	Subnet    string   `toml:"subnet"`     // IPv4, /16 to /27; the gateway is its first address
	Bridge    string   `toml:"bridge"`     // "": uvdi-<pool_name>
	Allow     []string `toml:"allow"`      // names, *.name patterns, IPv4 addresses and ranges
	Resolver  string   `toml:"resolver"`   // host:port of the DNS server allowed names are resolved with; "": the host's
	ProxyPort int      `toml:"proxy_port"` // the explicit proxy, on the gateway
	// BrokerAddress is the broker's address on the hosts' backend network,
	// where clones on hosts other than this machine reach its DNS and
	// proxies (each such host's guest_subnet is routed to it). Required
	// with such a host.
	BrokerAddress string `toml:"broker_address,omitempty"`
}

// Isolated reports whether the broker manages the guest network.
func (n Network) Isolated() bool { return n.Mode == "isolated" }

// HostPlan is the guest network's layout on host h; nil unless Isolated.
// On the broker's machine it is Plan; on another host, its guest_subnet,
// routed to network.broker_address.
func (c *Config) HostPlan(h Host) (*egress.Plan, error) {
	plan, err := c.hostSubnet(h)
	if err != nil || plan == nil || !h.Remote() {
		return plan, err
	}
	broker, err := netip.ParseAddr(c.Network.BrokerAddress)
	if err != nil {
		return nil, fmt.Errorf("network.broker_address %q is not an IPv4 address", c.Network.BrokerAddress)
	}
	return plan.Routed(broker)
}

// hostSubnet is host h's guest network on its subnet, not yet routed to
// the broker; nil unless Isolated.
func (c *Config) hostSubnet(h Host) (*egress.Plan, error) {
	if !c.Network.Isolated() || !h.Remote() {
		return c.Plan()
	}
	subnet, err := netip.ParsePrefix(h.GuestSubnet)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IPv4 range such as 10.213.1.0/24", h.GuestSubnet)
	}
	return egress.NewPlan(c.PoolName, subnet, c.Network.Bridge, c.Network.ProxyPort)
}

// Plan is the guest network's layout on the broker's own machine; nil
// unless Isolated.
func (c *Config) Plan() (*egress.Plan, error) {
	if !c.Network.Isolated() {
		return nil, nil
	}
	subnet, err := netip.ParsePrefix(c.Network.Subnet)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IPv4 range such as 10.213.0.0/24", c.Network.Subnet)
	}
	return egress.NewPlan(c.PoolName, subnet, c.Network.Bridge, c.Network.ProxyPort)
}

// Images says which kiosk image is current: the manifests image-build
// wrote for what the site's PXE server serves and its SD cards carry.
type Images struct {
	Manifests []string `toml:"manifests"` // manifest.json files; none: kiosks' images are not checked
}

// API is the REST API (and the web console) over HTTPS, for the site's
// operators and scripts. Every request but /healthz is authenticated.
type API struct {
	Listen      string   `toml:"listen"`       // "": only the admin socket
	TLSCert     string   `toml:"tls_cert"`     // "": the site CA's broker certificate
	TLSKey      string   `toml:"tls_key"`      //
	Accounts    string   `toml:"accounts"`     // the accounts file vdi-broker passwd and token write
	LoginTTL    Duration `toml:"login_ttl"`    // a login ends this long after it began
	IdleTimeout Duration `toml:"idle_timeout"` // or this long after its last request
	Metrics     bool     `toml:"metrics"`      // also serve /metrics here, to any account
}

// Metrics is where Prometheus scrapes the broker.
type Metrics struct {
	// Listen is a loopback address ("127.0.0.1:9107"): the metrics are not
	// authenticated, so they stay on the broker's machine (a Prometheus
	// there, or a tunnel to one). "": no metrics.
	Listen string `toml:"listen"`
}

// Ads is the advertising folder the kiosks mirror.
type Ads struct {
	Dir    string `toml:"dir"`    // "" serves none
	Listen string `toml:"listen"` // HTTP, for kiosk addresses only
}

// Gateway is the SPICE gateway: the only way to a VM's screen.
type Gateway struct {
	Listen          string   `toml:"listen"`         // the original's vdi_spice_port: plaintext, legacy kiosks only
	TLSListen       string   `toml:"tls_listen"`     // SPICE over TLS, for every other kiosk
	PublicHost      string   `toml:"public_host"`    // what kiosks are told to connect to
	ConnectWindow   Duration `toml:"connect_window"` // the original's count_conn_tryes
	Grace           Duration `toml:"grace"`
	MaxConnsPerAddr int      `toml:"max_conns_per_addr"`
	// HostsCA is the CA file that signed the hosts' SPICE TLS certificates:
	// the gateway's trust for a VM on a host other than this machine.
	HostsCA string `toml:"hosts_ca,omitempty"`
}

// Sessions is the kiosk side: the kiosk protocol, the legacy signal port,
// and when sessions end.
type Sessions struct {
	Listen           string   `toml:"listen"`
	LegacyListen     string   `toml:"legacy_listen"` // the original's vdi_signal_port
	Heartbeat        Duration `toml:"heartbeat"`
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	IdleHeartbeat    Duration `toml:"idle_heartbeat"` // a kiosk with no session beats this often
	IdleLimit        Duration `toml:"idle_limit"`
	MaxSession       Duration `toml:"max_session"`
	QueueLimit       int      `toml:"queue_limit"`
	MaxConnsPerAddr  int      `toml:"max_conns_per_addr"`
	TLSCert          string   `toml:"tls_cert"`
	TLSKey           string   `toml:"tls_key"`
	Plaintext        bool     `toml:"plaintext"`
	AuditLog         string   `toml:"audit_log"`
	AuditMaxSize     ByteSize `toml:"audit_max_size"`
	AuditKeep        int      `toml:"audit_keep"`
}

// Viewer holds the remote-viewer settings sent to kiosks with each offer.
type Viewer struct {
	Title              string `toml:"title"`
	DisableAudio       bool   `toml:"disable_audio"`
	DisableEffects     string `toml:"disable_effects"`
	Compression        string `toml:"compression"`
	USBAutoRedirect    string `toml:"usb_auto_redirect"`
	USBRedirectConnect string `toml:"usb_redirect_connect"`
}

// Kiosk is one known kiosk, or a group of them when ID holds a '*'.
type Kiosk struct {
	ID      string `toml:"id"`
	Address string `toml:"address"` // an address or a CIDR range the kiosk connects from
	Token   string `toml:"token"`
	Legacy  bool   `toml:"legacy"` // runs the original remote.sh: no id, no token, known by address
	// MaxKiosks caps the kiosks of a group (an id with '*') connected at
	// once: one token cannot mint unlimited kiosks.
	MaxKiosks int `toml:"max_kiosks"`
	// HostGroup pins the kiosk (or group) to the hosts of that group.
	HostGroup string `toml:"host_group,omitempty"`
}

// DefaultMaxKiosks is a group's cap when the file names none.
const DefaultMaxKiosks = 32

// IsGroup reports whether the entry is a group: an id pattern such as branch-*.
func (k Kiosk) IsGroup() bool { return strings.ContainsAny(k.ID, "*?[") }

// DefaultUSBFilter redirects flash drives (mass storage), scanners (still
// image and vendor-specific), printers and webcams (video), and never
// keyboards, mice or hubs. The syntax is spice-gtk's: class,vendor,product,
// version,allow rules separated by '|', first match wins.
const DefaultUSBFilter = "0x03,-1,-1,-1,0|0x09,-1,-1,-1,0|0x08,-1,-1,-1,1|0x06,-1,-1,-1,1|0x07,-1,-1,-1,1|0x0e,-1,-1,-1,1|0xff,-1,-1,-1,1|-1,-1,-1,-1,0"

// Default returns the configuration used for keys the file leaves out.
func Default() *Config {
	return &Config{
		LibvirtURI:        "qemu:///system",
		PoolName:          "undervdi",
		PoolSize:          2,
		MaxVMs:            8,
		OverlayDir:        "/var/lib/undervdi/overlays",
		VersionDir:        "/var/lib/undervdi/versions",
		KeepVersions:      1,
		EncryptDisks:      true,
		MemoryReserve:     ByteSize(1 << 30),
		ReadyTimeout:      Duration(5 * time.Minute),
		RefillConcurrency: 2,
		FailureLimit:      3,
		ReconcileInterval: Duration(time.Minute),
		AdminSocket:       "/run/undervdi/admin.sock",
		StateDir:          "/var/lib/undervdi/broker",
		LogLevel:          "info",
		Placement:         "spread",
		Gateway: Gateway{
			Listen:          ":5906",
			TLSListen:       ":5909",
			ConnectWindow:   Duration(10 * time.Second),
			Grace:           Duration(5 * time.Second),
			MaxConnsPerAddr: 32,
		},
		Sessions: Sessions{
			Listen:           ":5907",
			LegacyListen:     ":5905",
			Heartbeat:        Duration(5 * time.Second),
			HeartbeatTimeout: Duration(15 * time.Second),
			IdleHeartbeat:    Duration(30 * time.Second),
			IdleLimit:        Duration(5 * time.Minute),
			MaxSession:       Duration(4 * time.Hour),
			QueueLimit:       200,
			MaxConnsPerAddr:  4,
			AuditLog:         "/var/log/undervdi/sessions.jsonl",
			AuditMaxSize:     ByteSize(100 << 20),
			AuditKeep:        10,
		},
		Ads:      Ads{Dir: "/var/lib/undervdi/ads", Listen: ":5908"},
		Network:  Network{Mode: "isolated", Subnet: "10.213.0.0/24", Allow: []string{}, ProxyPort: 3128},
		Metrics:  Metrics{Listen: "127.0.0.1:9107"},
		Schedule: schedule.Config{TimeZone: "Local", Warmup: "15m"},
		API: API{Listen: ":8443", Accounts: "/etc/undervdi/accounts.json", LoginTTL: Duration(12 * time.Hour),
			IdleTimeout: Duration(30 * time.Minute)},
		Viewer: Viewer{
			Title:              "undervdi",
			DisableAudio:       true,
			DisableEffects:     "animation",
			Compression:        "auto-glz",
			USBAutoRedirect:    DefaultUSBFilter,
			USBRedirectConnect: DefaultUSBFilter,
		},
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
	if len(c.Hosts) > 0 && md.IsDefined("libvirt_uri") {
		errs = append(errs, errors.New("libvirt_uri: with [[hosts]], each host's uri says where it is; leave libvirt_uri out"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.hostDefaults()
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
	if len(c.Hosts) == 0 && c.MaxVMs < c.PoolSize { // hosts: validateHosts

		bad("max_vms", "%d: must be at least pool_size (%d)", c.MaxVMs, c.PoolSize)
	}
	if !filepath.IsAbs(c.OverlayDir) {
		bad("overlay_dir", "%q must be an absolute path", c.OverlayDir)
	}
	switch {
	case !filepath.IsAbs(c.VersionDir):
		bad("versions_dir", "%q must be an absolute path", c.VersionDir)
	case filepath.Clean(c.VersionDir) == filepath.Clean(c.OverlayDir):
		bad("versions_dir", "%q must not be overlay_dir: versions are kept, overlays are the visitors' and deleted", c.VersionDir)
	}
	if c.KeepVersions < 0 || c.KeepVersions > 10 {
		bad("keep_versions", "%d: must be 0 (no rollback) to 10", c.KeepVersions)
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
	if !filepath.IsAbs(c.StateDir) {
		bad("state_dir", "%q must be an absolute path", c.StateDir)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q: must be debug, info, warn or error", c.LogLevel)
	}
	g, ss := c.Gateway, c.Sessions
	for key, addr := range map[string]string{"gateway.listen": g.Listen, "gateway.tls_listen": g.TLSListen, "sessions.listen": ss.Listen,
		"sessions.legacy_listen": ss.LegacyListen, "ads.listen": c.Ads.Listen, "metrics.listen": c.Metrics.Listen, "api.listen": c.API.Listen} {
		if addr == "" && (key == "sessions.legacy_listen" || key == "ads.listen" || key == "gateway.tls_listen" || key == "metrics.listen" || key == "api.listen") {
			continue // turned off
		}
		host, port, err := net.SplitHostPort(addr)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 1 || n > 65535 || strings.ContainsAny(host, " \t\n\"'$`\\;") {
			bad(key, "%q is not a listen address such as :5906 or 169.254.24.1:5906", addr)
		}
	}
	if host, _, err := net.SplitHostPort(c.Metrics.Listen); err == nil {
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			bad("metrics.listen", "%q: the metrics are not authenticated; listen on a loopback address such as 127.0.0.1:9107", c.Metrics.Listen)
		}
	}
	if _, err := schedule.Parse(c.Schedule, c.Capacity()); err != nil {
		errs = append(errs, err)
	}
	c.validateNetwork(bad)
	c.validateHosts(bad)
	for i, m := range c.Images.Manifests {
		if !filepath.IsAbs(m) {
			bad(fmt.Sprintf("images.manifests[%d]", i), "%q: must be an absolute path", m)
		}
	}
	if a := c.API; a.Listen != "" {
		if (a.TLSCert == "") != (a.TLSKey == "") {
			bad("api.tls_cert", "api.tls_cert and api.tls_key go together")
		}
		if !filepath.IsAbs(a.Accounts) {
			bad("api.accounts", "%q: must be an absolute path", a.Accounts)
		}
		if a.LoginTTL < Duration(time.Minute) || a.LoginTTL > Duration(7*24*time.Hour) {
			bad("api.login_ttl", "%v: from 1m to 168h", a.LoginTTL)
		}
		if a.IdleTimeout < Duration(time.Minute) || a.IdleTimeout > a.LoginTTL {
			bad("api.idle_timeout", "%v: from 1m to api.login_ttl (%v)", a.IdleTimeout, a.LoginTTL)
		}
	}
	if g.ConnectWindow < Duration(time.Second) {
		bad("gateway.connect_window", "%v: must be at least 1s", g.ConnectWindow)
	}
	if ss.Heartbeat < Duration(time.Second) {
		bad("sessions.heartbeat", "%v: must be at least 1s", ss.Heartbeat)
	}
	if ss.HeartbeatTimeout < 2*ss.Heartbeat {
		bad("sessions.heartbeat_timeout", "%v: must be at least twice sessions.heartbeat (%v)", ss.HeartbeatTimeout, ss.Heartbeat)
	}
	if ss.IdleHeartbeat < ss.Heartbeat || ss.IdleHeartbeat > Duration(time.Hour) {
		bad("sessions.idle_heartbeat", "%v: from sessions.heartbeat (%v) to 1h", ss.IdleHeartbeat, ss.Heartbeat)
	}
	if ss.IdleLimit < Duration(10*time.Second) {
		bad("sessions.idle_limit", "%v: must be at least 10s", ss.IdleLimit)
	}
	if ss.QueueLimit < 1 {
		bad("sessions.queue_limit", "%d: must be at least 1", ss.QueueLimit)
	}
	if ss.MaxConnsPerAddr < 1 {
		bad("sessions.max_conns_per_addr", "%d: must be at least 1 (a kiosk needs one connection)", ss.MaxConnsPerAddr)
	}
	if g.MaxConnsPerAddr < 8 {
		bad("gateway.max_conns_per_addr", "%d: must be at least 8 (a viewer opens a connection per SPICE channel)", g.MaxConnsPerAddr)
	}
	if (ss.TLSCert == "") != (ss.TLSKey == "") {
		bad("sessions.tls_cert", "tls_cert and tls_key go together")
	}
	if !ss.Plaintext && g.TLSListen == "" {
		bad("gateway.tls_listen", "required unless sessions.plaintext: kiosks take SPICE over TLS only")
	}
	if ss.Plaintext && ss.TLSCert != "" {
		bad("sessions.plaintext", "plaintext and tls_cert contradict each other")
	}
	if c.Ads.Dir != "" && !filepath.IsAbs(c.Ads.Dir) {
		bad("ads.dir", "%q must be an absolute path", c.Ads.Dir)
	}
	if ss.AuditLog != "" && !filepath.IsAbs(ss.AuditLog) {
		bad("sessions.audit_log", "%q must be an absolute path", ss.AuditLog)
	}
	if ss.AuditMaxSize < ByteSize(1<<20) {
		bad("sessions.audit_max_size", "%v: must be at least 1MiB", ss.AuditMaxSize)
	}
	if ss.AuditKeep < 1 {
		bad("sessions.audit_keep", "%d: must be at least 1 (older files are deleted)", ss.AuditKeep)
	}
	for key, f := range map[string]string{"viewer.usb_auto_redirect": c.Viewer.USBAutoRedirect, "viewer.usb_redirect_connect": c.Viewer.USBRedirectConnect} {
		if err := CheckUSBFilter(f); err != nil {
			bad(key, "%v", err)
		}
	}
	ids := map[string]bool{}
	for i, k := range c.Kiosks {
		key := fmt.Sprintf("kiosk[%d]", i)
		if k.ID != "" {
			key = fmt.Sprintf("kiosk %q", k.ID)
		}
		if _, err := k.Prefix(); err != nil {
			bad(key+".address", "%v", err)
		}
		switch {
		case k.Legacy && k.Token != "":
			bad(key+".token", "a legacy kiosk runs the original remote.sh, which has no token: it is known by its address only")
		case !k.Legacy && k.ID == "":
			bad(key+".id", "required (or legacy = true for a kiosk running the original remote.sh)")
		case !k.Legacy && len(k.Token) < 16:
			bad(key+".token", "must be at least 16 characters")
		}
		switch {
		case k.MaxKiosks != 0 && !k.IsGroup():
			bad(key+".max_kiosks", "only a group (an id with '*') has a cap of kiosks")
		case k.MaxKiosks < 0:
			bad(key+".max_kiosks", "%d: must be at least 1", k.MaxKiosks)
		}
		if k.ID != "" {
			if _, err := path.Match(k.ID, ""); err != nil || len(k.ID) > 64 {
				bad(key+".id", "%q is not an id or a pattern such as branch-*", k.ID)
			}
			if ids[k.ID] {
				bad(key+".id", "%q appears twice", k.ID)
			}
			ids[k.ID] = true
		}
	}
	return errors.Join(errs...)
}

// Prefix returns the address range the kiosk connects from.
func (k Kiosk) Prefix() (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(k.Address); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(k.Address)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or a range such as 169.254.24.0/24", k.Address)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// CheckUSBFilter checks a spice-gtk USB redirection filter: rules
// class,vendor,product,version,allow separated by '|'; numbers are decimal
// or 0x-hex, -1 matches anything, allow is 0 or 1.
func CheckUSBFilter(f string) error {
	_, err := kioskproto.ParseUSBFilter(f)
	return err
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

// Masked is a copy of c for people to read: the kiosks' tokens are
// replaced by "(set)".
func (c *Config) Masked() *Config {
	m := *c
	m.Kiosks = make([]Kiosk, len(c.Kiosks))
	for i, k := range c.Kiosks {
		if k.Token != "" {
			k.Token = "(set)"
		}
		m.Kiosks[i] = k
	}
	return &m
}

// validateNetwork checks the [network] section.
func (c *Config) validateNetwork(bad func(key, format string, args ...any)) {
	n := c.Network
	switch n.Mode {
	case "golden":
		return
	case "isolated":
	default:
		bad("network.mode", "%q: must be isolated (the broker's guest network and allowlist) or golden (the golden's own interfaces)", n.Mode)
		return
	}
	if n.ProxyPort < 1 || n.ProxyPort > 65535 || n.ProxyPort == 53 || n.ProxyPort == egress.PortHTTP || n.ProxyPort == egress.PortHTTPS {
		bad("network.proxy_port", "%d: a port from 1 to 65535 other than 53, 80 and 443 (the gateway's DNS and transparent proxies)", n.ProxyPort)
	}
	c.validatePlans(bad)
	if _, err := egress.ParseAllowlist(n.Allow); err != nil {
		bad("network.allow", "%v", err)
	}
	if n.Resolver != "" {
		host, port, err := net.SplitHostPort(n.Resolver)
		if _, perr := strconv.Atoi(port); err != nil || perr != nil || net.ParseIP(host) == nil {
			bad("network.resolver", "%q is not an address and port such as 192.0.2.53:53", n.Resolver)
		}
	}
}

// validatePlans checks every host's guest network: each on a subnet of its
// own, with an address for each VM the host may hold, apart from the kiosk
// LAN; hosts other than this machine reach the broker at
// network.broker_address.
func (c *Config) validatePlans(bad func(key, format string, args ...any)) {
	type used struct {
		key    string
		subnet netip.Prefix
	}
	var subnets []used
	remote := false
	for i, h := range c.SiteHosts() {
		key := "network.subnet"
		if h.Remote() {
			remote = true
			key = fmt.Sprintf("hosts %q.guest_subnet", cmp.Or(h.Name, strconv.Itoa(i)))
			if h.GuestSubnet == "" {
				bad(key, "required for a host other than this machine with network.mode isolated: the range its clones get, routed to network.broker_address")
				continue
			}
		} else if h.GuestSubnet != "" {
			bad(fmt.Sprintf("hosts %q.guest_subnet", cmp.Or(h.Name, strconv.Itoa(i))), "only for a host other than this machine: here clones are on network.subnet")
		}
		plan, err := c.hostSubnet(h)
		if err != nil {
			bad(key, "%v", err)
			continue
		}
		if capacity := h.Capacity(c.VMUnits); plan.Slots() < capacity {
			bad(key, "%s has %d addresses for clones, fewer than the host's max_vms (%d)", plan.Subnet, plan.Slots(), capacity)
		}
		for _, u := range subnets {
			if u.subnet.Overlaps(plan.Subnet) {
				bad(key, "%s overlaps %s (%s): each host's clones need addresses of their own", plan.Subnet, u.key, u.subnet)
			}
		}
		subnets = append(subnets, used{key, plan.Subnet})
		for j, k := range c.Kiosks {
			if p, err := k.Prefix(); err == nil && p.Overlaps(plan.Subnet) {
				bad(key, "%s overlaps kiosk[%d]'s address %s: visitors' VMs and the kiosk LAN must not share addresses", plan.Subnet, j, k.Address)
			}
		}
	}
	if !remote {
		return
	}
	broker, err := netip.ParseAddr(c.Network.BrokerAddress)
	switch {
	case c.Network.BrokerAddress == "":
		bad("network.broker_address", "required with a host other than this machine: the broker's address on the hosts' backend network, where their clones reach its DNS and proxies")
	case err != nil || !broker.Is4() || broker.IsUnspecified() || broker.IsLoopback():
		bad("network.broker_address", "%q: an IPv4 address of this machine on the hosts' backend network", c.Network.BrokerAddress)
	default:
		for _, u := range subnets {
			if u.subnet.Contains(broker) {
				bad("network.broker_address", "%s is in %s (%s): the broker's backend address is no clone's", broker, u.key, u.subnet)
			}
		}
	}
}

// SiteCADir is where the broker keeps the site CA it makes, and its own
// certificate, when the site configures none.
func (c *Config) SiteCADir() string { return filepath.Join(c.StateDir, "tls") }
