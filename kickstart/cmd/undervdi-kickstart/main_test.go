package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGenerateAndCheck: generate writes a ks.cfg that check accepts; a
// broken site file and a broken ks.cfg fail with what is wrong.
func TestGenerateAndCheck(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ks.cfg")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"generate", "-o", out, "../../examples/branch.toml"}, &stdout, &stderr); code != 0 {
		t.Fatalf("generate = %d: %s", code, stderr.String())
	}
	stdout.Reset()
	if code := run([]string{"check", out}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "ok") {
		t.Errorf("check = %d: %s %s", code, stdout.String(), stderr.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.cfg")
	os.WriteFile(bad, []byte("lang en_US.UTF-8\nnetwork --bridge=x\n%post\n"), 0o644)
	stderr.Reset()
	if code := run([]string{"check", bad}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "line 2: network: --bridge is not an option") ||
		!strings.Contains(stderr.String(), "does not end with %end") {
		t.Errorf("check of a broken file = %d: %s", code, stderr.String())
	}
	site := filepath.Join(t.TempDir(), "site.toml")
	os.WriteFile(site, []byte("hostname = \"x\"\n"), 0o644)
	stderr.Reset()
	if code := run([]string{"generate", site}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "hostname") {
		t.Errorf("generate of a broken site = %d: %s", code, stderr.String())
	}
	stdout.Reset()
	if code := run([]string{"example"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "[kiosk_network]") {
		t.Errorf("example = %d", code)
	}
}
