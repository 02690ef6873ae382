package viewer

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"undervdi/kioskproto"
)

var offer = kioskproto.Offer{Lease: "l", Host: "169.254.24.1", Port: 5906, Ticket: "t1cket", Expires: time.Now().Add(time.Minute),
	Viewer: kioskproto.Viewer{Title: "undervdi", DisableAudio: true, DisableEffects: "animation", Compression: "auto-glz",
		USBAutoRedirect: "0x08,-1,-1,-1,1|-1,-1,-1,-1,0", USBRedirectConnect: "0x08,-1,-1,-1,1|-1,-1,-1,-1,0"}}

func TestWriteVV(t *testing.T) {
	var b bytes.Buffer
	o := offer
	o.Viewer.Title = "evil\ntitle\n[virt-viewer]\nhost=attacker"
	if err := WriteVV(&b, o, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[virt-viewer]\n", "type=spice\n", "host=169.254.24.1\n", "port=5906\n", "password=t1cket\n",
		"usb-filter=0x08,-1,-1,-1,1|-1,-1,-1,-1,0\n", "disable-effects=animation\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf(".vv lacks %q:\n%s", want, b.String())
		}
	}
	sections, hosts := 0, 0
	for _, line := range strings.Split(b.String(), "\n") {
		if line == "[virt-viewer]" {
			sections++
		}
		if strings.HasPrefix(line, "host=") {
			hosts++
		}
	}
	if sections != 1 || hosts != 1 {
		t.Errorf("a newline in a value injected keys:\n%s", b.String())
	}
	args := strings.Join(Args(offer.Viewer, true), " ")
	for _, want := range []string{"--kiosk --kiosk-quit=on-disconnect", "--spice-disable-audio", "--spice-preferred-compression=auto-glz",
		"--spice-usbredir-redirect-on-connect=0x08"} {
		if !strings.Contains(args, want) {
			t.Errorf("Args() = %q, want %q", args, want)
		}
	}
}

// TestPrepareConnectStop runs a stand-in viewer that, like remote-viewer,
// starts, waits for its connection file on stdin, and then starts a child
// which ignores SIGTERM: the offer must arrive on stdin (and nowhere on
// disk), and Stop must leave neither process behind.
func TestPrepareConnectStop(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "remote-viewer")
	os.WriteFile(fake, []byte(`#!/bin/sh
[ "$1" = "-" ] || exit 3
cat > "$(dirname "$0")/received"
sh -c 'trap "" TERM; echo $$ > '"$(dirname "$0")"'/child; while :; do sleep 1; done' &
wait
`), 0o755)
	v, err := Prepare(Options{Binary: fake}, offer.Viewer)
	if err != nil {
		t.Fatal(err)
	}
	if v.Exited() {
		t.Fatal("the prepared viewer did not wait for its offer")
	}
	if err := v.Connect(offer, nil); err != nil {
		t.Fatal(err)
	}
	if err := v.Connect(offer, nil); err == nil {
		t.Errorf("a second Connect = nil error")
	}
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(filepath.Join(dir, "child"))
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the stand-in viewer's child never started")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "received")); !strings.Contains(string(b), "password=t1cket\n") {
		t.Errorf("the viewer received %q, want the offer's connection file", b)
	}
	v.Stop(200 * time.Millisecond)
	deadline = time.Now().Add(5 * time.Second)
	for syscall.Kill(child, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("child %d of the viewer survived Stop", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWriteVVSecure: with TLS, every channel goes to the TLS port, verified
// against the kiosk's CA and the gateway's subject; no plaintext port at all.
func TestWriteVVSecure(t *testing.T) {
	var b bytes.Buffer
	o := offer
	o.TLSPort = 5909
	ca := "-----BEGIN CERTIFICATE-----\nMIIB\nxyz=\n-----END CERTIFICATE-----\n"
	if err := WriteVV(&b, o, &Secure{CA: []byte(ca), Subject: "O=undervdi,CN=vdi-broker"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tls-port=5909\n", `ca=-----BEGIN CERTIFICATE-----\nMIIB\nxyz=\n-----END CERTIFICATE-----` + "\n",
		"host-subject=O=undervdi,CN=vdi-broker\n", "secure-channels=all\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf(".vv lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "\nport=") {
		t.Errorf(".vv names a plaintext port:\n%s", b.String())
	}
}
