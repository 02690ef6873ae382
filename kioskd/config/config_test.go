package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExample(t *testing.T) {
	c := Default()
	if err := c.Read(strings.NewReader(Example)); err != nil {
		t.Fatalf("Read(Example) = %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate(Example) = %v", err)
	}
	want := Default()
	want.Server, want.Kiosk, want.Token = "169.254.24.1", "lobby-1", "a long random secret"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("the example differs from the defaults it documents:\n%+v\nwant\n%+v", c, want)
	}
	for _, k := range Keys() {
		if !strings.Contains(Example, "\n"+k+" =") {
			t.Errorf("the example does not document %s", k)
		}
	}
}

// TestOriginalClientConf reads the original kiosk's /etc/client.conf, as
// published, unchanged.
func TestOriginalClientConf(t *testing.T) {
	c := Default()
	err := c.Read(strings.NewReader("server_ip=169.254.24.1\nvdi_signal_port=5905\nvdi_spice_port=5906\n" +
		"animation_folder=/usr/share/backgrounds/animation\nbackground_folder=/usr/share/backgrounds2/fedora-workstation\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "169.254.24.1" || c.LegacyPort != 5905 || c.SpicePort != 5906 ||
		c.AdsDir != "/usr/share/backgrounds/animation" || c.BackgroundDir != "/usr/share/backgrounds2/fedora-workstation" {
		t.Errorf("client.conf read as %+v", c)
	}
	if !c.Legacy() {
		t.Errorf("a client.conf without kiosk and token is not legacy mode")
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(client.conf) = %v", err)
	}
}

func TestCmdlineOverrides(t *testing.T) {
	c := Default()
	c.Read(strings.NewReader("server = 10.0.0.1\nkiosk = a\ntoken = t\n"))
	err := c.ApplyCmdline(`BOOT_IMAGE=/vmlinuz console=ttyS0 quiet undervdi.server=169.254.24.1 undervdi.kiosk=lobby-2 undervdi.token="two words" undervdi.idle_limit=120`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "169.254.24.1" || c.Kiosk != "lobby-2" || c.Token != "two words" || c.IdleLimit != 2*time.Minute {
		t.Errorf("after the command line: %+v", c)
	}
	if err := c.ApplyCmdline("undervdi.nosuch=1 undervdi.port=99999"); err == nil ||
		!strings.Contains(err.Error(), `unknown key "nosuch"`) || !strings.Contains(err.Error(), "port") {
		t.Errorf("ApplyCmdline(bad) = %v, want both problems named", err)
	}
}

// TestNetworkCannotChangeTrust: a kiosk with its token on its card takes
// from DHCP neither who it is nor whom it trusts.
func TestNetworkCannotChangeTrust(t *testing.T) {
	c := Default()
	c.Read(strings.NewReader("server = 10.0.0.1\nkiosk = lobby-1\ntoken = card-secret\n"))
	skipped, err := c.ApplyCmdlineExcept(`undervdi.server=169.254.24.1 undervdi.kiosk=evil undervdi.token=x undervdi.tls=false `+
		`undervdi.ca=/tmp/evil.pem undervdi.broker_name=evil undervdi.idle_limit=60`, TrustKeys)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kiosk != "lobby-1" || c.Token != "card-secret" || !c.TLS || c.CA != DefaultCA || c.BrokerName != "vdi-broker" {
		t.Errorf("the network changed the kiosk's identity or trust: %+v", c)
	}
	if c.Server != "169.254.24.1" || c.IdleLimit != time.Minute {
		t.Errorf("the network's other settings were not applied: %+v", c)
	}
	if want := []string{"kiosk", "token", "tls", "ca", "broker_name"}; !slices.Equal(skipped, want) {
		t.Errorf("skipped %q, want %q", skipped, want)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"server = a\nsevrer = b\n", `line 2: unknown key "sevrer"`},
		{"server = a\nport = http\n", `line 2: port: "http" is not a port number`},
		{"server = a\ntouch = nose\n", `touch: "nose": must be one of`},
		{"server = a\nidle_limit = soon\n", `idle_limit: "soon" is not a duration`},
		{"server = a\njust words\n", `line 2: "just words" is not key=value`},
		{"port = 1\n", "server: required"},
		{"server = a\nkiosk = k\n", "token: required with kiosk"},
		{"server = a\nsession_dir = /\n", "session_dir: required, and not /"},
		{"server = a\nusb_redirect = 0x08,-1,-1\n", "usb_redirect: rule 1"},
		{"server = a\nusb_access = usb.sock\n", "usb_access: \"usb.sock\" must be an absolute path"},
		{"server = a\nusb_access = /run/undervdi/session/usb.sock\n", "usb_access: \"/run/undervdi/session/usb.sock\" must not be in session_dir"},
		{"server = a\nads_dir = relative\n", "ads_dir"},
		{"server = a\nidle_limit = 20s\nidle_warning = 30s\n", "idle_warning"},
	} {
		c := Default()
		err := c.Read(strings.NewReader(tc.in))
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.in, err, tc.want)
		}
	}
}
