package pxe

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mac(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// isolated is the configuration of the package documentation's example.
func isolated(t testing.TB) Config {
	return Config{
		Interface: "br-kiosk",
		BootDir:   "/srv/undervdi/boot",
		Settings:  "undervdi.server=169.254.24.1",
		Kiosks:    []Kiosk{{MAC: mac(t, "52:54:00:12:34:56"), Settings: "undervdi.kiosk=lobby-1"}},
	}
}

func proxy() Config {
	return Config{
		Mode:      Proxy,
		Interface: "eth1",
		Server:    netip.MustParseAddr("192.168.1.5"),
		Subnet:    netip.MustParsePrefix("192.168.1.0/24"),
		BootDir:   "/srv/undervdi/boot",
	}
}

func TestDnsmasqIsolated(t *testing.T) {
	got, err := isolated(t).Dnsmasq()
	if err != nil {
		t.Fatalf("Dnsmasq() = %v", err)
	}
	want := `# undervdi network boot (isolated mode), written by undervdi-pxe.
# No DNS: kiosks reach the server by address.
port=0
interface=br-kiosk
bind-dynamic
# Kiosk addresses. The network is ours alone, so answer kiosks that ask
# for a lease we no longer know, and give no default route.
dhcp-range=169.254.24.128,169.254.24.254,255.255.255.0,1h
dhcp-authoritative
dhcp-option=option:router
enable-tftp
tftp-root=/srv/undervdi/boot
# Keep the boot file in the BOOTP fields, where every PXE ROM looks.
dhcp-no-override
quiet-dhcp
quiet-tftp

# iPXE chainloading: PXE firmware gets iPXE by TFTP, and iPXE the boot script.
dhcp-match=set:ipxe,175,19
dhcp-match=set:bios,option:client-arch,0
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,169.254.24.1
dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,169.254.24.1
# The last field, the next server, matters to a proxy: iPXE ignores its answer without one.
dhcp-boot=tag:ipxe,http://169.254.24.1:5910/boot.ipxe,,169.254.24.1

# Kiosk settings, in option 224; a kiosk's own follow the site's.
dhcp-option-force=224,"undervdi.server=169.254.24.1"
dhcp-host=52:54:00:12:34:56,set:kiosk1
dhcp-option-force=tag:kiosk1,224,"undervdi.server=169.254.24.1 undervdi.kiosk=lobby-1"
`
	if got != want {
		t.Errorf("Dnsmasq() = \n%s\nwant\n%s", got, want)
	}
}

// lines returns the configuration lines of conf, without comments.
func lines(conf string) []string {
	var out []string
	for _, l := range strings.Split(conf, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func has(conf []string, line string) bool {
	for _, l := range conf {
		if l == line {
			return true
		}
	}
	return false
}

func TestDnsmasqChoices(t *testing.T) {
	custom := isolated(t)
	custom.Subnet = netip.MustParsePrefix("10.20.0.0/16")
	custom.HTTPPort = 8080
	custom.LeaseTime = 90 * time.Minute
	custom.LeaseFile = "/var/lib/undervdi/leases"
	custom.LogDHCP = true
	custom.Settings = ""

	for _, tc := range []struct {
		name      string
		cfg       Config
		want, not []string
	}{
		{"proxy", proxy(), []string{
			"interface=eth1",
			"dhcp-range=192.168.1.0,proxy,255.255.255.0",
			"tftp-root=/srv/undervdi/boot",
			"dhcp-match=set:ipxe,175,19",
			`pxe-service=tag:!ipxe,x86PC,"undervdi",undionly.kpxe`,
			`pxe-service=tag:!ipxe,7,"undervdi",ipxe.efi`,
			`pxe-service=tag:!ipxe,9,"undervdi",ipxe.efi`,
			"dhcp-boot=tag:ipxe,http://192.168.1.5:5910/boot.ipxe,,192.168.1.5",
		}, []string{"dhcp-authoritative", "dhcp-option=option:router",
			"dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,192.168.1.5"}},
		{"custom isolated", custom, []string{
			"dhcp-range=10.20.128.0,10.20.255.254,255.255.0.0,90m",
			"dhcp-leasefile=/var/lib/undervdi/leases",
			"log-dhcp",
			"dhcp-boot=tag:ipxe,http://10.20.0.1:8080/boot.ipxe,,10.20.0.1",
			"dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe,,10.20.0.1",
			"dhcp-host=52:54:00:12:34:56,set:kiosk1",
			`dhcp-option-force=tag:kiosk1,224,"undervdi.kiosk=lobby-1"`,
		}, []string{"quiet-dhcp", "quiet-tftp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := tc.cfg.Dnsmasq()
			if err != nil {
				t.Fatalf("Dnsmasq() = %v", err)
			}
			l := lines(conf)
			for _, w := range tc.want {
				if !has(l, w) {
					t.Errorf("configuration lacks %q:\n%s", w, conf)
				}
			}
			for _, n := range tc.not {
				if has(l, n) {
					t.Errorf("configuration has %q:\n%s", n, conf)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		fields []string // every field named in the errors
	}{
		{"no interface", func(c *Config) { c.Interface = "" }, []string{"interface"}},
		{"interface with comma", func(c *Config) { c.Interface = "eth0,eth1" }, []string{"interface"}},
		{"long interface", func(c *Config) { c.Interface = "abcdefghijklmnop" }, []string{"interface"}},
		{"bad mode", func(c *Config) { c.Mode = "relay" }, []string{"mode"}},
		{"no boot dir", func(c *Config) { c.BootDir = "" }, []string{"boot-dir"}},
		{"relative boot dir", func(c *Config) { c.BootDir = "boot" }, []string{"boot-dir"}},
		{"boot dir with comma", func(c *Config) { c.BootDir = "/srv/a,b" }, []string{"boot-dir"}},
		{"boot dir with space", func(c *Config) { c.BootDir = "/srv/a b" }, []string{"boot-dir"}},
		{"lease file with hash", func(c *Config) { c.LeaseFile = "/var/x #y" }, []string{"lease-file"}},
		{"IPv6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, []string{"subnet"}},
		{"host bits", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.1/24") }, []string{"subnet"}},
		{"tiny subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.0.0.0/31") }, []string{"subnet"}},
		{"server outside", func(c *Config) { c.Server = netip.MustParseAddr("10.0.0.1") }, []string{"server"}},
		{"server is broadcast", func(c *Config) { c.Server = netip.MustParseAddr("169.254.24.255") }, []string{"server"}},
		{"server in range", func(c *Config) { c.Server = netip.MustParseAddr("169.254.24.200") }, []string{"range"}},
		{"half a range", func(c *Config) { c.RangeStart = netip.MustParseAddr("169.254.24.10") }, []string{"range"}},
		{"backwards range", func(c *Config) {
			c.RangeStart, c.RangeEnd = netip.MustParseAddr("169.254.24.90"), netip.MustParseAddr("169.254.24.10")
		}, []string{"range"}},
		{"range outside", func(c *Config) {
			c.RangeStart, c.RangeEnd = netip.MustParseAddr("169.254.24.10"), netip.MustParseAddr("169.254.25.10")
		}, []string{"range"}},
		{"short lease", func(c *Config) { c.LeaseTime = time.Minute }, []string{"lease-time"}},
		{"HTTP port", func(c *Config) { c.HTTPPort = 70000 }, []string{"http"}},
		{"settings newline", func(c *Config) { c.Settings = "a=1\ndhcp-range=1.2.3.4,proxy" }, []string{"settings"}},
		{"settings NUL", func(c *Config) { c.Settings = "a=\x00" }, []string{"settings"}},
		{"settings UTF-8", func(c *Config) { c.Settings = "kiosk=café" }, []string{"settings"}},
		{"settings too long", func(c *Config) { c.Settings = strings.Repeat("x", 256) }, []string{"settings"}},
		{"kiosk too long with site", func(c *Config) {
			c.Kiosks[0].Settings = strings.Repeat("x", 255-len(c.Settings))
		}, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk twice", func(c *Config) { c.Kiosks = append(c.Kiosks, c.Kiosks[0]) }, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk without settings", func(c *Config) { c.Kiosks[0].Settings = "" }, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk long MAC", func(c *Config) { c.Kiosks[0].MAC = mac(t, "00:00:00:00:fe:80:00:00") }, []string{"kiosk"}},
		{"kiosk token without an address", func(c *Config) {
			c.Kiosks[0].Settings += " undervdi.token=s3cret"
		}, []string{"kiosk 52:54:00:12:34:56"}},
		{"site token, kiosk without an address", func(c *Config) {
			c.Settings += " undervdi.token=s3cret"
		}, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk address outside", func(c *Config) { c.Kiosks[0].Addr = netip.MustParseAddr("10.1.1.1") }, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk address is broadcast", func(c *Config) { c.Kiosks[0].Addr = netip.MustParseAddr("169.254.24.255") }, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk address is the server's", func(c *Config) { c.Kiosks[0].Addr = netip.MustParseAddr("169.254.24.1") }, []string{"kiosk 52:54:00:12:34:56"}},
		{"two kiosks, one address", func(c *Config) {
			c.Kiosks[0].Addr = netip.MustParseAddr("169.254.24.11")
			c.Kiosks = append(c.Kiosks, Kiosk{MAC: mac(t, "52:54:00:12:34:57"), Addr: c.Kiosks[0].Addr, Settings: "undervdi.kiosk=b"})
		}, []string{"kiosk 52:54:00:12:34:57"}},
		{"kiosk tab", func(c *Config) { c.Kiosks[0].Settings = "a\tb" }, []string{"kiosk 52:54:00:12:34:56"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := isolated(t)
			tc.change(&cfg)
			checkFields(t, cfg, tc.fields)
		})
	}

	for _, tc := range []struct {
		name   string
		change func(*Config)
		fields []string
	}{
		{"no subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, []string{"subnet"}},
		{"no server", func(c *Config) { c.Server = netip.Addr{} }, []string{"server"}},
		{"range", func(c *Config) {
			c.RangeStart, c.RangeEnd = netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("192.168.1.20")
		}, []string{"range"}},
		{"lease time", func(c *Config) { c.LeaseTime = time.Hour }, []string{"lease-time"}},
		{"settings", func(c *Config) { c.Settings = "undervdi.kiosk=x" }, []string{"settings"}},
		{"kiosks", func(c *Config) { c.Kiosks = isolated(t).Kiosks }, []string{"kiosk"}},
	} {
		t.Run("proxy "+tc.name, func(t *testing.T) {
			cfg := proxy()
			tc.change(&cfg)
			checkFields(t, cfg, tc.fields)
		})
	}
}

// checkFields checks that cfg is invalid in exactly the given fields, and
// that Dnsmasq refuses it too.
func checkFields(t *testing.T, cfg Config, fields []string) {
	t.Helper()
	err := cfg.Validate()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate() = %v, want %v", err, ErrInvalid)
	}
	got := map[string]bool{}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Errorf("Validate() error %v is not a *FieldError", e)
			continue
		}
		got[fe.Field] = true
	}
	want := map[string]bool{}
	for _, f := range fields {
		want[f] = true
	}
	for f := range want {
		if !got[f] {
			t.Errorf("Validate() = %v, want an error for %q", err, f)
		}
	}
	for f := range got {
		if !want[f] {
			t.Errorf("Validate() = %v, unexpected error for %q", err, f)
		}
	}
	if conf, err := cfg.Dnsmasq(); err == nil {
		t.Errorf("Dnsmasq() = %q, nil; want an error", conf)
	}
}

func TestValidDefaults(t *testing.T) {
	for _, cfg := range []Config{isolated(t), proxy(), {Interface: "br0", BootDir: "/b", Subnet: netip.MustParsePrefix("10.9.8.252/30")}} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", cfg, err)
		}
	}
}

// dnsmasqTest runs dnsmasq's own syntax check on conf.
func dnsmasqTest(t testing.TB, conf string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dnsmasq.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dnsmasq", "--test", "--conf-file="+path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "syntax check OK") {
		t.Fatalf("dnsmasq --test: %v: %s\nconfiguration:\n%s", err, out, conf)
	}
}

func needDnsmasq(t testing.TB) {
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
	}
}

func TestDnsmasqAccepts(t *testing.T) {
	needDnsmasq(t)
	nasty := isolated(t)
	nasty.Settings = `undervdi.server=169.254.24.1 motd="Hello, \"world\" # 1\2" 1.2.3.4 ,,`
	nasty.Kiosks = append(nasty.Kiosks,
		Kiosk{MAC: mac(t, "52:54:00:ab:cd:ef"), Settings: `\`},
		Kiosk{MAC: mac(t, "52:54:00:ab:cd:f0"), Settings: `"`})
	logged := isolated(t)
	logged.LogDHCP = true
	logged.LeaseFile = "/tmp/pxe-leases"
	install := isolated(t)
	install.Install = &ServerInstall{Dir: installDir(t), MACs: []net.HardwareAddr{mac(t, "52:54:00:aa:bb:cc")}}
	for name, cfg := range map[string]Config{"isolated": isolated(t), "proxy": proxy(), "nasty": nasty, "logged": logged, "install": install} {
		t.Run(name, func(t *testing.T) {
			conf, err := cfg.Dnsmasq()
			if err != nil {
				t.Fatal(err)
			}
			dnsmasqTest(t, conf)
		})
	}
	// The check is real: it refuses what dnsmasq cannot read.
	t.Run("refuses", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.conf")
		os.WriteFile(path, []byte("port=0\ndhcp-option-force=224,\"unterminated\n"), 0o600)
		if out, err := exec.Command("dnsmasq", "--test", "--conf-file="+path).CombinedOutput(); err == nil {
			t.Errorf("dnsmasq --test accepted an unterminated quote: %s", out)
		}
	})
}

// unquote undoes dnsmasq's quoting as its configuration reader does:
// backslash escapes only \\ and \" here (the others, \t \n \r \b \e, stand
// for bytes CheckSettings refuses).
func unquote(s string) (string, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", false
	}
	var b strings.Builder
	s = s[1 : len(s)-1]
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`"tnebr\`, s[i+1]) >= 0 {
			i++
		} else if s[i] == '"' {
			return "", false // an unescaped quote ends the string early
		}
		b.WriteByte(s[i])
	}
	return b.String(), true
}

// FuzzSettings checks that any settings text is either refused or gives a
// configuration dnsmasq accepts, with the text in exactly one line and
// nothing else changed.
func FuzzSettings(f *testing.F) {
	for _, s := range []string{
		"undervdi.server=169.254.24.1 undervdi.kiosk=lobby-2",
		`a="b c"`, `\`, `"`, `\"`, `\\"`, "a,b", "# x", " leading", "trailing ", "1.2.3.4", "12", "01:02:03",
		"x\ny", "x\rdhcp-range=1.1.1.1,proxy", "\x00", "\t", "é", strings.Repeat("z", 255), strings.Repeat(`"`, 200),
	} {
		f.Add(s)
	}
	_, err := exec.LookPath("dnsmasq")
	haveDnsmasq := err == nil
	base := isolated(f)
	base.Kiosks = nil
	base.Settings = "x"
	baseConf, err := base.Dnsmasq()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if text == "" {
			return // no site-wide settings: no option line
		}
		cfg := isolated(t)
		cfg.Kiosks = nil
		cfg.Settings = text
		conf, err := cfg.Dnsmasq()
		if CheckSettings(text) != nil {
			if err == nil {
				t.Fatalf("Dnsmasq() took settings %q that CheckSettings refuses", text)
			}
			return
		}
		if err != nil {
			t.Fatalf("Dnsmasq() = %v for settings %q", err, text)
		}
		got, want := strings.Split(conf, "\n"), strings.Split(baseConf, "\n")
		if len(got) != len(want) {
			t.Fatalf("settings %q changed the configuration's line count:\n%s", text, conf)
		}
		changed := 0
		for i := range got {
			if got[i] == want[i] {
				continue
			}
			changed++
			value, ok := strings.CutPrefix(got[i], "dhcp-option-force=224,")
			if !ok {
				t.Fatalf("settings %q changed line %q", text, got[i])
			}
			if s, ok := unquote(value); !ok || s != text {
				t.Fatalf("settings %q are written as %s, which reads back as %q", text, value, s)
			}
		}
		wantChanged := 1
		if text == base.Settings {
			wantChanged = 0 // the base's own settings
		}
		if changed != wantChanged {
			t.Fatalf("settings %q changed %d lines, want %d", text, changed, wantChanged)
		}
		if haveDnsmasq {
			dnsmasqTest(t, conf)
		}
	})
}

func TestBootURL(t *testing.T) {
	if got, want := proxy().BootURL(), "http://192.168.1.5:5910/boot.ipxe"; got != want {
		t.Errorf("BootURL() = %q, want %q", got, want)
	}
}
