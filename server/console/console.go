// Package console is the broker's web console: server-rendered pages
// (html/template) behind the API's logins, a small script that calls the
// REST API for every action, and live updates by server-sent events, on
// which a page fetches its own content again. Nothing but the login page
// and the stylesheet and script shows without a login. docs/console.md
// says why it is built this way.
package console

import (
	"cmp"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"undervdi/server/ads"
	"undervdi/server/api"
	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the pages. It reads what the API serves, and acts only
// through the API, from the browser.
type Console struct {
	API *api.Server
	// Periods are the opening hours as configured, for the schedule page.
	Periods []schedule.Period
	Log     *slog.Logger
	// Every is how often the live updates look for a change; 0: 1 s.
	Every time.Duration

	pages map[string]*template.Template
}

// Prefix is where the console lives on the API's HTTPS port.
const Prefix = "/console/"

// nav is the console's pages, in the order of its menu.
var nav = []struct{ Path, Name string }{
	{"", "Overview"}, {"vms", "VMs"}, {"sessions", "Sessions"}, {"kiosks", "Kiosks"}, {"versions", "Versions"},
	{"audit", "Audit"}, {"ads", "Ads"}, {"schedule", "Schedule"},
}

var funcs = template.FuncMap{
	"since": func(now, t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return now.Sub(t).Round(time.Second).String()
	},
	"bytes": func(n any) string {
		switch v := n.(type) {
		case int64:
			return humanize.IBytes(uint64(v))
		case uint64:
			return humanize.IBytes(v)
		}
		return fmt.Sprint(n)
	},
	"clock": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("Mon 2 Jan 15:04:05")
	},
	"pct": func(a, b uint64) int {
		if b == 0 {
			return 100
		}
		return int(100 * a / b)
	},
	"json":  func(v any) string { b, _ := json.Marshal(v); return string(b) },
	"path":  url.PathEscape,
	"list":  func(s ...string) []string { return s },
	"count": func(p pool.Status, state string) int { return p.Counts[pool.State(state)] },
	"of":    func(counts map[pool.State]int, state string) int { return counts[pool.State(state)] },
	"online": func(ks []session.KioskStatus) int {
		n := 0
		for _, k := range ks {
			if k.Online {
				n++
			}
		}
		return n
	},
	"dur": func(s int) string { return (time.Duration(s) * time.Second).String() },
}

// New parses the pages.
func New(a *api.Server, periods []schedule.Period, log *slog.Logger) (*Console, error) {
	c := &Console{API: a, Periods: periods, Log: log, pages: map[string]*template.Template{}}
	for _, n := range append([]string{"login"}, pageNames()...) {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, err
		}
		c.pages[n] = t
	}
	return c, nil
}

func pageNames() []string {
	var out []string
	for _, p := range nav {
		out = append(out, cmp.Or(p.Path, "overview"))
	}
	return out
}

// Handler serves the console under Prefix.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET "+Prefix+"static/", http.StripPrefix(Prefix+"static/", http.FileServerFS(static)))
	mux.HandleFunc("GET "+Prefix+"login", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, "login", &page{Title: "Log in", Next: safeNext(r.URL.Query().Get("next"))})
	})
	mux.HandleFunc("POST "+Prefix+"login", c.login)
	mux.HandleFunc("GET "+Prefix+"events", c.events)
	for _, p := range nav {
		name := cmp.Or(p.Path, "overview")
		mux.HandleFunc("GET "+Prefix+p.Path, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != Prefix+p.Path {
				http.NotFound(w, r)
				return
			}
			// A page fetching itself again for its live updates is no
			// sign of anyone at it: it does not keep the login awake.
			var id api.Identity
			var err error
			if r.Header.Get("X-Fragment") == "1" {
				id, err = c.API.Auth.Still(r)
			} else {
				id, _, err = c.API.Auth.Authenticate(r)
			}
			if err != nil {
				http.Redirect(w, r, Prefix+"login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			pg, err := c.page(r, id, p.Name, p.Path)
			if err != nil {
				c.Log.Error("console page", "page", name, "err", err)
				http.Error(w, "the broker could not make this page: "+err.Error(), http.StatusInternalServerError)
				return
			}
			c.render(w, r, name, pg)
		})
	}
	return headers(mux)
}

