//go:build integration

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"undervdi/internal/brokertest"
	"undervdi/internal/freeport"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/kioskproto"
	"undervdi/server/api"
	"undervdi/server/pool"
	"undervdi/server/siteca"
)

// TestHTTPSAPI runs a real broker with its HTTPS API: nothing but the
// health check answers without credentials; a viewer reads and is refused
// changes; an operator's token resizes the pool (libvirt clones one more
// VM), drains it (a kiosk's request is refused with the reason), resumes
// and ends a VM (it is replaced); the vdi-broker verbs do the same over
// -url, and the audit log names who did what.
func TestHTTPSAPI(t *testing.T) {
	bed := testbed.New(t)
	cfg := brokerConfig(t, bed, 1)
	cfg.MaxVMs = 3
	cfg.API.Listen = fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	var acc api.Accounts
	if err := acc.SetPassword("olga", api.Operator, "olga's long password"); err != nil {
		t.Fatal(err)
	}
	if err := acc.SetPassword("vera", api.Viewer, "vera's long password"); err != nil {
		t.Fatal(err)
	}
	opToken, _ := acc.AddToken("ops-script", api.Operator, 0)
	if err := acc.Write(cfg.API.Accounts); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, writeConfig(t, cfg), cfg.AdminSocket)
	p.waitFull(t, 1)

	caFile := filepath.Join(cfg.SiteCADir(), siteca.CAFile)
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	base := "https://" + cfg.API.Listen
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	call := func(method, path, token string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}

	if status, body := call("GET", "/healthz", "", nil); status != 200 || !strings.Contains(string(body), `"libvirt":true`) {
		t.Errorf("healthz = %d %s", status, body)
	}
	if status, _ := call("GET", "/v1/status", "", nil); status != 401 {
		t.Errorf("status without credentials = %d, want 401", status)
	}
	status, body := call("POST", "/v1/login", "", api.LoginRequest{User: "vera", Password: "vera's long password"})
	var login api.LoginReply
	if json.Unmarshal(body, &login); status != 200 || login.Role != api.Viewer {
		t.Fatalf("vera's login = %d %s", status, body)
	}
	if status, _ := call("GET", "/v1/status", login.Token, nil); status != 200 {
		t.Errorf("a viewer's status = %d", status)
	}
	if status, _ := call("PUT", "/v1/pool/size", login.Token, api.SizeRequest{Size: 2}); status != 403 {
		t.Errorf("a viewer's resize = %d, want 403", status)
	}

	// The operator's token, through the vdi-broker verbs over -url.
	t.Setenv("UNDERVDI_TOKEN", opToken)
	cli := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		verb := 1
		if args[0] == "kiosk" {
			verb = 2 // kiosk SUB [flags] ...
		}
		full := append(append(slices.Clip(args[:verb]), "-url", base, "-ca", caFile), args[verb:]...)
		if code := run(full, &stdout, &stderr); code != exitOK {
			t.Fatalf("vdi-broker %s = %d: %s", strings.Join(full, " "), code, stderr.String())
		}
		return stdout.String()
	}
	cli("resize", "2")
	p.waitFull(t, 2)
	cli("drain", "closing", "time")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := kioskproto.Dialer{Addr: "127.0.0.1:" + port(cfg.Sessions.Listen),
		TLS: brokertest.KioskTLS(t, caFile)}.Dial(ctx, "k1", kioskToken, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	k.Request(time.Time{})
	for m := range k.Messages() {
		if m.Type == kioskproto.TError {
			if !strings.Contains(m.Error.Message, "closing time") {
				t.Errorf("a request while drained was refused with %q", m.Error.Message)
			}
			break
		}
		if m.Type == kioskproto.TOffer {
			t.Fatal("a drained broker offered a VM")
		}
	}
	if out := cli("status"); !strings.Contains(out, "NO NEW SESSIONS: closing time") {
		t.Errorf("status while drained:\n%s", out)
	}
	cli("resume")
	// Kiosk commands: this kiosk (a bare protocol client) takes none, so a
	// screenshot is refused as such; out of order holds across its requests.
	if status, body := call("GET", "/v1/kiosks/k1/screenshot", login.Token, nil); status != 409 || !strings.Contains(string(body), "no-commands") {
		t.Errorf("a screenshot of a kiosk that takes no commands = %d %s", status, body)
	}
	cli("kiosk", "out-of-order", "k1", "screen", "cracked")
	k.Request(time.Time{})
	for m := range k.Messages() {
		if m.Type == kioskproto.TError {
			if !strings.Contains(m.Error.Message, "out of order") {
				t.Errorf("a request from a kiosk out of order was refused with %q", m.Error.Message)
			}
			break
		}
	}
	if out := cli("status"); !strings.Contains(out, "screen cracked") {
		t.Errorf("status does not show the kiosk out of order:\n%s", out)
	}
	cli("kiosk", "in-order", "k1")
	s := p.status()
	victim := s.Pool.VMs[0].Name
	if status, body := call("POST", "/v1/vms/"+victim+"/end", opToken, api.EndRequest{Reason: "test"}); status != 202 {
		t.Fatalf("end %s = %d %s", victim, status, body)
	}
	poll.Until(t, 5*time.Minute, victim+" replaced", func() bool {
		s := p.status()
		if s == nil || s.Pool.Counts[pool.Clean] != 2 {
			return false
		}
		for _, v := range s.Pool.VMs {
			if v.Name == victim {
				return false
			}
		}
		return true
	})
	out := cli("audit", "-event", "admin")
	for _, want := range []string{"resize", "drain", "resume", "end", "out-of-order", "in-order", "ops-script", victim} {
		if !strings.Contains(out, want) {
			t.Errorf("vdi-broker audit -event admin:\n%s\nwant %q", out, want)
		}
	}
	if out := cli("audit", "-event", "login"); !strings.Contains(out, "vera") {
		t.Errorf("vera's login is not in the audit:\n%s", out)
	}
}
