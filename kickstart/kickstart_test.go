package kickstart

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"undervdi/server/config"
)

var update = flag.Bool("update", false, "write the examples' ks.cfg files again")

// TestExamples: each example site file gives, exactly, the ks.cfg beside
// it, which passes Check, and whose broker configuration the broker reads
// back as the site file said (go test -update writes them after a change).
func TestExamples(t *testing.T) {
	sites, _ := filepath.Glob("examples/*.toml")
	if len(sites) < 3 {
		t.Fatalf("examples: %v", sites)
	}
	for _, path := range sites {
		name := strings.TrimSuffix(filepath.Base(path), ".toml")
		s, err := Load(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		ks, err := Generate(s, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(ks); err != nil {
			t.Errorf("%s's ks.cfg does not pass Check:\n%v", name, err)
		}
		want := filepath.Join("examples", name+".ks.cfg")
		if *update {
			os.WriteFile(want, ks, 0o644)
		}
		if b, err := os.ReadFile(want); err != nil || string(b) != string(ks) {
			t.Errorf("%s is not what the generator writes from %s (go test ./kickstart -update)", want, path)
		}
		// The broker's configuration, as %post writes it.
		body := between(string(ks), "cat > /etc/undervdi/vdi-broker.toml <<'UNDERVDI_END'\n", "\nUNDERVDI_END\n")
		cfg, err := config.Parse([]byte(body))
		if err != nil {
			t.Errorf("%s: the broker does not take the configuration %%post writes: %v", name, err)
			continue
		}
		if cfg.Golden != s.Broker.Golden || cfg.Sessions.Listen != s.Broker.Sessions.Listen || len(cfg.Kiosks) != len(s.Broker.Kiosks) {
			t.Errorf("%s: the broker reads %+v", name, cfg)
		}
	}
}

func between(s, from, to string) string {
	_, rest, _ := strings.Cut(s, from)
	body, _, _ := strings.Cut(rest, to)
	return body
}

// TestNetworksAndFirewall: the kiosks' ports are open on the kiosk zone
// only, the console on the uplink or the admin network only, and the broker
// listens for kiosks on the kiosk address.
func TestNetworksAndFirewall(t *testing.T) {
	for name, want := range map[string][]string{
		"branch": {"firewall --enabled --service=ssh --port=8443:tcp", "--zone=undervdi-kiosks --add-interface=eno2",
			"network --device=eno2 --bootproto=static --ip=169.254.24.1 --netmask=255.255.255.0 --nodefroute"},
		"bridge-pxe": {"network --device=br-kiosk --bridgeslaves=eno2", "--zone=undervdi-kiosks --add-port=5910/tcp",
			"--add-service=dhcp --add-service=tftp", "systemctl enable vdi-broker.service undervdi-pxe.service", "dnsmasq"},
		"admin-network": {"--remove-service=ssh", "--zone=undervdi-admin --add-interface=eno3",
			"--zone=undervdi-admin --add-service=ssh --add-port=8443/tcp", "--iscrypted --password=$6$"},
	} {
		s, err := Load("examples/" + name + ".toml")
		if err != nil {
			t.Fatal(err)
		}
		ks, _ := Generate(s, name)
		for _, w := range want {
			if !strings.Contains(string(ks), w) {
				t.Errorf("%s's ks.cfg lacks %q", name, w)
			}
		}
		if strings.Contains(string(ks), "undervdi-kiosks --add-port=8443") {
			t.Errorf("%s opens the console to the kiosks", name)
		}
		if s.Broker.Sessions.Listen != "169.254.24.1:5907" || s.Broker.Gateway.PublicHost != "169.254.24.1" {
			t.Errorf("%s: the broker listens for kiosks on %s, offers %s", name, s.Broker.Sessions.Listen, s.Broker.Gateway.PublicHost)
		}
	}
}

// TestBrokenSites: a broken site file gives an error naming each bad key.
func TestBrokenSites(t *testing.T) {
	good, err := os.ReadFile("examples/branch.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{`hostname = "vdi.branch1.example.org"`, `hostname = "VDI_1"`, "hostname"},
		{`time_zone = "Europe/Berlin"`, `time_zone = "Mars/Olympus"`, "time_zone"},
		{`device = "sda"`, `device = "/dev/sda"`, "disk.device"},
		{`root = "20GiB"`, `root = "2GiB"`, "disk.root"},
		{`[uplink]
device = "eno1"`, `[uplink]
device = "eno2"`, "kiosk_network.device"},
		{`address = "169.254.24.1/24"`, `address = "169.254.24.1"`, "kiosk_network.address"},
		{`address = "dhcp"`, `address = "169.254.24.9/16"`, "uplink.gateway"},
		{`user = "vdiadmin"`, `user = "root"`, "admin.user"},
		{`ssh_keys = ["ssh-ed25519`, `ssh_keys = ["ssh-rsa AAAAnotakey`, "admin.ssh_keys[0]"},
		{`url = "http://192.0.2.5:5910/undervdi/"`, `url = "ftp://x/"`, "install.url"},
		{`broker_sha256 = "0b4e`, `broker_sha256 = "zz4e`, "install.broker_sha256"},
		{`golden = "win10"`, `golden = ""`, "broker.golden"},
		{`pool_size = 4`, `pool_size = 40`, "broker.max_vms"},
		{`source = "cdrom"`, `source = "dvd"`, "source"},
		{`[disk]`, "[disk]\nsize = 1", `unknown key "disk.size"`},
		{`[kiosk_network]
device = "eno2"`, `[kiosk_network]
device = "eno2"
pxe = true`, "install.pxe_sha256"},
	} {
		site := strings.Replace(string(good), tc.from, tc.to, 1)
		if site == string(good) {
			t.Fatalf("the test's replacement of %q did nothing", tc.from)
		}
		_, err := Parse([]byte(site))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q → %q: error %v, want one naming %s", tc.from, tc.to, err, tc.want)
		}
	}
}

// TestCheckRefuses: what RHEL 9's installer would refuse or an unattended
// install miss, each on its line.
func TestCheckRefuses(t *testing.T) {
	base := "lang en_US.UTF-8\nkeyboard --xlayouts=us\ntimezone UTC --utc\nrootpw --lock\nbootloader --timeout=1\nautopart\n%packages\n@core\n%end\n"
	if err := Check([]byte(base)); err != nil {
		t.Fatalf("a minimal kickstart: %v", err)
	}
	for _, tc := range []struct{ ks, want string }{
		{base + "netwrk --device=eno1\n", `line 10: "netwrk" is not a RHEL 9 kickstart command`},
		{base + "network --device=eno1 --bridge=br0\n", "--bridge is not an option of network"},
		{base + "network --device\n", "--device needs a value"},
		{base + "network --device=\n", "--device needs a value"},
		{base + "selinux --enforcing=yes\n", "--enforcing takes no value"},
		{base + "lang de_DE.UTF-8\n", "lang is given more than once"},
		{base + "sshkey --username=u\n", "sshkey: wants 1 argument"},
		{base + "sshkey --username=u ssh-ed25519 AAAA\n", "sshkey: takes at most 1"},
		{base + "%post\necho hi\n", "section %post does not end with %end"},
		{base + "%post\necho hi\n%packages\n%end\n", "does not end with %end before %packages"},
		{base + "%end\n", "%end outside a section"},
		{base + "%postinstall\n%end\n", "unknown section %postinstall"},
		{base + "%post --chroot\n%end\n", "--chroot is not an option of %post"},
		{base + "user --name=\"unclosed\n", "a quote is not closed"},
		{"keyboard us\n%packages\n%end\n", "missing: lang"},
		{"lang en_US.UTF-8\nkeyboard us\ntimezone UTC\nrootpw --lock\nbootloader\n", "missing: autopart or part or logvol"},
	} {
		err := Check([]byte(tc.ks))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(...%q) = %v, want %q", tc.ks[len(base)-min(len(base), len(tc.ks)):], err, tc.want)
		}
	}
	// Quoting and comments as kickstart reads them.
	if err := Check([]byte(base + `sshkey --username=u "ssh-ed25519 AAAA comment # not a comment"  # a comment` + "\n")); err != nil {
		t.Errorf("a quoted key: %v", err)
	}
}