// login checks the login form (the API's login, audited and rate-limited
// the same way) and sets the session cookie.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	next := safeNext(r.FormValue("next"))
	token, _, id, retry, err := c.API.Auth.Login(r.FormValue("user"), r.FormValue("password"), api.ClientAddr(r))
	if err != nil {
		msg := "Wrong user name or password."
		switch {
		case errors.Is(err, api.ErrRateLimited):
			msg = fmt.Sprintf("Too many failed logins: wait %v.", retry)
		case !errors.Is(err, api.ErrBadLogin):
			c.Log.Error("console login", "err", err)
			msg = "The broker cannot check logins now: " + err.Error()
		}
		w.WriteHeader(http.StatusUnauthorized)
		c.render(w, r, "login", &page{Title: "Log in", Next: next, Error: msg})
		return
	}
	http.SetCookie(w, api.LoginCookie(token, id.Expires))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// headers: no script but the console's own. The API's handler, which the
// console is served through, adds the rest (no framing, sniffing, caching).
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.ServeHTTP(w, r)
	})
}

// safeNext keeps a redirect after login within the console.
func safeNext(next string) string {
	if strings.HasPrefix(next, Prefix) && !strings.Contains(next, "//") && !strings.ContainsAny(next, "\\\r\n") {
		return next
	}
	return Prefix
}

// page is what a template sees.
type page struct {
	Title, Path, Next string
	Error             string // the login's
	Nav               []struct{ Path, Name string }
	User              api.Identity
	Operator          bool
	CSRF              string
	Now               time.Time
	Status            api.Status
	Alerts            []alert
	VMs               []vmRow
	Audit             *api.AuditPage
	AuditError        string
	Query             url.Values
	Ads               []ads.Ad
	AdsError          string
	Periods           []schedule.Period
}

type alert struct{ Level, Text string }

type vmRow struct {
	pool.VMStatus
	Session *session.LeaseStatus
}

func (c *Console) page(r *http.Request, id api.Identity, title, path string) (*page, error) {
	a := c.API
	st := a.Snapshot()
	pg := &page{Title: title, Path: path, Nav: nav, User: id, Operator: id.Role == api.Operator, CSRF: id.CSRF,
		Now: time.Now(), Status: st, Alerts: alerts(st), Query: r.URL.Query(), Periods: c.Periods}
	leases := map[string]*session.LeaseStatus{}
	for i, l := range st.Sessions {
		leases[l.VM] = &st.Sessions[i]
	}
	for _, v := range st.Pool.VMs {
		pg.VMs = append(pg.VMs, vmRow{VMStatus: v, Session: leases[v.Name]})
	}
	switch path {
	case "audit":
		q := r.URL.Query()
		aq := session.AuditQuery{Kiosk: q.Get("kiosk"), VM: q.Get("vm"), Event: q.Get("event"), Limit: 50}
		if b, err := time.Parse(time.RFC3339Nano, q.Get("before")); err == nil {
			aq.Before = b
		}
		if a.AuditLog == "" {
			pg.AuditError = "this broker keeps no audit file (sessions.audit_log is empty)"
			break
		}
		recs, more, err := session.ReadAudit(a.AuditLog, aq)
		if err != nil {
			pg.AuditError = err.Error()
			break
		}
		pg.Audit = &api.AuditPage{Records: recs}
		if more {
			pg.Audit.Next = recs[len(recs)-1].Time.Format(time.RFC3339Nano)
		}
	case "ads":
		if a.Ads == nil {
			pg.AdsError = "this broker serves no ads (ads.dir is empty)"
			break
		}
		list, err := a.Ads.List()
		if err != nil {
			return nil, err
		}
		pg.Ads = list
	}
	return pg, nil
}

