//go:build integration

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"undervdi/internal/remotehost"
	"undervdi/internal/testbed"
	"undervdi/server/config"
	"undervdi/server/hostcheck"
)

// TestCheckHost runs check-host on this machine against real libvirt and
// the testbed's golden VM: KVM's verdict matches the CPU (this machine has
// no virtualisation extensions: FAIL, or WARN with -allow-tcg), libvirt,
// the golden, storage, capacity and ports pass, and -json is the same.
func TestCheckHost(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 1)
	path := writeConfig(t, cfg)
	cpu, _ := os.ReadFile("/proc/cpuinfo")
	hasKVM := (bytes.Contains(cpu, []byte(" vmx")) || bytes.Contains(cpu, []byte(" svm")))
	if _, err := os.Stat("/dev/kvm"); err != nil {
		hasKVM = false
	}
	for _, allow := range []bool{false, true} {
		args := []string{"check-host", "-config", path, "-json"}
		if allow {
			args = append(args, "-allow-tcg")
		}
		code, rs, v := checkHostJSON(t, args...)
		want := hostcheck.Pass
		if !hasKVM {
			want = map[bool]string{false: hostcheck.Fail, true: hostcheck.Warn}[allow]
		}
		if v["kvm"].Result != want {
			t.Errorf("-allow-tcg=%v: kvm %+v, want %s", allow, v["kvm"], want)
		}
		for _, c := range []string{"libvirt", "golden", "storage overlay_dir", "storage versions_dir", "ports"} {
			if v[c].Result != hostcheck.Pass {
				t.Errorf("%s: %+v", c, v[c])
			}
		}
		if r := v["capacity"]; r.Result == hostcheck.Fail || !strings.Contains(r.Detail, "max_vms") {
			t.Errorf("capacity: %+v", r)
		}
		if failed := hostcheck.Failed(rs); (code != 0) != failed {
			t.Errorf("exit %d with failed=%v", code, failed)
		}
	}
	var table bytes.Buffer
	run([]string{"check-host", "-config", path, "-allow-tcg"}, &table, &bytes.Buffer{})
	if !strings.Contains(table.String(), "PASS  libvirt") {
		t.Errorf("check-host's table:\n%s", table.String())
	}
}

// checkHostJSON runs check-host -json with args and returns its exit
// status and results, also by check.
func checkHostJSON(t *testing.T, args ...string) (int, []hostcheck.Result, map[string]hostcheck.Result) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	var rs []hostcheck.Result
	if err := json.Unmarshal(stdout.Bytes(), &rs); err != nil {
		t.Fatalf("check-host -json: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	v := map[string]hostcheck.Result{}
	for _, r := range rs {
		v[r.Check] = r
	}
	return code, rs, v
}

// TestCheckSeveralHosts: with [[hosts]], check and check-host reach every
// host: the second one, a libvirtd in its own namespaces over TLS, is
// reported by name (its libvirt, its capacity, its version against the
// golden host's), and once it is gone check warns, naming it.
func TestCheckSeveralHosts(t *testing.T) {
	bed := testbed.New(t)
	h2 := remotehost.Start(t)
	cfg := brokerConfig(t, bed, 1)
	cfg.Network.Mode = "golden" // the isolated guest network is the broker machine's own
	cfg.Gateway.HostsCA = filepath.Join(h2.PKI, "cacert.pem")
	dir := filepath.Join(bed.Root, "h2")
	cfg.Hosts = []config.Host{
		{Name: "here", URI: cfg.LibvirtURI, MaxVMs: 2},
		{Name: "there", URI: h2.URI, MaxVMs: 3, SpiceAddress: h2.NS.NSIP,
			OverlayDir: filepath.Join(dir, "overlays"), VersionDir: filepath.Join(dir, "versions")},
	}
	// As an operator writes it: with [[hosts]], no top-level libvirt_uri.
	var file bytes.Buffer
	if err := toml.NewEncoder(&file).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(file.String(), "\n") {
		if !strings.HasPrefix(line, "libvirt_uri") {
			kept = append(kept, line)
		}
	}
	path := filepath.Join(t.TempDir(), "vdi-broker.toml")
	if err := os.WriteFile(path, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	var out, errs bytes.Buffer
	if code := run([]string{"check", "-config", path}, &out, &errs); code != 0 || !strings.Contains(out.String(), "host there: ok") {
		t.Errorf("check: exit %d\n%s%s", code, out.String(), errs.String())
	}
	_, _, v := checkHostJSON(t, "check-host", "-config", path, "-json", "-allow-tcg")
	for check, want := range map[string]string{"libvirt here": hostcheck.Pass, "golden here": hostcheck.Pass,
		"storage overlay_dir here": hostcheck.Pass, "libvirt there": hostcheck.Pass, "host there": hostcheck.Warn} {
		if v[check].Result != want {
			t.Errorf("%s: %+v, want %s", check, v[check], want)
		}
	}
	if r := v["capacity there"]; r.Result == "" || !strings.Contains(r.Detail, "max_vms 3 ×") {
		t.Errorf("capacity there: %+v", r)
	}

	h2.Kill()
	out.Reset()
	errs.Reset()
	// A warning: the broker serves with a host lost, and the unit runs
	// check before it starts.
	if code := run([]string{"check", "-config", path}, &out, &errs); code != 0 || !strings.Contains(out.String(), "host there: WARNING: cannot reach libvirt") {
		t.Errorf("check with the second host gone: exit %d\n%s%s", code, out.String(), errs.String())
	}
}
