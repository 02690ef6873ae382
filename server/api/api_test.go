package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"undervdi/internal/syncbuf"
	"undervdi/internal/testlog"
	"undervdi/kioskproto"
	"undervdi/server/ads"
	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

// fakePool is a pool with two VMs, one of them in use.
type fakePool struct {
	mu    sync.Mutex
	size  int
	ended []string
}

func (p *fakePool) Status() pool.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	return pool.Status{Pool: "undervdi", Golden: "golden", Connected: true, Size: p.size, MaxVMs: 8, Current: 2,
		Counts: map[pool.State]int{pool.Clean: 1, pool.InUse: 1}, Recorded: map[string]int{"clean": 1, "in-use": 1},
		Clones: map[int]int{2: 2},
		Versions: []pool.VersionStatus{{Version: 2, Golden: "golden", Published: now, Size: 1 << 30, Clones: 2, Current: true,
			Volumes: []string{"/var/lib/undervdi/versions/undervdi-v2-vda.qcow2"}}},
		VMs: []pool.VMStatus{{Name: "undervdi-aaaa", State: pool.Clean, Since: now, Version: 2},
			{Name: "undervdi-bbbb", State: pool.InUse, Since: now, Version: 2}}}
}

func (p *fakePool) End(name, reason string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if name != "undervdi-aaaa" && name != "undervdi-bbbb" {
		return fmt.Errorf("%w: %s", pool.ErrUnknownVM, name)
	}
	p.ended = append(p.ended, name+": "+reason)
	return nil
}

func (p *fakePool) Publish(context.Context) (int, error) { return 3, nil }
func (p *fakePool) Rollback(context.Context) (int, int, error) {
	return 0, 0, fmt.Errorf("%w: version 1 is gone", pool.ErrNoEarlier)
}

func (p *fakePool) SetSize(n int) error {
	if n < 0 || n > 8 {
		return fmt.Errorf("%w: %d", pool.ErrBadSize, n)
	}
	p.mu.Lock()
	p.size = n
	p.mu.Unlock()
	return nil
}

type fakeSessions struct {
	mu       sync.Mutex
	closed   string
	notice   string
	ended    []string
	commands []string // "kiosk action text"
	disabled map[string]string
}

func (s *fakeSessions) Leases() []session.LeaseStatus {
	return []session.LeaseStatus{{ID: "l-1", Kiosk: "lobby-1", Addr: "169.254.24.11", VM: "undervdi-bbbb", Offered: time.Now(), Connections: 3}}
}
func (s *fakeSessions) Fleet() []session.KioskStatus {
	return []session.KioskStatus{{ID: "lobby-1", Addr: "169.254.24.11", Connected: time.Now(), Online: true, Session: true, State: "in-session"},
		{ID: "lobby-2"}, {ID: "lobby-3", Addr: "169.254.24.13", Connected: time.Now(), Online: true, State: "idle", Commands: true}}
}
func (s *fakeSessions) Handoffs() session.Handoffs {
	return session.Handoffs{Count: 1, P50: time.Millisecond}
}
func (s *fakeSessions) EndVM(vm, reason string) bool {
	if vm != "undervdi-bbbb" {
		return false
	}
	s.mu.Lock()
	s.ended = append(s.ended, vm+": "+reason)
	s.mu.Unlock()
	return true
}
func (s *fakeSessions) EndLease(id, reason string) bool {
	if id != "l-1" {
		return false
	}
	return s.EndVM("undervdi-bbbb", reason)
}
func (s *fakeSessions) Drain(why, notice string) {
	s.mu.Lock()
	s.closed, s.notice = why, notice
	s.mu.Unlock()
}

func (s *fakeSessions) kiosk(id string) error {
	switch id {
	case "lobby-1", "lobby-3":
		return nil
	case "lobby-2":
		return fmt.Errorf("%w: lobby-2", session.ErrKioskOffline)
	}
	return fmt.Errorf("%w: %s", session.ErrUnknownKiosk, id)
}

func (s *fakeSessions) Command(id string, c kioskproto.Command) error {
	if err := s.kiosk(id); err != nil {
		return err
	}
	if err := kioskproto.NewCommand(c).Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	s.commands = append(s.commands, id+" "+c.Action+" "+c.Text)
	s.mu.Unlock()
	return nil
}