// alerts are what an operator should look at, worst first.
func alerts(st api.Status) []alert {
	var out []alert
	p := st.Pool
	add := func(level, format string, args ...any) { out = append(out, alert{level, fmt.Sprintf(format, args...)}) }
	switch {
	case len(p.Hosts) > 0:
		for _, h := range p.Hosts {
			switch {
			case !h.Connected:
				add("bad", "host %s is lost (%s): its VMs are not offered, and its sessions end", h.Name, h.URI)
			case h.Degraded != "":
				add("bad", "host %s degraded: %s", h.Name, h.Degraded)
			case h.Publish != nil && h.Publish.Finished != nil && h.Publish.Error != "" && h.Current != p.Current:
				add("bad", "host %s: copying version %d failed: %s", h.Name, h.Publish.Version, h.Publish.Error)
			case h.Paused != "":
				add("warn", "host %s paused: %s", h.Name, h.Paused)
			}
		}
	case !p.Connected:
		add("bad", "libvirt is not connected (%s): no VM can be made or handed out", st.Libvirt)
	}
	if p.Degraded != "" && len(p.Hosts) == 0 { // a site's is its hosts' lines above
		add("bad", "pool degraded: %s", p.Degraded)
	}
	if p.Paused != "" {
		add("warn", "golden running / pool paused: %s", p.Paused)
	}
	if p.Memory != "" {
		add("warn", "memory: %s", p.Memory)
	}
	if j := p.Publish; j != nil && j.Finished != nil && j.Error != "" {
		add("bad", "publishing version %d failed: %s", j.Version, j.Error)
	}
	for _, k := range st.Kiosks {
		switch {
		case k.Online && k.Fault != "":
			add("bad", "kiosk %s out of order: %s", k.ID, k.Fault)
		case k.Disabled != "":
			add("warn", "kiosk %s put out of order by an operator: %s", k.ID, k.Disabled)
		}
		if k.Online && k.OldImage {
			add("warn", "kiosk %s runs an old image (%s)", k.ID, k.Image)
		}
	}
	if st.Closed != "" {
		add("info", "no new sessions: %s", st.Closed)
	}
	return out
}

// render writes a page, or only its content for the live updates (the
// script asks with X-Fragment).
func (c *Console) render(w http.ResponseWriter, r *http.Request, name string, pg *page) {
	t := c.pages[name]
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	which := "layout.html"
	if r.Header.Get("X-Fragment") == "1" {
		which = "content"
	}
	if err := t.ExecuteTemplate(w, which, pg); err != nil {
		c.Log.Error("console template", "page", name, "err", err)
	}
}

// events tells an open page, by server-sent events, whenever what the
// console shows has changed; the page then fetches its content again. It
// does not keep a login from its idle timeout.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	if _, err := c.API.Auth.Still(r); err != nil {
		http.Error(w, "log in", http.StatusUnauthorized)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	every := cmp.Or(c.Every, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	last, quiet, n := "", time.Duration(0), 0
	for {
		d := c.digest()
		var msg string
		switch {
		case d != last:
			n++
			msg = "data: " + strconv.Itoa(n) + "\n\n"
			last, quiet = d, 0
		case quiet >= 15*time.Second:
			msg, quiet = ": still here\n\n", 0
		}
		if msg != "" {
			rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := w.Write([]byte(msg)); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
			quiet += every
			if _, err := c.API.Auth.Still(r); err != nil {
				return // logged out, expired, removed: the page's next fetch goes to the login
			}
		}
	}
}

// digest sums what the pages show, leaving out what changes at every
// heartbeat.
func (c *Console) digest() string {
	st := c.API.Snapshot()
	for i := range st.Kiosks {
		st.Kiosks[i].LastSeen, st.Kiosks[i].UptimeSeconds = time.Time{}, 0
	}
	st.Handoffs = session.Handoffs{} // a handoff shows as the session it opened
	slices.SortFunc(st.Sessions, func(x, y session.LeaseStatus) int { return strings.Compare(x.ID, y.ID) })
	v := struct {
		Status api.Status
		Ads    []ads.Ad
	}{Status: st}
	if c.API.Ads != nil {
		v.Ads, _ = c.API.Ads.List()
	}
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
