package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"undervdi/server/config"
)

func TestBadConfigExitsWithSetupStatus(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ file, want string }{
		{"golden = \"g\"\npool_sise = 3\n", `unknown key "pool_sise"`},
		{"golden = \"g\"\nready_timeout = \"soon\"\n", `ready_timeout`},
		{"pool_size = 2\n", "golden: required"},
	} {
		path := filepath.Join(dir, "broker.toml")
		os.WriteFile(path, []byte(tc.file), 0o644)
		var stdout, stderr bytes.Buffer
		if code := run([]string{"run", "-config", path}, &stdout, &stderr); code != exitSetup {
			t.Errorf("run with %q = exit %d, want %d", tc.file, code, exitSetup)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run with %q said %q, want it to name %q", tc.file, stderr.String(), tc.want)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"run", "-config", filepath.Join(dir, "missing.toml")}, &bytes.Buffer{}, &stderr); code != exitSetup ||
		!strings.Contains(stderr.String(), "missing.toml") {
		t.Errorf("run with a missing config = %d, %q", code, stderr.String())
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"example-config"}, &out, &bytes.Buffer{}); code != exitOK {
		t.Fatalf("example-config = exit %d", code)
	}
	if _, err := config.Parse(out.Bytes()); err != nil {
		t.Errorf("the printed example does not parse: %v", err)
	}
}

// TestImportLegacy: the original's vm_manager.conf, as its documentation
// shows it, becomes a config the broker accepts; what has no successor is
// said; an existing file is never overwritten.
func TestImportLegacy(t *testing.T) {
	dir := t.TempDir()
	legacy := filepath.Join(dir, "vm_manager.conf")
	os.WriteFile(legacy, []byte("srv_scripts_dir = /home/admin/scripts_vdi_new\nsrv_pool_size = 4\nsrv_start_port_pool = 5920\n"+
		"srv_tmp_dir = /tmp/vm_state\nbase_host = win10_2\ninput_iface = lo\nvdi_spice_port = 5906\ncount_conn_tryes = 10\n"), 0o644)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"import-legacy", legacy}, &stdout, &stderr); code != exitOK {
		t.Fatalf("import-legacy = %d: %s", code, stderr.String())
	}
	c, err := config.Parse(stdout.Bytes())
	if err != nil {
		t.Fatalf("the imported config does not parse: %v", err)
	}
	if c.Golden != "win10_2" || c.PoolSize != 4 || c.Gateway.Listen != "127.0.0.1:5906" {
		t.Errorf("imported golden %q, pool %d, gateway %q; want win10_2, 4, lo's 127.0.0.1:5906", c.Golden, c.PoolSize, c.Gateway.Listen)
	}
	if !strings.Contains(stderr.String(), "srv_start_port_pool = 5920: not carried over") {
		t.Errorf("stderr does not say what was left behind: %s", stderr.String())
	}
	out := filepath.Join(dir, "vdi-broker.toml")
	if code := run([]string{"import-legacy", "-o", out, legacy}, &bytes.Buffer{}, &stderr); code != exitOK {
		t.Fatalf("import-legacy -o = %d: %s", code, stderr.String())
	}
	if _, err := config.Load(out); err != nil {
		t.Errorf("the written config does not load: %v", err)
	}
	stderr.Reset()
	if code := run([]string{"import-legacy", "-o", out, legacy}, &bytes.Buffer{}, &stderr); code != exitSetup || !strings.Contains(stderr.String(), "exists") {
		t.Errorf("import-legacy over an existing file = %d, %q; want it refused", code, stderr.String())
	}
	os.WriteFile(legacy, []byte("srv_pool_size = four\n"), 0o644)
	stderr.Reset()
	if code := run([]string{"import-legacy", legacy}, &bytes.Buffer{}, &stderr); code != exitSetup || !strings.Contains(stderr.String(), "not a pool size") {
		t.Errorf("import-legacy of a bad file = %d, %q", code, stderr.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"frobnicate"}, &bytes.Buffer{}, &stderr); code != exitSetup || !strings.Contains(stderr.String(), "usage") {
		t.Errorf("run(frobnicate) = %d, %q", code, stderr.String())
	}
}

// TestSystemdUnit checks the unit file with systemd's own tools: it must
// verify cleanly and keep its hardening (exposure level at most 2.0 of 10).
func TestSystemdUnit(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not installed (make deps)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vdi-broker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	unit, err := os.ReadFile("../../vdi-broker.service")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vdi-broker.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/vdi-broker"), []byte(bin)), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify = %v: %s", err, out)
	}
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", path).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for vdi-broker.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security said:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("exposure level = %.1f, want at most 2.0:\n%s", level, out)
	}
}