// FuzzCheck: Check never panics, whatever the file.
func FuzzCheck(f *testing.F) {
	b, _ := os.ReadFile("examples/bridge-pxe.ks.cfg")
	f.Add(b)
	f.Add([]byte("%post\n%end\n%packages --ignoremissing\n\"'\\"))
	f.Fuzz(func(t *testing.T, ks []byte) { Check(ks) })
}

// TestNoInjection: values the site file carries cannot start a kickstart
// line of their own (Unicode line breaks, which the installer splits on)
// nor run in %post's shell (a listen port, a URL).
func TestNoInjection(t *testing.T) {
	good, _ := os.ReadFile("examples/branch.toml")
	for _, tc := range []struct{ from, to, want string }{
		{`golden = "win10"`, `golden = "w\u2028%end\u2028%pre\u2028reboot\u2028%end"`, "line break"},
		{`golden = "win10"`, `golden = "w\u0085%pre"`, "line break"},
		{`pool_size = 4`, "pool_size = 4\n[broker.sessions]\nlisten = \":5907$(reboot)\"", "broker.sessions.listen"},
		{`url = "http://192.0.2.5:5910/undervdi/"`, `url = "http://192.0.2.5/\t--proxy=x/"`, "install.url"},
		{`url = "http://192.0.2.5:5910/undervdi/"`, `url = "http://192.0.2.5/$(reboot)/"`, "install.url"},
	} {
		site := strings.Replace(string(good), tc.from, tc.to, 1)
		s, err := Parse([]byte(site))
		if err == nil {
			_, err = Generate(s, "x")
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error naming %s", tc.to, err, tc.want)
		}
	}
	// And Check reads such a break as the installer does.
	ks := "lang en_US.UTF-8\nkeyboard us\ntimezone UTC\nrootpw --lock\nbootloader\nautopart\n%packages\n%end\nskipx\u2028bogus-command\n"
	if err := Check([]byte(ks)); err == nil || !strings.Contains(err.Error(), `"bogus-command" is not`) {
		t.Errorf("Check with a U+2028: %v", err)
	}
}