func (s *fakeSessions) Broadcast(c kioskproto.Command) int {
	s.Command("lobby-3", c)
	return 1
}

func (s *fakeSessions) Screenshot(_ context.Context, id string) ([]byte, error) {
	if err := s.kiosk(id); err != nil {
		return nil, err
	}
	if id == "lobby-1" {
		return nil, fmt.Errorf("%w (kiosk lobby-1)", session.ErrInSession)
	}
	var b bytes.Buffer
	jpeg.Encode(&b, image.NewGray(image.Rect(0, 0, 16, 9)), nil)
	return b.Bytes(), nil
}

func (s *fakeSessions) SetOutOfOrder(id, reason string) error {
	if err := s.kiosk(id); err != nil && !errors.Is(err, session.ErrKioskOffline) {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disabled == nil {
		s.disabled = map[string]string{}
	}
	if reason == "" {
		delete(s.disabled, id)
	} else {
		s.disabled[id] = reason
	}
	return nil
}
func (s *fakeSessions) Resume()        { s.mu.Lock(); s.closed = ""; s.mu.Unlock() }
func (s *fakeSessions) Closed() string { s.mu.Lock(); defer s.mu.Unlock(); return s.closed }

// rig is an API server over HTTPS with two users and two tokens.
type rig struct {
	t        *testing.T
	srv      *httptest.Server
	auth     *Auth
	pool     *fakePool
	sessions *fakeSessions
	audit    *syncbuf.Buffer
	accounts string
	now      time.Time
	tokens   map[Role]string
	spec     *spec
}

const password = "correct horse battery"

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{t: t, pool: &fakePool{size: 2}, sessions: &fakeSessions{}, audit: &syncbuf.Buffer{},
		accounts: filepath.Join(dir, "accounts.json"), now: time.Now(), tokens: map[Role]string{}, spec: loadSpec(t)}
	var acc Accounts
	for _, u := range []struct {
		name string
		role Role
	}{{"olga", Operator}, {"vera", Viewer}} {
		if err := acc.SetPassword(u.name, u.role, password); err != nil {
			t.Fatal(err)
		}
		tok, err := acc.AddToken(u.name+"-script", u.role, 0)
		if err != nil {
			t.Fatal(err)
		}
		r.tokens[u.role] = tok
	}
	if _, err := acc.AddToken("old", Operator, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := acc.Write(r.accounts); err != nil {
		t.Fatal(err)
	}
	audit := session.NewAudit(r.audit, testlog.Logger())
	auth, err := NewAuth(AuthConfig{Accounts: r.accounts, LoginTTL: 12 * time.Hour, IdleTimeout: 30 * time.Minute,
		Audit: func(event, user, addr, reason string) {
			if event == "login" {
				audit.Login(user, addr, reason)
			} else {
				audit.Refused("login", addr, "", user+": "+reason)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	auth.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return r.now }
	r.auth = auth
	log := filepath.Join(dir, "audit.log")
	os.WriteFile(log, []byte(`{"time":"2026-12-01T09:00:00Z","event":"session","kiosk":"lobby-1","vm":"undervdi-cccc","reason":"the visitor finished","wiped":true}`+"\n"), 0o600)
	adsDir := filepath.Join(dir, "ads")
	os.Mkdir(adsDir, 0o755)
	s := &Server{Pool: r.pool, Sessions: r.sessions, Auth: auth, Audit: audit, AuditLog: log, Libvirt: "qemu:///system",
		Ads:    &ads.Library{Dir: adsDir},
		Config: func() any { return map[string]any{"pool_size": 2} }, Log: testlog.Logger(),
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "undervdi_up 1\n") }),
		Schedule: func() *schedule.State {
			return &schedule.State{Size: 0, Opens: time.Now().Add(time.Hour), Notice: "Closed — opens at 08:00"}
		}}
	r.spec.routes = s.routes()
	r.srv = httptest.NewTLSServer(s.Handler(false))
	t.Cleanup(r.srv.Close)
	return r
}

// client is a caller of the rig's API; every exchange is checked against
// docs/openapi.yaml.
type client struct {
	r     *rig
	http  *http.Client
	token string
	csrf  string
}

func (r *rig) client(token string) *client {
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Transport: r.srv.Client().Transport, Jar: jar} // its own cookies
	return &client{r: r, http: hc, token: token}
}

