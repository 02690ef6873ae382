package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleParses(t *testing.T) {
	c, err := Parse([]byte(Example))
	if err != nil {
		t.Fatalf("Parse(Example) = %v", err)
	}
	// The example documents the defaults: apart from the golden, it must
	// equal them, or the file lies to its reader.
	want := Default()
	want.Golden = "win10"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(Example) = %+v, want defaults %+v", *c, *want)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
golden = "tiny"
pool_size = 4
max_vms = 10
memory_reserve = "512MiB"
ready_timeout = "90s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Golden != "tiny" || c.PoolSize != 4 || c.MaxVMs != 10 {
		t.Errorf("Parse = %+v", c)
	}
	if c.MemoryReserve != 512<<20 {
		t.Errorf("MemoryReserve = %d, want %d", c.MemoryReserve, 512<<20)
	}
	if c.ReadyTimeout.D() != 90*time.Second {
		t.Errorf("ReadyTimeout = %v, want 90s", c.ReadyTimeout)
	}
	if c.LibvirtURI != "qemu:///system" {
		t.Errorf("LibvirtURI default = %q", c.LibvirtURI)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // substrings of the error
	}{
		{`golden = "g"` + "\npool_sise = 3", []string{`unknown key "pool_sise"`}},
		{`golden = "g"` + "\n[gateway]\nport = 1", []string{`unknown key "gateway.port"`}},
		{`pool_size = 2`, []string{"golden: required"}},
		{`golden = "g"` + "\npool_size = 0", []string{"pool_size: 0: must be at least 1"}},
		{`golden = "g"` + "\npool_size = 9", []string{"max_vms: 8: must be at least pool_size (9)"}},
		{`golden = "g"` + "\npool_size = \"four\"", []string{"pool_size", "incompatible types"}},
		{`golden = "g"` + "\nready_timeout = \"5x\"", []string{"ready_timeout", `"5x" is not a duration`}},
		{`golden = "g"` + "\nmemory_reserve = \"1024\"", []string{"memory_reserve", "needs a unit"}},
		{`golden = "g"` + "\nmemory_reserve = \"lots\"", []string{"memory_reserve", "not a size"}},
		{`golden = "g"` + "\noverlay_dir = \"overlays\"", []string{"overlay_dir", "absolute"}},
		{`golden = "g"` + "\npool_name = \"Bad-Name\"", []string{"pool_name", "lowercase"}},
		{`golden = "g"` + "\nlog_level = \"loud\"", []string{"log_level"}},
		{`golden = "g"` + "\nlibvirt_uri = \"nonsense\"", []string{"libvirt_uri"}},
		{`golden = "g` + "\n", []string{"line 1"}},
		{`golden = "g"` + "\n[gateway]\nlisten = \"5906\"", []string{"gateway.listen", "not a listen address"}},
		{`golden = "g"` + "\n[metrics]\nlisten = \":9107\"", []string{"metrics.listen", "not authenticated", "loopback"}},
		{`golden = "g"` + "\n[metrics]\nlisten = \"169.254.24.1:9107\"", []string{"metrics.listen", "loopback"}},
		{`golden = "g"` + "\n[metrics]\nlisten = \"9107\"", []string{"metrics.listen", "not a listen address"}},
		{`golden = "g"` + "\n[sessions]\nheartbeat = \"10s\"", []string{"sessions.heartbeat_timeout", "twice"}},
		{`golden = "g"` + "\n[sessions]\ntls_cert = \"/c\"", []string{"tls_cert and tls_key go together"}},
		{`golden = "g"` + "\n[viewer]\nusb_auto_redirect = \"0x08,-1,-1\"", []string{"viewer.usb_auto_redirect", "class,vendor,product,version,allow"}},
		{`golden = "g"` + "\n[viewer]\nusb_auto_redirect = \"0x08,-1,-1,-1,2\"", []string{"field 5"}},
		{`golden = "g"` + "\n[[kiosk]]\nid = \"k1\"\naddress = \"10.0.0.300\"\ntoken = \"0123456789abcdef\"", []string{`kiosk "k1".address`}},
		{`golden = "g"` + "\n[[kiosk]]\nid = \"k1\"\naddress = \"10.0.0.3\"\ntoken = \"short\"", []string{`kiosk "k1".token`, "16"}},
		{`golden = "g"` + "\n[[kiosk]]\naddress = \"10.0.0.3\"\ntoken = \"0123456789abcdef\"", []string{"kiosk[0].id", "legacy"}},
		{`golden = "g"` + "\n[[kiosk]]\naddress = \"10.0.0.3\"\nlegacy = true\ntoken = \"0123456789abcdef\"", []string{"no token"}},
		{`golden = "g"` + "\n[[kiosk]]\nid = \"k\"\naddress = \"10.0.0.3\"\ntoken = \"0123456789abcdef\"\n[[kiosk]]\nid = \"k\"\naddress = \"10.0.0.4\"\ntoken = \"0123456789abcdef\"", []string{"appears twice"}},
		{`golden = "g"` + "\n[[kiosk]]\nid = \"k\"\naddress = \"10.0.0.3\"\ntoken = \"0123456789abcdef\"\nport = 3", []string{`unknown key "kiosk.port"`}},
		// Several problems are reported together.
		{`golden = "g"` + "\npool_size = 0\nfailure_limit = 0", []string{"pool_size", "failure_limit"}},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil {
			t.Errorf("Parse(%q) = nil error, want %q", tc.in, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tc.in, err, w)
			}
		}
	}
}

