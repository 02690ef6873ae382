package main

import (
	"bytes"
	"os"
	"path/filepath"
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

func TestUnknownCommand(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"frobnicate"}, &bytes.Buffer{}, &stderr); code != exitSetup || !strings.Contains(stderr.String(), "usage") {
		t.Errorf("run(frobnicate) = %d, %q", code, stderr.String())
	}
}
