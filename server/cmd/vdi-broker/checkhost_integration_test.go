//go:build integration

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"undervdi/internal/testbed"
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