func TestKiosks(t *testing.T) {
	c, err := Parse([]byte(`
golden = "g"
[[kiosk]]
id = "lobby-1"
address = "169.254.24.10"
token = "0123456789abcdef"
[[kiosk]]
id = "branch-*"
address = "169.254.24.0/24"
token = "fedcba9876543210"
[[kiosk]]
address = "169.254.24.20"
legacy = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Kiosks) != 3 || !c.Kiosks[2].Legacy {
		t.Fatalf("Kiosks = %+v", c.Kiosks)
	}
	for i, want := range []string{"169.254.24.10/32", "169.254.24.0/24", "169.254.24.20/32"} {
		if p, err := c.Kiosks[i].Prefix(); err != nil || p.String() != want {
			t.Errorf("Kiosks[%d].Prefix() = %v, %v; want %s", i, p, err, want)
		}
	}
}

// TestScheduleValidated: the opening hours are checked with the rest, and
// their errors name their keys.
func TestScheduleValidated(t *testing.T) {
	_, err := Parse([]byte("golden = \"g\"\n[schedule]\ntime_zone = \"Europe/Berlin\"\n[[schedule.open]]\ndays = \"mon-fri\"\nhours = \"08:00-18:00\"\nsize = 40\n"))
	if err == nil || !strings.Contains(err.Error(), "schedule.open[0].size: 40: from 0 to max_vms (8)") {
		t.Errorf("Parse = %v", err)
	}
	c, err := Parse([]byte("golden = \"g\"\n[schedule]\ntime_zone = \"Europe/Berlin\"\nholidays = [\"2026-12-25\"]\n[[schedule.open]]\ndays = \"mon-fri\"\nhours = \"08:00-18:00\"\nsize = 4\n"))
	if err != nil || len(c.Schedule.Open) != 1 || c.Schedule.Open[0].Size != 4 {
		t.Errorf("Parse = %+v, %v", c, err)
	}
}

// TestAPIAndImagesValidated: the [api] and [images] keys, and listen
// ports, are checked with the rest, each error naming its key.
func TestAPIAndImagesValidated(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"[api]\nlogin_ttl = \"10s\"\n", "api.login_ttl"},
		{"[api]\nidle_timeout = \"24h\"\n", "api.idle_timeout"},
		{"[api]\naccounts = \"accounts.json\"\n", "api.accounts"},
		{"[api]\ntls_cert = \"/etc/c.pem\"\n", "api.tls_cert"},
		{"[api]\nlisten = \"8443\"\n", "api.listen"},
		{"[sessions]\nlisten = \":5907$(reboot)\"\n", "sessions.listen"},
		{"[gateway]\nlisten = \":99999\"\n", "gateway.listen"},
		{"[images]\nmanifests = [\"out/manifest.json\"]\n", "images.manifests[0]"},
	} {
		_, err := Parse([]byte("golden = \"g\"\n" + tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error naming %s", tc.file, err, tc.want)
		}
	}
	if _, err := Parse([]byte("golden = \"g\"\n[api]\nlisten = \"\"\nlogin_ttl = \"1s\"\n")); err != nil {
		t.Errorf("with the API off its other keys are not checked: %v", err)
	}
}

func TestNetworkValidated(t *testing.T) {
	for _, tc := range []struct {
		text string
		want []string
	}{
		{"[network]\nmode = \"bridged\"", []string{"network.mode", `"bridged"`}},
		{"[network]\nsubnet = \"10.213.0.0/29\"", []string{"network.subnet", "/16 to /27"}},
		{"[network]\nsubnet = \"10.213.0.0\"", []string{"network.subnet", "not an IPv4 range"}},
		{"max_vms = 30\n[network]\nsubnet = \"10.213.0.0/27\"", []string{"network.subnet", "21 addresses for clones, fewer than the host's max_vms (30)"}},
		{"[network]\nallow = [\"*\", \"ok.org\", \"*.com\"]", []string{"network.allow", `"*": not a host`, `"*.com"`}},
		{"[network]\nproxy_port = 80", []string{"network.proxy_port"}},
		{"[network]\nresolver = \"dns.example:53\"", []string{"network.resolver"}},
		{"[network]\nbridge = \"a-bridge-name-too-long\"", []string{"network.subnet", "bridge"}},
		{"[network]\nsubnet = \"169.254.24.0/24\"\n[[kiosk]]\nid = \"k\"\naddress = \"169.254.24.10\"\ntoken = \"0123456789abcdef\"",
			[]string{"network.subnet", "overlaps kiosk[0]"}},
	} {
		_, err := Parse([]byte("golden = \"g\"\n" + tc.text))
		if err == nil {
			t.Errorf("%q: no error", tc.text)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q lacks %q", tc.text, err, w)
			}
		}
	}
	c, err := Parse([]byte("golden = \"g\"\n[network]\nmode = \"golden\"\nsubnet = \"nonsense\""))
	if err != nil || c.Network.Isolated() {
		t.Errorf("mode golden: %v, isolated %v; want the rest of the section ignored", err, c.Network.Isolated())
	}
	c, err = Parse([]byte("golden = \"g\"\n[network]\nallow = [\"*.gosuslugi.ru\", \"203.0.113.0/24\"]\nresolver = \"192.0.2.53:53\""))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.Plan(); err != nil || p.Gateway().String() != "10.213.0.1" || p.Network != "undervdi-guests" {
		t.Errorf("Plan() = %+v, %v", p, err)
	}
}
