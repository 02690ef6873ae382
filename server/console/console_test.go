package console

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/testlog"
	"undervdi/server/api"
	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

// pagePool and pageSessions are a small site for rendering the pages.
type pagePool struct{ api.Pool }

func (pagePool) Status() pool.Status {
	lost := time.Now().Add(-time.Minute)
	return pool.Status{Pool: "undervdi", Golden: "win10", Connected: true, Size: 2, MaxVMs: 8, Current: 3,
		Degraded: "3 clones failed in a row: check the golden VM",
		Counts:   map[pool.State]int{pool.Clean: 1, pool.InUse: 1},
		VMs: []pool.VMStatus{{Name: "undervdi-aaaa", State: pool.Clean, Since: time.Now(), Version: 3, Host: "kvm1"},
			{Name: "undervdi-bbbb", State: pool.InUse, Since: time.Now(), Version: 3, Host: "kvm1"}},
		Hosts: []pool.HostStatus{{Name: "kvm1", URI: "qemu:///system", Connected: true, Size: 2, MaxVMs: 4, Current: 3,
			Degraded: "3 clones failed in a row: check the golden VM",
			Counts:   map[pool.State]int{pool.Clean: 1, pool.InUse: 1}},
			{Name: "kvm2", URI: "qemu+tls://kvm2/system", Group: "branch", Lost: &lost, MaxVMs: 4, Current: 2,
				Publish: &pool.PublishStatus{Version: 3, Started: lost}}},
		Versions: []pool.VersionStatus{{Version: 3, Golden: "win10", Published: time.Now(), Size: 1 << 30, Current: true}},
		Publish:  &pool.PublishStatus{Version: 4, Started: time.Now(), Total: 100, Written: 40}}
}

type pageSessions struct{ api.Sessions }

func (pageSessions) Leases() []session.LeaseStatus {
	return []session.LeaseStatus{{ID: "l-1", Kiosk: "lobby-1", Addr: "10.0.0.11", VM: "undervdi-bbbb", Offered: time.Now()}}
}
func (pageSessions) Fleet() []session.KioskStatus {
	return []session.KioskStatus{{ID: "lobby-1", Online: true, Session: true, Commands: true, State: "in-session", Image: "kiosk-1"},
		{ID: "lobby-2", Online: true, Commands: true, State: "idle", OldImage: true, Image: "kiosk-0"},
		{ID: "lobby-3", Disabled: "<b>screen</b> cracked"}}
}
func (pageSessions) Handoffs() session.Handoffs { return session.Handoffs{} }
func (pageSessions) Closed() string             { return "" }

