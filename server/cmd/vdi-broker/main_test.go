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
	"time"

	"undervdi/server/api"
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

// TestAccountsVerbs: passwd sets a password read from stdin (refusing a
// short one, changing nothing), token add prints a token the file keeps
// only the hash of, list shows both, revoke and -remove take them away.
func TestAccountsVerbs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	runWith := func(input string, args ...string) (int, string, string) {
		stdin = strings.NewReader(input)
		defer func() { stdin = os.Stdin }()
		var stdout, stderr bytes.Buffer
		code := run(append(args[:1:1], append([]string{"-accounts", path}, args[1:]...)...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	if code, _, errOut := runWith("short\n", "passwd", "olga"); code != exitError || !strings.Contains(errOut, "at least 12") {
		t.Errorf("a short password: %d %q", code, errOut)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("a refused password wrote the file")
	}
	if code, _, errOut := runWith("a long enough password\n", "passwd", "-role", "viewer", "vera"); code != exitOK {
		t.Fatalf("passwd: %d %s", code, errOut)
	}
	if code, _, errOut := runWith("x\n", "passwd", "-role", "boss", "olga"); code != exitError || !strings.Contains(errOut, "viewer or operator") {
		t.Errorf("a bad role: %d %q", code, errOut)
	}
	code := 0
	var secret, errOut string
	args := []string{"token", "add", "-role", "operator", "-expires", "90d", "ci"}
	stdin = strings.NewReader("")
	var so, se bytes.Buffer
	code = run(append(args[:2:2], append([]string{"-accounts", path}, args[2:]...)...), &so, &se)
	secret, errOut = strings.TrimSpace(so.String()), se.String()
	if code != exitOK || !strings.HasPrefix(secret, api.TokenPrefix) {
		t.Fatalf("token add: %d %q %q", code, secret, errOut)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), secret) || strings.Contains(string(raw), "a long enough password") {
		t.Errorf("the accounts file holds a secret in the clear:\n%s", raw)
	}
	if st, _ := os.Stat(path); st.Mode().Perm()&0o037 != 0 {
		t.Errorf("accounts file mode %v: others read it, or the group may change it", st.Mode().Perm())
	}
	acc, err := api.ReadAccounts(path)
	if err != nil || len(acc.Users) != 1 || acc.Users[0].Role != api.Viewer || len(acc.Tokens) != 1 || acc.Tokens[0].Expires.Sub(acc.Tokens[0].Created) != 90*24*time.Hour {
		t.Errorf("accounts = %+v, %v", acc, err)
	}
	if !api.CheckPassword(acc.Users[0].Hash, "a long enough password") || api.CheckPassword(acc.Users[0].Hash, "a long enough passwore") {
		t.Error("the stored hash does not check the password")
	}
	so.Reset()
	run([]string{"token", "list", "-accounts", path}, &so, &se)
	for _, want := range []string{"vera", "user", "viewer", "ci", "token", "operator"} {
		if !strings.Contains(so.String(), want) {
			t.Errorf("token list:\n%s\nwant %q", so.String(), want)
		}
	}
	if code := run([]string{"token", "revoke", "-accounts", path, "vera"}, &so, &se); code != exitError {
		t.Errorf("token revoke of a user = %d", code)
	}
	if code := run([]string{"token", "revoke", "-accounts", path, "ci"}, &so, &se); code != exitOK {
		t.Errorf("token revoke = %d", code)
	}
	if code, _, _ := runWith("", "passwd", "-remove", "vera"); code != exitOK {
		t.Errorf("passwd -remove = %d", code)
	}
	if acc, _ := api.ReadAccounts(path); len(acc.Users)+len(acc.Tokens) != 0 {
		t.Errorf("after revoke and remove: %+v", acc)
	}
}