// do sends a request and returns the status and the body, after checking
// both against the OpenAPI document.
func (c *client) do(method, path string, body any) (int, []byte) {
	c.r.t.Helper()
	var raw []byte
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
	case rawBody:
		raw, ctype = b.data, b.ctype
	default:
		raw, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, c.r.srv.URL+path, bytes.NewReader(raw))
	if body != nil {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.csrf != "" {
		req.Header.Set("X-CSRF-Token", c.csrf)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.r.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	c.r.spec.check(c.r.t, req, raw, resp, out)
	return resp.StatusCode, out
}

func (c *client) want(method, path string, body any, status int) []byte {
	c.r.t.Helper()
	got, out := c.do(method, path, body)
	if got != status {
		c.r.t.Fatalf("%s %s = %d %s, want %d", method, path, got, out, status)
	}
	return out
}

func code(t *testing.T, body []byte) string {
	var e Error
	if err := json.Unmarshal(body, &e); err != nil || e.Message == "" {
		t.Fatalf("error body %q is not a JSON error with a code and a message", body)
	}
	return e.Code
}

// TestNothingWithoutAuthentication: every route but the health check and
// the login answers 401 with a JSON error to a caller with no credentials,
// a wrong token, or a forged cookie.
func TestNothingWithoutAuthentication(t *testing.T) {
	r := newRig(t)
	for _, c := range []*client{r.client(""), r.client("uvdi_forged"), r.client("not-a-login")} {
		for _, rt := range r.spec.routes {
			path := strings.NewReplacer("{name}", "undervdi-aaaa", "{id}", "l-1").Replace(rt.path)
			status, body := c.do(rt.method, path, nil)
			switch {
			case rt.need == "" && status == http.StatusUnauthorized:
				t.Errorf("%s %s refused a caller without credentials", rt.method, rt.path)
			case rt.need != "" && status != http.StatusUnauthorized:
				t.Errorf("%s %s without valid credentials = %d %s, want 401", rt.method, rt.path, status, body)
			case rt.need != "" && code(t, body) != "unauthenticated":
				t.Errorf("%s %s: code %q", rt.method, rt.path, code(t, body))
			}
		}
	}
	req, _ := http.NewRequest("GET", r.srv.URL+"/v1/status", nil)
	req.AddCookie(&http.Cookie{Name: SessionCookie, Value: "forged"})
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a forged cookie got %d", resp.StatusCode)
	}
	if body := r.client("").want("GET", "/healthz", nil, 200); !strings.Contains(string(body), `"status":"ok"`) {
		t.Errorf("health = %s", body)
	}
}