func site(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	dir := t.TempDir()
	var acc api.Accounts
	acc.SetPassword("olga", api.Operator, "olga's long password")
	acc.SetPassword("vera", api.Viewer, "vera's long password")
	accounts := filepath.Join(dir, "accounts.json")
	acc.Write(accounts)
	auth, err := api.NewAuth(api.AuthConfig{Accounts: accounts, LoginTTL: time.Hour, IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Server{Pool: pagePool{}, Sessions: pageSessions{}, Auth: auth, Log: testlog.Logger(), Config: func() any { return nil },
		Schedule: func() *schedule.State { return &schedule.State{Open: true, Size: 2, Closes: time.Now().Add(time.Hour)} }}
	c, err := New(s, []schedule.Period{{Days: "mon-fri", Hours: "08:00-18:00", Size: 2}}, testlog.Logger())
	if err != nil {
		t.Fatal(err)
	}
	s.Console = c.Handler()
	srv := httptest.NewTLSServer(s.Handler(false))
	t.Cleanup(srv.Close)
	return srv, accounts
}

func login(t *testing.T, srv *httptest.Server, user, password string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Transport: srv.Client().Transport, Jar: jar}
	resp, err := hc.Post(srv.URL+"/v1/login", "application/json", strings.NewReader(`{"user":"`+user+`","password":"`+password+`"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login %s: %v %v", user, err, resp.Status)
	}
	resp.Body.Close()
	return hc
}

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestNoPageWithoutLogin: every page sends a caller without a login to the
// login page; the login page, the stylesheet and the script are all that
// shows.
func TestNoPageWithoutLogin(t *testing.T) {
	srv, _ := site(t)
	hc := &http.Client{Transport: srv.Client().Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, p := range nav {
		resp, err := hc.Get(srv.URL + Prefix + p.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), Prefix+"login?next=") {
			t.Errorf("%s without a login: %d %q", p.Name, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if status, _ := get(t, hc, srv.URL+Prefix+"events"); status != http.StatusUnauthorized {
		t.Errorf("events without a login: %d", status)
	}
	for _, path := range []string{"login", "static/console.js", "static/console.css"} {
		if status, _ := get(t, hc, srv.URL+Prefix+path); status != 200 {
			t.Errorf("%s: %d", path, status)
		}
	}
	resp, _ := hc.Get(srv.URL + "/")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != Prefix {
		t.Errorf("/ = %d %q, want the console", resp.StatusCode, resp.Header.Get("Location"))
	}
	if safeNext("https://evil.example/") != Prefix || safeNext("/console//evil.example") != Prefix || safeNext("/console/kiosks") != "/console/kiosks" {
		t.Error("safeNext lets a login redirect leave the console")
	}
}

// TestPages: every page renders for an operator with its actions and for a
// viewer without them; what kiosks and operators wrote is escaped.
func TestPages(t *testing.T) {
	srv, _ := site(t)
	op, viewer := login(t, srv, "olga", "olga's long password"), login(t, srv, "vera", "vera's long password")
	want := map[string][]string{
		"": {"host kvm1 degraded: 3 clones failed", "kiosk lobby-2 runs an old image", "Open until", `data-act="PUT /v1/pool/size"`,
			"host kvm2 is lost", `data-host="kvm1"`, "<td>branch</td>", "version 3: 0 B of 0 B"},
		"vms":      {"undervdi-aaaa", `data-act="POST /v1/vms/undervdi-bbbb/end"`, "<td>kvm1</td>"},
		"sessions": {"l-1", `data-act="POST /v1/sessions/l-1/end"`},
		"kiosks":   {"lobby-3", "&lt;b&gt;screen&lt;/b&gt; cracked", `/v1/kiosks/lobby-2/screenshot`, `data-act="POST /v1/kiosks/lobby-2/reboot"`},
		"versions": {"Publishing version 4", `data-act="POST /v1/versions"`},
		"audit":    {"no audit file"},
		"ads":      {"serves no ads"},
		"schedule": {"mon-fri", "08:00-18:00"},
	}
	for path, texts := range want {
		status, body := get(t, op, srv.URL+Prefix+path)
		if status != 200 {
			t.Errorf("%s: %d %s", path, status, body)
			continue
		}
		for _, w := range texts {
			if !strings.Contains(body, w) {
				t.Errorf("page %q for an operator lacks %q", path, w)
			}
		}
		if strings.Contains(body, "<b>screen</b>") {
			t.Errorf("page %q shows a kiosk's text unescaped", path)
		}
		_, vbody := get(t, viewer, srv.URL+Prefix+path)
		if strings.Count(vbody, "data-act=") > 1 { // the logout
			t.Errorf("page %q shows a viewer actions", path)
		}
	}
	// A kiosk in a session offers no screenshot.
	if _, body := get(t, op, srv.URL+Prefix+"kiosks"); strings.Contains(body, "/v1/kiosks/lobby-1/screenshot") {
		t.Error("the kiosks page offers a screenshot of a kiosk in session")
	}
	// The live updates' fragment is the content alone.
	req, _ := http.NewRequest("GET", srv.URL+Prefix+"vms", nil)
	req.Header.Set("X-Fragment", "1")
	resp, _ := op.Do(req)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), "<html") || !strings.Contains(string(b), "undervdi-aaaa") {
		t.Errorf("fragment: %.200s", b)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
}

// TestFormLogin: the login form sets the cookie and goes on to the page
// asked for; a wrong password stays on the form, saying so.
func TestFormLogin(t *testing.T) {
	srv, _ := site(t)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Transport: srv.Client().Transport, Jar: jar}
	resp, err := hc.PostForm(srv.URL+Prefix+"login", url.Values{"user": {"olga"}, "password": {"wrong password!"}, "next": {"/console/kiosks"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "Wrong user name or password") {
		t.Errorf("a wrong password: %d %.300s", resp.StatusCode, b)
	}
	resp, err = hc.PostForm(srv.URL+Prefix+"login", url.Values{"user": {"olga"}, "password": {"olga's long password"}, "next": {"/console/kiosks"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Request.URL.Path != "/console/kiosks" || !strings.Contains(string(b), "lobby-2") {
		t.Errorf("after the login: %s %.300s", resp.Request.URL, b)
	}
}
