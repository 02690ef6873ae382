package siteca

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
)

func TestEnsureMakesOnceAndVerifies(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	s, made, err := Ensure(dir)
	if err != nil || len(made) != 2 {
		t.Fatalf("Ensure() = %v, made %v; want the CA and the broker's certificate made", err, made)
	}
	for _, f := range []string{caKeyFile, keyFile} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want 0600", f, st.Mode(), err)
		}
	}
	again, made, err := Ensure(dir)
	if err != nil || len(made) != 0 || again.Fingerprint() != s.Fingerprint() {
		t.Errorf("second Ensure() = %v, made %v, fingerprint %s; want the same site, nothing made", err, made, again.Fingerprint())
	}
	// A kiosk that carries the CA verifies the broker by ServerName.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{s.Certificate}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"the site's CA and name", &tls.Config{RootCAs: s.Pool(), ServerName: ServerName}, true},
		{"the system's CAs", &tls.Config{ServerName: ServerName}, false},
		{"another name", &tls.Config{RootCAs: s.Pool(), ServerName: "evil.example.org"}, false},
	} {
		c, err := tls.Dial("tcp", ln.Addr().String(), tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: dial = %v, want ok %v", tc.name, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
	}
	// Another site's CA is not this one's.
	other, _, err := Ensure(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: other.Pool(), ServerName: ServerName}); err == nil {
		c.Close()
		t.Errorf("a kiosk of another site accepted this broker")
	}
	if len(s.Fingerprint()) != 95 {
		t.Errorf("fingerprint %q", s.Fingerprint())
	}
}

func TestSubject(t *testing.T) {
	s, _, err := Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got := Subject(s.Certificate.Leaf); got != "O=undervdi,CN=vdi-broker" {
		t.Errorf("Subject() = %q, want O=undervdi,CN=vdi-broker", got)
	}
}
