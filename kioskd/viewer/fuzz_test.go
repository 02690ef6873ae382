package viewer

import (
	"bytes"
	"strings"
	"testing"

	"undervdi/kioskproto"
)

// vvKeys are the keys a connection file may have, each at most once.
var vvKeys = map[string]bool{"type": true, "host": true, "port": true, "tls-port": true, "ca": true, "host-subject": true,
	"secure-channels": true, "password": true, "title": true, "fullscreen": true, "disable-effects": true,
	"enable-usbredir": true, "enable-usb-autoshare": true, "usb-filter": true, "secure-attention": true}

// FuzzWriteVV: whatever an offer (or the broker's operator) puts in its
// fields, the connection file is one [virt-viewer] group of known keys,
// each once, with the host, port and ticket the offer gave; and the
// viewer's arguments are known options.
func FuzzWriteVV(f *testing.F) {
	f.Add("169.254.24.1", "t1cket", "undervdi", "animation", "0x08,-1,-1,-1,1|-1,-1,-1,-1,0", "auto-glz", "-----BEGIN CERTIFICATE-----\nMIIB\r\n-----END CERTIFICATE-----\r\n", "O=undervdi,CN=vdi-broker", true)
	f.Add("h", "t", "evil\ntitle\n[virt-viewer]\nhost=attacker", "x\r\nport=1", "\x00", "a b", "", "CN=x\nca=evil", false)
	f.Fuzz(func(t *testing.T, host, ticket, title, effects, usb, compression, ca, subject string, secure bool) {
		o := kioskproto.Offer{Host: host, Port: 5906, TLSPort: 5909, Ticket: ticket,
			Viewer: kioskproto.Viewer{Title: title, DisableEffects: effects, USBAutoRedirect: usb, USBRedirectConnect: usb, Compression: compression}}
		var sec *Secure
		if secure {
			sec = &Secure{CA: []byte(ca), Subject: subject}
		}
		var b bytes.Buffer
		if err := WriteVV(&b, o, sec); err != nil {
			t.Fatal(err)
		}
		if bytes.ContainsAny(b.Bytes(), "\r\x00") {
			t.Fatalf("the file has a CR or NUL:\n%q", b.String())
		}
		lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
		if lines[0] != "[virt-viewer]" {
			t.Fatalf("first line %q", lines[0])
		}
		got := map[string]string{}
		for _, line := range lines[1:] {
			k, v, ok := strings.Cut(line, "=")
			if !ok || !vvKeys[k] || got[k] != "" || strings.HasPrefix(line, "[") {
				t.Fatalf("line %q: not one known key, once:\n%s", line, b.String())
			}
			got[k] = v
		}
		clean := strings.NewReplacer("\n", "", "\r", "", "\x00", "")
		if got["host"] != clean.Replace(host) || got["password"] != clean.Replace(ticket) {
			t.Errorf("host %q password %q, want the offer's %q %q", got["host"], got["password"], host, ticket)
		}
		if secure {
			if got["port"] != "" || got["tls-port"] != "5909" || got["secure-channels"] != "all" {
				t.Errorf("a secure file with port %q tls-port %q secure-channels %q", got["port"], got["tls-port"], got["secure-channels"])
			}
		} else if got["port"] != "5906" || got["tls-port"] != "" {
			t.Errorf("a plaintext file with port %q tls-port %q", got["port"], got["tls-port"])
		}
		for _, a := range Args(o.Viewer, true) {
			if !strings.HasPrefix(a, "--kiosk") && !strings.HasPrefix(a, "--spice-") {
				t.Errorf("argument %q is not a known option", a)
			}
		}
	})
}