// TestRoles: a viewer reads everything and changes nothing; an operator
// acts, and each action is in the audit log with who did it.
func TestRoles(t *testing.T) {
	r := newRig(t)
	viewer, op := r.client(r.tokens[Viewer]), r.client(r.tokens[Operator])
	for _, path := range []string{"/v1/status", "/v1/pool", "/v1/vms", "/v1/vms/undervdi-bbbb", "/v1/sessions", "/v1/kiosks",
		"/v1/kiosks/lobby-1", "/v1/versions", "/v1/audit", "/v1/config", "/v1/whoami", "/metrics"} {
		viewer.want("GET", path, nil, 200)
	}
	for _, a := range []struct {
		method, path string
		body         any
	}{
		{"PUT", "/v1/pool/size", SizeRequest{Size: 4}}, {"POST", "/v1/pool/drain", nil}, {"POST", "/v1/pool/resume", nil},
		{"POST", "/v1/vms/undervdi-aaaa/end", nil}, {"POST", "/v1/sessions/l-1/end", nil}, {"POST", "/v1/versions", nil},
		{"POST", "/v1/versions/rollback", nil},
	} {
		if c := code(t, viewer.want(a.method, a.path, a.body, http.StatusForbidden)); c != "forbidden" {
			t.Errorf("%s %s as viewer: code %q", a.method, a.path, c)
		}
	}
	if r.pool.size != 2 || r.sessions.closed != "" || len(r.pool.ended)+len(r.sessions.ended) != 0 {
		t.Fatalf("a viewer changed something: size %d, closed %q, ended %v %v", r.pool.size, r.sessions.closed, r.pool.ended, r.sessions.ended)
	}

	op.want("PUT", "/v1/pool/size", SizeRequest{Size: 4}, 200)
	if c := code(t, op.want("PUT", "/v1/pool/size", SizeRequest{Size: 9}, 400)); c != "bad-request" {
		t.Errorf("size 9: code %q", c)
	}
	code(t, op.want("PUT", "/v1/pool/size", map[string]any{"size": 3, "extra": 1}, 400))
	code(t, op.want("PUT", "/v1/pool/size", nil, 400))
	op.want("POST", "/v1/pool/drain", DrainRequest{Reason: "closing time"}, 200)
	if r.sessions.Closed() != "closing time" {
		t.Errorf("drain: closed %q", r.sessions.Closed())
	}
	var st Status
	json.Unmarshal(op.want("GET", "/v1/status", nil, 200), &st)
	if st.Closed != "closing time" || st.Pool.Size != 4 {
		t.Errorf("status after drain and resize: closed %q, size %d", st.Closed, st.Pool.Size)
	}
	op.want("POST", "/v1/pool/resume", nil, 200)
	op.want("POST", "/v1/vms/undervdi-aaaa/end", EndRequest{Reason: "stuck"}, 202)
	op.want("POST", "/v1/sessions/l-1/end", nil, 202)
	code(t, op.want("POST", "/v1/vms/undervdi-zzzz/end", nil, 404))
	code(t, op.want("POST", "/v1/sessions/l-9/end", nil, 404))
	code(t, op.want("GET", "/v1/vms/undervdi-zzzz", nil, 404))
	code(t, op.want("GET", "/v1/kiosks/nowhere", nil, 404))
	op.want("POST", "/v1/versions", nil, 202)
	if c := code(t, op.want("POST", "/v1/versions/rollback", nil, 409)); c != "conflict" {
		t.Errorf("rollback: code %q", c)
	}
	if c := code(t, op.want("GET", "/nothing", nil, 404)); c != "not-found" {
		t.Errorf("unknown path: code %q", c)
	}
	if got := r.pool.ended; len(got) != 1 || got[0] != "undervdi-aaaa: ended by an admin (olga-script): stuck" {
		t.Errorf("pool ended %v", got)
	}
	if got := r.sessions.ended; len(got) != 1 || !strings.HasPrefix(got[0], "undervdi-bbbb: ended by an admin (olga-script)") {
		t.Errorf("sessions ended %v", got)
	}
	var actions []string
	for _, line := range strings.Split(strings.TrimSpace(r.audit.String()), "\n") {
		var rec session.AuditRecord
		json.Unmarshal([]byte(line), &rec)
		if rec.Event == "admin" {
			if rec.User != "olga-script" || rec.Addr != "127.0.0.1" {
				t.Errorf("admin record without its user or address: %s", line)
			}
			actions = append(actions, rec.What)
		}
	}
	if want := []string{"resize", "drain", "resume", "end", "end", "publish"}; !slices.Equal(actions, want) {
		t.Errorf("audited actions %v, want %v", actions, want)
	}
}

