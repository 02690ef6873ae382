package pxe

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/bootlayout"
	"undervdi/internal/syncbuf"
)

func TestRunDnsmasqStops(t *testing.T) {
	needDnsmasq(t)
	conf := filepath.Join(t.TempDir(), "dnsmasq.conf")
	// Nothing to serve: dnsmasq only starts and waits.
	if err := os.WriteFile(conf, []byte("port=0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunDnsmasq(ctx, conf, debugLogger(&logs)) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "started, version") {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not log its start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunDnsmasq() after cancel = %v, want nil", err)
		}
	case <-time.After(2 * stopGrace):
		t.Fatal("RunDnsmasq() did not return after cancel")
	}
	if !strings.Contains(logs.String(), "exiting on receipt of SIGTERM") {
		t.Errorf("dnsmasq was not stopped by SIGTERM:\n%s", logs.String())
	}
}

func TestRunDnsmasqFails(t *testing.T) {
	needDnsmasq(t)
	conf := filepath.Join(t.TempDir(), "dnsmasq.conf")
	if err := os.WriteFile(conf, []byte("port=0\ndhcp-range=nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := RunDnsmasq(ctx, conf, nil)
	if err == nil || !strings.Contains(err.Error(), "bad dhcp-range at line 2") {
		t.Errorf("RunDnsmasq(bad configuration) = %v, want dnsmasq's complaint", err)
	}
}

func TestCheckBootDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err := CheckBootDir(dir, true)
	for _, name := range []string{bootlayout.Kernel, bootlayout.Initramfs, bootlayout.IPXEScript, UndiLoader, EFILoader} {
		if err == nil || !strings.Contains(err.Error(), "has no "+name) {
			t.Errorf("CheckBootDir(empty) = %v, want it to name %s", err, name)
		}
	}
	for _, name := range []string{bootlayout.Kernel, bootlayout.Initramfs, bootlayout.IPXEScript, UndiLoader, EFILoader} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := CheckBootDir(dir, true); err != nil {
		t.Errorf("CheckBootDir(complete) = %v", err)
	}
	os.Chmod(filepath.Join(dir, UndiLoader), 0o600)
	os.WriteFile(filepath.Join(dir, bootlayout.Initramfs), nil, 0o644)
	err = CheckBootDir(dir, true)
	if err == nil || !strings.Contains(err.Error(), UndiLoader+" is not readable by others") ||
		!strings.Contains(err.Error(), bootlayout.Initramfs+" is empty") {
		t.Errorf("CheckBootDir(private loader, empty initramfs) = %v", err)
	}
	os.Chmod(dir, 0o700)
	if err := CheckBootDir(dir, true); err == nil || !strings.Contains(err.Error(), "not searchable") {
		t.Errorf("CheckBootDir(private directory) = %v", err)
	}
	if err := CheckBootDir(filepath.Join(dir, "nonexistent"), true); err == nil {
		t.Errorf("CheckBootDir(nonexistent) = nil")
	}
}
