package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestPrintConfig(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{
		"-interface", "br-kiosk", "-boot-dir", "/srv/boot", "-http", ":8080",
		"-settings", "undervdi.server=169.254.24.1",
		"-kiosk", "52:54:00:12:34:56,169.254.24.11=undervdi.kiosk=lobby-1 undervdi.token=s3cret",
		"-kiosk", "52-54-00-12-34-57=undervdi.kiosk=lobby-2 motd=\"a, b\"",
		"-print-config",
	}, &out, &errOut)
	if err != nil {
		t.Fatalf("run(-print-config) = %v; stderr: %s", err, errOut.String())
	}
	for _, want := range []string{
		"\ninterface=br-kiosk\n",
		"\ntftp-root=/srv/boot\n",
		"\ndhcp-range=169.254.24.128,169.254.24.254,255.255.255.0,1h\n",
		"\ndhcp-boot=tag:ipxe,http://169.254.24.1:8080/boot.ipxe,,169.254.24.1\n",
		"\ndhcp-host=52:54:00:12:34:56,set:kiosk1,169.254.24.11\n",
		"\ndhcp-host=52:54:00:12:34:57,set:kiosk2\n",
		"\ndhcp-option-force=tag:kiosk2,224,\"undervdi.server=169.254.24.1 undervdi.kiosk=lobby-2 motd=\\\"a, b\\\"\"\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run(-print-config) output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPrintProxyConfig(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{
		"-mode", "proxy", "-interface", "eth1", "-boot-dir", "/srv/boot",
		"-subnet", "192.168.1.0/24", "-server", "192.168.1.5", "-print-config",
	}, &out, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("run(-mode proxy -print-config) = %v", err)
	}
	if want := "\ndhcp-range=192.168.1.0,proxy,255.255.255.0\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // in the error
	}{
		{"no interface", []string{"-boot-dir", "/srv/boot", "-print-config"}, []string{"interface: missing"}},
		{"no boot dir", []string{"-interface", "br0", "-print-config"}, []string{"boot-dir: missing"}},
		{"bad mode", []string{"-mode", "relay", "-interface", "br0", "-boot-dir", "/b", "-print-config"}, []string{"mode:", "relay"}},
		{"proxy needs subnet and server", []string{"-mode", "proxy", "-interface", "br0", "-boot-dir", "/b", "-print-config"},
			[]string{"subnet: missing", "server: missing"}},
		{"proxy takes no kiosks", []string{"-mode", "proxy", "-interface", "br0", "-boot-dir", "/b", "-subnet", "10.0.0.0/24",
			"-server", "10.0.0.2", "-kiosk", "52:54:00:12:34:56=x", "-print-config"}, []string{"kiosk: is for isolated mode only"}},
		{"kiosk without settings", []string{"-kiosk", "52:54:00:12:34:56"}, []string{"want MAC[,ADDRESS]=SETTINGS"}},
		{"kiosk bad MAC", []string{"-kiosk", "52:54:00:12:34=x"}, []string{"invalid MAC address"}},
		{"kiosk bad address", []string{"-kiosk", "52:54:00:12:34:56,169.254.24=x"}, []string{"kiosk 52:54:00:12:34:56"}},
		{"kiosk token, no address", []string{"-interface", "br0", "-boot-dir", "/b", "-kiosk", "52:54:00:12:34:56=undervdi.token=x", "-print-config"}, []string{"anyone on the kiosk LAN can read"}},
		{"bad range", []string{"-range", "169.254.24.10"}, []string{"-range", "START-END"}},
		{"bad server", []string{"-server", "kiosk-server"}, []string{"-server"}},
		{"bad http", []string{"-http", "5909"}, []string{"-http"}},
		{"settings with newline", []string{"-interface", "br0", "-boot-dir", "/b", "-settings", "a\nb", "-print-config"},
			[]string{"settings: byte 0x0a"}},
		{"port 0 print", []string{"-interface", "br0", "-boot-dir", "/b", "-http", ":0", "-print-config"}, []string{"port 0"}},
		{"stray argument", []string{"-interface", "br0", "extra"}, []string{"unexpected arguments"}},
		{"missing boot files", []string{"-interface", "br0", "-boot-dir", "/nonexistent/boot"}, []string{"boot directory", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errOut)
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error; output:\n%s", tc.args, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("run(%q) = %v, want it to say %q", tc.args, err, w)
				}
			}
			if out.Len() > 0 {
				t.Errorf("run(%q) printed a configuration despite the error:\n%s", tc.args, out.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out, &errOut); err != nil {
		t.Errorf("run(-h) = %v, want nil", err)
	}
	if !strings.Contains(errOut.String(), "Usage: undervdi-pxe") {
		t.Errorf("run(-h) printed %q, want the usage", errOut.String())
	}
}

func TestMissingBootFiles(t *testing.T) {
	dir := t.TempDir()
	err := run(context.Background(), []string{"-interface", "br0", "-boot-dir", dir}, &bytes.Buffer{}, &bytes.Buffer{})
	for _, name := range []string{"vmlinuz", "initramfs.img", "boot.ipxe", "undionly.kpxe", "ipxe.efi"} {
		if err == nil || !strings.Contains(err.Error(), "has no "+name) {
			t.Errorf("run(empty boot dir) = %v, want it to name %s", err, name)
		}
	}
}