// TestLogin: a console login by cookie, whose changes need the CSRF token;
// logins expire after their idle timeout and their lifetime; logout ends
// them.
func TestLogin(t *testing.T) {
	r := newRig(t)
	c := r.client("")
	if got := code(t, c.want("POST", "/v1/login", LoginRequest{User: "olga", Password: "wrong password!"}, 401)); got != "bad-login" {
		t.Errorf("wrong password: code %q", got)
	}
	var l LoginReply
	json.Unmarshal(c.want("POST", "/v1/login", LoginRequest{User: "olga", Password: password}, 200), &l)
	if l.Role != Operator || l.Token == "" || l.CSRF == "" {
		t.Fatalf("login = %+v", l)
	}
	c.want("GET", "/v1/status", nil, 200) // the cookie
	if got := code(t, c.want("POST", "/v1/pool/drain", nil, 403)); got != "csrf" {
		t.Errorf("a change by cookie without the CSRF token: code %q", got)
	}
	c.csrf = l.CSRF
	c.want("POST", "/v1/pool/drain", nil, 200)
	r.client(l.Token).want("POST", "/v1/pool/resume", nil, 200) // the bearer token needs no CSRF token

	r.now = r.now.Add(29 * time.Minute)
	c.want("GET", "/v1/whoami", nil, 200)
	r.now = r.now.Add(31 * time.Minute)
	if got := code(t, c.want("GET", "/v1/whoami", nil, 401)); got != "expired" {
		t.Errorf("after the idle timeout: code %q", got)
	}

	json.Unmarshal(c.want("POST", "/v1/login", LoginRequest{User: "vera", Password: password}, 200), &l)
	var last []byte
	for i := 0; ; i++ {
		r.now = r.now.Add(29 * time.Minute)
		status, body := c.do("GET", "/v1/whoami", nil)
		if status != 200 {
			last = body
			if i < 24 {
				t.Errorf("a login used every 29 minutes ended after %d of them", i+1)
			}
			break
		}
	}
	if got := code(t, last); got != "expired" {
		t.Errorf("after login_ttl: code %q", got)
	}

	json.Unmarshal(c.want("POST", "/v1/login", LoginRequest{User: "vera", Password: password}, 200), &l)
	c.csrf = l.CSRF
	c.want("POST", "/v1/logout", nil, 204)
	r.client(l.Token).want("GET", "/v1/whoami", nil, 401)

	// An expired API token.
	var acc *Accounts
	acc, _ = ReadAccounts(r.accounts)
	tok, _ := acc.AddToken("brief", Viewer, time.Hour)
	acc.Tokens[len(acc.Tokens)-1].Expires = r.now.Add(time.Hour) // on the test's clock
	acc.Write(r.accounts)
	r.client(tok).want("GET", "/v1/whoami", nil, 200)
	r.now = r.now.Add(2 * time.Hour)
	if got := code(t, r.client(tok).want("GET", "/v1/whoami", nil, 401)); got != "expired" {
		t.Errorf("an expired token: code %q", got)
	}
}

