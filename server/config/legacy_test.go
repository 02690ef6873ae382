package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// legacyConf is the original's vm_manager.conf as its documentation shows
// it, odd spacing and all.
const legacyConf = `srv_scripts_dir = /home/admin/ scripts_vdi_new
srv_pool_size = 4
srv_start_port_pool = 5920
srv_tmp_dir = / tmp / vm_state
base_host = win10_2
input_iface = enp5s0
vdi_spice_port = 5906
count_conn_tryes = 10
`

func enp5s0(iface string) (string, error) {
	if iface == "enp5s0" {
		return "169.254.24.1", nil
	}
	return "", errors.New("no such interface")
}

func TestImportLegacy(t *testing.T) {
	imp, err := ImportLegacy(strings.NewReader(legacyConf+"# a comment\n\nfavourite_colour = blue\n"), enp5s0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(imp.TOML))
	if err != nil {
		t.Fatalf("the imported config does not parse: %v\n%s", err, imp.TOML)
	}
	if c.Golden != "win10_2" || c.PoolSize != 4 || c.MaxVMs != 8 || c.Gateway.ConnectWindow.D() != 10*time.Second {
		t.Errorf("imported golden %q, pool %d (max %d), connect window %v", c.Golden, c.PoolSize, c.MaxVMs, c.Gateway.ConnectWindow)
	}
	for got, want := range map[string]string{
		c.Gateway.Listen: "169.254.24.1:5906", c.Gateway.TLSListen: "169.254.24.1:5909", c.Sessions.Listen: "169.254.24.1:5907",
		c.Sessions.LegacyListen: "169.254.24.1:5905", c.Ads.Listen: "169.254.24.1:5908", c.Metrics.Listen: "127.0.0.1:9107",
	} {
		if got != want {
			t.Errorf("listen %q, want %q", got, want)
		}
	}
	notes := strings.Join(imp.Notes, "\n")
	for _, want := range []string{"srv_start_port_pool = 5920: not carried over", "srv_tmp_dir", "srv_scripts_dir",
		`line 11: unknown key "favourite_colour"`, "legacy = true"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
		if !strings.Contains(imp.TOML, "# NOTE: ") {
			t.Errorf("the config does not carry the notes")
		}
	}
	// The example's comments stay, for the operator who reads it next.
	if !strings.Contains(imp.TOML, "# The kiosks the broker serves") {
		t.Error("the imported config lost the example's comments")
	}
}

func TestImportLegacyWithoutTheInterface(t *testing.T) {
	imp, err := ImportLegacy(strings.NewReader(strings.ReplaceAll(legacyConf, "enp5s0", "eth9")), enp5s0)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Parse([]byte(imp.TOML))
	if c.Gateway.Listen != ":5906" || !strings.Contains(strings.Join(imp.Notes, "\n"), "input_iface = eth9: no such interface") {
		t.Errorf("gateway listen %q, notes %q: want every address and a note", c.Gateway.Listen, imp.Notes)
	}
}

func TestImportLegacyRefusesBadValues(t *testing.T) {
	for _, c := range []struct{ conf, want string }{
		{"srv_pool_size = four\n", "srv_pool_size = four: not a pool size"},
		{"srv_pool_size = 0\n", "srv_pool_size = 0"},
		{"count_conn_tryes = -3\n", "count_conn_tryes = -3"},
		{"vdi_spice_port = 70000\n", "vdi_spice_port = 70000: not a port"},
		{"base_host win10\n", `line 1: "base_host win10" is not key = value`},
	} {
		_, err := ImportLegacy(strings.NewReader(c.conf), enp5s0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ImportLegacy(%q) = %v, want an error with %q", c.conf, err, c.want)
		}
	}
}
