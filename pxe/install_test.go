package pxe

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// installDir is a server install's directory, with stand-in files.
func installDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		InstallKernel: "kernel", InstallInitrd: "initrd", InstallKickstart: "lang en_US.UTF-8\n",
		"undervdi/vdi-broker": "broker", "undervdi/pxe/vmlinuz": "kiosk kernel",
	} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	return dir
}

// TestInstallDnsmasq: named machines boot the installer, the others the
// kiosk image; without names, everyone boots the installer.
func TestInstallDnsmasq(t *testing.T) {
	c := isolated(t)
	c.Install = &ServerInstall{Dir: installDir(t), MACs: []net.HardwareAddr{mac(t, "52:54:00:aa:bb:cc")}}
	conf, err := c.Dnsmasq()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"dhcp-host=52:54:00:aa:bb:cc,set:install\n",
		"dhcp-boot=tag:ipxe,tag:install,http://169.254.24.1:5910/install.ipxe,,169.254.24.1\n",
		"dhcp-boot=tag:ipxe,tag:!install,http://169.254.24.1:5910/boot.ipxe,,169.254.24.1\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("dnsmasq.conf lacks %q:\n%s", want, conf)
		}
	}
	c.Install.MACs = nil
	conf, _ = c.Dnsmasq()
	if !strings.Contains(conf, "dhcp-boot=tag:ipxe,http://169.254.24.1:5910/install.ipxe,,169.254.24.1\n") || strings.Contains(conf, "boot.ipxe") {
		t.Errorf("an install network's dnsmasq.conf:\n%s", conf)
	}
	// What is wrong with an install is said.
	c.Install = &ServerInstall{Dir: t.TempDir(), Repo: "ftp://x", MACs: []net.HardwareAddr{c.Kiosks[0].MAC}}
	err = c.Validate()
	for _, want := range []string{"has no vmlinuz", "has no initrd.img", "has no ks.cfg", "install-repo", "is a kiosk's too"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
}

// TestInstallScriptAndFiles: the install script boots the installer with
// the kickstart's URL; the installer, the kickstart and %post's files are
// served, nothing else of the directory; the kiosk's files still are.
func TestInstallScriptAndFiles(t *testing.T) {
	c := isolated(t)
	c.Install = &ServerInstall{Dir: installDir(t), Repo: "http://192.0.2.5/almalinux/9/BaseOS/x86_64/os/", Cmdline: " console=ttyS0 "}
	script := c.InstallIPXE()
	for _, want := range []string{"#!ipxe\n", "kernel install/vmlinuz initrd=initrd.img inst.ks=http://169.254.24.1:5910/install/ks.cfg",
		"inst.repo=http://192.0.2.5/almalinux/9/BaseOS/x86_64/os/", " inst.text rd.neednet=1 console=ttyS0 BOOTIF=01-${netX/mac:hexhyp}\n", "\ninitrd install/initrd.img\nboot\n"} {
		if !strings.Contains(script, want) {
			t.Errorf("install.ipxe lacks %q:\n%s", want, script)
		}
	}
	boot := t.TempDir()
	os.WriteFile(filepath.Join(boot, "boot.ipxe"), []byte("#!ipxe kiosk"), 0o644)
	srv := httptest.NewServer(&installHandler{cfg: c.withDefaults(), next: &Handler{Dir: boot}})
	defer srv.Close()
	for path, want := range map[string]string{
		"/install.ipxe": "#!ipxe\n", "/install/vmlinuz": "kernel", "/install/initrd.img": "initrd", "/install/ks.cfg": "lang",
		"/undervdi/vdi-broker": "broker", "/undervdi/pxe/vmlinuz": "kiosk kernel", "/boot.ipxe": "#!ipxe kiosk",
		"/install/../undervdi/vdi-broker": "", "/undervdi/other/x": "", "/install/undervdi/vdi-broker": "", "/undervdi/pxe/../../ks.cfg": "",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case want == "" && resp.StatusCode != 404:
			t.Errorf("GET %s = %d %q, want 404", path, resp.StatusCode, b)
		case want != "" && (resp.StatusCode != 200 || !strings.HasPrefix(string(b), want)):
			t.Errorf("GET %s = %d %q, want %q", path, resp.StatusCode, b, want)
		}
	}
}