// TestLoginRateLimited: after five failed logins from an address, even the
// right password is refused until the allowance comes back, and each
// refusal is audited; another address is not held up.
func TestLoginRateLimited(t *testing.T) {
	r := newRig(t)
	c := r.client("")
	for range 5 {
		c.want("POST", "/v1/login", LoginRequest{User: "olga", Password: "guess guess guess"}, 401)
	}
	req, _ := json.Marshal(LoginRequest{User: "olga", Password: password})
	resp, err := r.srv.Client().Post(r.srv.URL+"/v1/login", "application/json", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || code(t, body) != "rate-limited" {
		t.Fatalf("sixth login = %d %s (Retry-After %q), want 429 rate-limited", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(r.audit.String(), `"event":"refused","what":"login"`) {
		t.Errorf("failed logins not audited:\n%s", r.audit.String())
	}
	// The allowance is per address and per user: the same user from
	// elsewhere is held up too (a guesser cannot move), another user from
	// elsewhere is not.
	if _, _, _, _, err := r.auth.Login("olga", password, "10.0.0.7"); err != ErrRateLimited {
		t.Errorf("olga from another address: %v, want rate-limited", err)
	}
	if _, _, _, _, err := r.auth.Login("vera", password, "10.0.0.7"); err != nil {
		t.Errorf("vera from another address: %v", err)
	}
	r.now = r.now.Add(25 * time.Second)
	c.want("POST", "/v1/login", LoginRequest{User: "olga", Password: password}, 200)
	if !strings.Contains(r.audit.String(), `"event":"login","what":"api","user":"olga"`) {
		t.Errorf("login not audited:\n%s", r.audit.String())
	}
}

// TestAccountsFileReread: a user removed from the accounts file, or given
// another role, loses the logins made before; a new user can log in at
// once; a broken file (an edit gone wrong) keeps the accounts read before.
func TestAccountsFileReread(t *testing.T) {
	r := newRig(t)
	c := r.client("")
	var l LoginReply
	json.Unmarshal(c.want("POST", "/v1/login", LoginRequest{User: "olga", Password: password}, 200), &l)
	acc, _ := ReadAccounts(r.accounts)
	acc.SetPassword("olga", Viewer, password)
	acc.SetPassword("nina", Operator, password+"!")
	time.Sleep(10 * time.Millisecond) // a new modification time
	acc.Write(r.accounts)
	r.client(l.Token).want("GET", "/v1/whoami", nil, 401)
	c.want("POST", "/v1/login", LoginRequest{User: "nina", Password: password + "!"}, 200)
	os.WriteFile(r.accounts, []byte("{broken"), 0o600)
	c.want("GET", "/v1/whoami", nil, 200)
	c.want("POST", "/v1/login", LoginRequest{User: "nina", Password: password + "!"}, 200)
}

// TestAuditPaging reads the audit log through the API with filters.
func TestAuditPaging(t *testing.T) {
	r := newRig(t)
	v := r.client(r.tokens[Viewer])
	var p AuditPage
	json.Unmarshal(v.want("GET", "/v1/audit?kiosk=lobby-1&limit=10", nil, 200), &p)
	if len(p.Records) != 1 || p.Records[0].VM != "undervdi-cccc" || p.Next != "" {
		t.Errorf("audit page = %+v", p)
	}
	json.Unmarshal(v.want("GET", "/v1/audit?kiosk=lobby-9", nil, 200), &p)
	if len(p.Records) != 0 {
		t.Errorf("lobby-9's page = %+v", p)
	}
	code(t, v.want("GET", "/v1/audit?limit=0", nil, 400))
	code(t, v.want("GET", "/v1/audit?since=yesterday", nil, 400))
}

// TestSecurityHeaders: answers are never cached or framed, and browsers
// are told to keep to HTTPS.
func TestSecurityHeaders(t *testing.T) {
	r := newRig(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get(r.srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Strict-Transport-Security") == "" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("healthz: %d, headers %v", resp.StatusCode, resp.Header)
	}
}

// TestKioskActions: an operator reboots a kiosk, shows it a message, puts
// it out of order and back, and refreshes the ads; a viewer may only look
// at the slideshow's screenshot, which is refused for a kiosk in session;
// bad input and offline or unknown kiosks are told apart.
func TestKioskActions(t *testing.T) {
	r := newRig(t)
	viewer, op := r.client(r.tokens[Viewer]), r.client(r.tokens[Operator])
	for _, a := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/kiosks/lobby-3/reboot", nil}, {"POST", "/v1/kiosks/lobby-3/message", MessageRequest{Text: "hi"}},
		{"PUT", "/v1/kiosks/lobby-3/out-of-order", nil}, {"DELETE", "/v1/kiosks/lobby-3/out-of-order", nil},
		{"POST", "/v1/ads/refresh", nil},
	} {
		code(t, viewer.want(a.method, a.path, a.body, http.StatusForbidden))
	}
	if len(r.sessions.commands) != 0 || len(r.sessions.disabled) != 0 {
		t.Fatalf("a viewer's commands went through: %v %v", r.sessions.commands, r.sessions.disabled)
	}
	status, body := viewer.do("GET", "/v1/kiosks/lobby-3/screenshot", nil)
	if status != 200 || !bytes.HasPrefix(body, []byte{0xff, 0xd8}) {
		t.Errorf("screenshot = %d, %d bytes", status, len(body))
	}
	if c := code(t, viewer.want("GET", "/v1/kiosks/lobby-1/screenshot", nil, 409)); c != "in-session" {
		t.Errorf("a screenshot during a session: code %q", c)
	}
	if c := code(t, op.want("POST", "/v1/kiosks/lobby-2/reboot", nil, 409)); c != "offline" {
		t.Errorf("reboot of an offline kiosk: code %q", c)
	}
	code(t, op.want("POST", "/v1/kiosks/nowhere/reboot", nil, 404))
	op.want("POST", "/v1/kiosks/lobby-3/reboot", nil, 202)
	op.want("POST", "/v1/kiosks/lobby-3/message", MessageRequest{Text: "Back at 2 pm", Seconds: 600}, 202)
	code(t, op.want("POST", "/v1/kiosks/lobby-3/message", MessageRequest{Text: ""}, 400))
	code(t, op.want("POST", "/v1/kiosks/lobby-3/message", MessageRequest{Text: "x", Seconds: 90000}, 400))
	op.want("PUT", "/v1/kiosks/lobby-2/out-of-order", OutOfOrderRequest{Reason: "screen cracked"}, 200) // offline: kept for its return
	op.want("PUT", "/v1/kiosks/lobby-3/out-of-order", nil, 200)
	op.want("DELETE", "/v1/kiosks/lobby-3/out-of-order", nil, 200)
	code(t, op.want("PUT", "/v1/kiosks/nowhere/out-of-order", nil, 404))
	op.want("POST", "/v1/ads/refresh", nil, 200)
	op.want("POST", "/v1/pool/drain", DrainRequest{Reason: "maintenance", Notice: "Closed for maintenance"}, 200)
	if r.sessions.notice != "Closed for maintenance" {
		t.Errorf("drain notice %q", r.sessions.notice)
	}
	want := []string{"lobby-3 reboot an operator (olga-script)", "lobby-3 message Back at 2 pm", "lobby-3 refresh-ads "}
	if !slices.Equal(r.sessions.commands, want) {
		t.Errorf("commands %q, want %q", r.sessions.commands, want)
	}
	if d := r.sessions.disabled; len(d) != 1 || d["lobby-2"] != "screen cracked" {
		t.Errorf("out of order: %v", d)
	}
}

// rawBody is a request body that is not JSON.
type rawBody struct {
	ctype string
	data  []byte
}

// TestAds: an operator uploads, replaces and removes ads, each time telling
// the kiosks; a viewer lists and previews them and may not change them;
// what is no ad is refused.
func TestAds(t *testing.T) {
	r := newRig(t)
	viewer, op := r.client(r.tokens[Viewer]), r.client(r.tokens[Operator])
	var pic bytes.Buffer
	png.Encode(&pic, image.NewRGBA(image.Rect(0, 0, 64, 36)))
	body := rawBody{"image/png", pic.Bytes()}
	code(t, viewer.want("PUT", "/v1/ads/sale.png", body, 403))
	var ad ads.Ad
	json.Unmarshal(op.want("PUT", "/v1/ads/sale.png", body, 201), &ad)
	if ad.Width != 64 || ad.Height != 36 {
		t.Errorf("ad = %+v", ad)
	}
	var list []ads.Ad
	json.Unmarshal(viewer.want("GET", "/v1/ads", nil, 200), &list)
	if len(list) != 1 || list[0].Name != "sale.png" {
		t.Errorf("list = %+v", list)
	}
	if got := viewer.want("GET", "/v1/ads/sale.png", nil, 200); !bytes.Equal(got, pic.Bytes()) {
		t.Errorf("preview: %d bytes, want %d", len(got), pic.Len())
	}
	if c := code(t, op.want("PUT", "/v1/ads/sale.jpg", body, 400)); c != "bad-request" {
		t.Errorf("a PNG named .jpg: code %q", c)
	}
	code(t, op.want("PUT", "/v1/ads/notes.txt", rawBody{"image/png", []byte("hello")}, 400))
	code(t, op.want("GET", "/v1/ads/missing.png", nil, 404))
	op.want("DELETE", "/v1/ads/sale.png", nil, 204)
	code(t, op.want("DELETE", "/v1/ads/sale.png", nil, 404))
	if n := strings.Count(strings.Join(r.sessions.commands, ","), "refresh-ads"); n != 2 {
		t.Errorf("kiosks told %d times to refresh, want 2 (an upload, a removal): %v", n, r.sessions.commands)
	}
}

// TestLoginLimitHoldsUnderConcurrency: guesses sent at once get the
// allowance and no more; a name no account can have is not kept.
func TestLoginLimitHoldsUnderConcurrency(t *testing.T) {
	r := newRig(t)
	var mu sync.Mutex
	results := map[error]int{}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, _, err := r.auth.Login("olga", "guess guess guess", "10.0.0.8")
			mu.Lock()
			results[err]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if results[ErrBadLogin] != 5 || results[ErrRateLimited] != 15 {
		t.Errorf("20 guesses at once: %v, want 5 checked and 15 refused", results)
	}
	long := strings.Repeat("x", 5000)
	r.auth.Login(long, "p", "10.0.0.9")
	if strings.Contains(r.audit.String(), long) {
		t.Error("a user name no account can have went into the audit")
	}
}

// TestNewPasswordEndsLogins: setting a user's password again ends the
// logins made with the old one.
func TestNewPasswordEndsLogins(t *testing.T) {
	r := newRig(t)
	token, _, _, _, err := r.auth.Login("vera", password, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r.client(token).want("GET", "/v1/whoami", nil, 200)
	acc, _ := ReadAccounts(r.accounts)
	acc.SetPassword("vera", Viewer, "a new long password")
	time.Sleep(10 * time.Millisecond)
	acc.Write(r.accounts)
	r.client(token).want("GET", "/v1/whoami", nil, 401)
}
