// Package api is the broker's REST API: the same handlers on the admin unix
// socket (root on the broker's machine, trusted) and on an HTTPS port for
// the site's operators and scripts, where every request but the health
// check is authenticated — a login (argon2id password) or an API token —
// and a viewer may only read. docs/openapi.yaml describes it; a test holds
// the two together.
package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"undervdi/kioskproto"
	"undervdi/server/ads"
	"undervdi/server/domxml"
	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

// Pool is what the API needs of the VM pool; *pool.Pool has it.
type Pool interface {
	Status() pool.Status
	End(name, reason string) error
	Publish(ctx context.Context) (int, error)
	Rollback(ctx context.Context) (from, to int, err error)
	SetSize(n int) error
}

// Sessions is what the API needs of the sessions; *session.Manager has it.
type Sessions interface {
	Leases() []session.LeaseStatus
	Fleet() []session.KioskStatus
	Handoffs() session.Handoffs
	EndVM(vm, reason string) bool
	EndLease(id, reason string) bool
	Drain(why, notice string)
	Resume()
	Closed() string
	Command(kiosk string, c kioskproto.Command) error
	Broadcast(c kioskproto.Command) int
	Screenshot(ctx context.Context, kiosk string) ([]byte, error)
	SetOutOfOrder(kiosk, reason string) error
}

// Server holds what the handlers serve.
type Server struct {
	Pool     Pool
	Sessions Sessions
	Auth     *Auth          // checks the HTTPS port's requests
	Audit    *session.Audit // hears logins and every operator action
	AuditLog string         // the audit file GET /v1/audit reads; "": none kept
	Libvirt  string         // the libvirt URI, for the status
	Config   func() any     // the configuration with its secrets masked
	Metrics  http.Handler   // /metrics for viewers on the HTTPS port; nil: not there
	Ads      *ads.Library   // the ads folder; nil: the broker serves no ads
	// Schedule is the opening hours' state; nil: always open.
	Schedule func() *schedule.State
	// Console is the web console, served under /console/ on the HTTPS
	// port (never on the admin socket); nil: none.
	Console http.Handler
	Log     *slog.Logger
}

// Error is every error the API answers, as JSON.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// route is one endpoint: who may call it and what it does.
type route struct {
	method, path string
	need         Role // "" : no authentication (the health check, the login)
	handle       func(w http.ResponseWriter, r *http.Request, id Identity) error
	body         int64 // the largest request body; 0: 64 KiB
}

func (s *Server) routes() []route {
	rs := []route{
		{"GET", "/healthz", "", s.health, 0},
		{"POST", "/v1/login", "", s.login, 0},
		{"POST", "/v1/logout", Viewer, s.logout, 0},
		{"GET", "/v1/whoami", Viewer, func(w http.ResponseWriter, r *http.Request, id Identity) error { return reply(w, 200, id) }, 0},
		{"GET", "/v1/status", Viewer, s.status, 0},
		{"GET", "/v1/pool", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error { return reply(w, 200, s.Pool.Status()) }, 0},
		{"PUT", "/v1/pool/size", Operator, s.setSize, 0},
		{"POST", "/v1/pool/drain", Operator, s.drain, 0},
		{"POST", "/v1/pool/resume", Operator, s.resume, 0},
		{"GET", "/v1/vms", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error {
			return reply(w, 200, s.Pool.Status().VMs)
		}, 0},
		{"GET", "/v1/vms/{name}", Viewer, s.vm, 0},
		{"POST", "/v1/vms/{name}/end", Operator, s.endVM, 0},
		{"GET", "/v1/sessions", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error {
			return reply(w, 200, s.Sessions.Leases())
		}, 0},
		{"POST", "/v1/sessions/{id}/end", Operator, s.endSession, 0},
		{"GET", "/v1/kiosks", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error {
			return reply(w, 200, s.Sessions.Fleet())
		}, 0},
		{"GET", "/v1/kiosks/{id}", Viewer, s.kiosk, 0},
		{"GET", "/v1/kiosks/{id}/screenshot", Viewer, s.screenshot, 0},
		{"POST", "/v1/kiosks/{id}/reboot", Operator, s.reboot, 0},
		{"POST", "/v1/kiosks/{id}/message", Operator, s.message, 0},
		{"PUT", "/v1/kiosks/{id}/out-of-order", Operator, s.outOfOrder, 0},
		{"DELETE", "/v1/kiosks/{id}/out-of-order", Operator, s.inOrder, 0},
		{"POST", "/v1/ads/refresh", Operator, s.refreshAds, 0},
		{"GET", "/v1/ads", Viewer, s.listAds, 0},
		{"GET", "/v1/ads/{name}", Viewer, s.getAd, 0},
		{"PUT", "/v1/ads/{name}", Operator, s.putAd, ads.MaxUpload + 1},
		{"DELETE", "/v1/ads/{name}", Operator, s.removeAd, 0},
		{"GET", "/v1/versions", Viewer, s.versions, 0},
		{"POST", "/v1/versions", Operator, s.publish, 0},
		{"POST", "/v1/versions/rollback", Operator, s.rollback, 0},
		{"GET", "/v1/audit", Viewer, s.audit, 0},
		{"GET", "/v1/config", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error { return reply(w, 200, s.Config()) }, 0},
	}
	if s.Metrics != nil {
		rs = append(rs, route{"GET", "/metrics", Viewer, func(w http.ResponseWriter, r *http.Request, _ Identity) error {
			s.Metrics.ServeHTTP(w, r)
			return nil
		}, 0})
	}
	return rs
}

// Socket is root on the broker's machine, through the admin socket.
var Socket = Identity{Name: "root", Role: Operator, Via: "socket"}

// Handler serves the API. On the admin socket (local) every caller is
// Socket; elsewhere each request proves who sent it.
func (s *Server) Handler(local bool) http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, cmp.Or(rt.body, 64<<10))
			id := Socket
			if !local && rt.need != "" {
				var err error
				if id, _, err = s.Auth.Authenticate(r); err != nil {
					s.fail(w, r, authError(err))
					return
				}
				if !id.Role.may(rt.need) {
					s.fail(w, r, apiErr(http.StatusForbidden, "forbidden", "%s is a %s; this needs an operator", id.Name, id.Role))
					return
				}
			}
			if err := rt.handle(w, r, id); err != nil {
				s.fail(w, r, err)
			}
		})
	}
	if !local && s.Console != nil {
		mux.Handle("/console/", s.Console)
		mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusSeeOther))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, apiErr(http.StatusNotFound, "not-found", "no %s %s in the API (docs/openapi.yaml lists it)", r.Method, r.URL.Path))
	})
	return securityHeaders(mux)
}

// securityHeaders: the API's answers are never cached, framed or sniffed.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		if r.TLS != nil {
			hd.Set("Strict-Transport-Security", "max-age=31536000")
		}
		h.ServeHTTP(w, r)
	})
}

func authError(err error) *Error {
	switch {
	case errors.Is(err, ErrExpired):
		return apiErr(http.StatusUnauthorized, "expired", "%v; log in again", err)
	case errors.Is(err, ErrCSRF):
		return apiErr(http.StatusForbidden, "csrf", "%v", err)
	case errors.Is(err, ErrUnauthenticated):
		return apiErr(http.StatusUnauthorized, "unauthenticated", "%v", err)
	}
	return apiErr(http.StatusInternalServerError, "internal", "%v", err)
}

// fail answers err as JSON; errors the API did not classify are internal,
// and logged.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			e = apiErr(http.StatusRequestEntityTooLarge, "too-large", "a request body holds at most %d bytes", mb.Limit)
		} else {
			s.Log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			e = apiErr(http.StatusInternalServerError, "internal", "%v", err)
		}
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="undervdi"`)
	}
	reply(w, e.Status, e)
}

func reply(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body into v; an empty body leaves v as it is when
// optional.
func decode(r *http.Request, v any, optional bool) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	switch {
	case errors.Is(err, io.EOF) && optional:
		return nil
	case errors.Is(err, io.EOF):
		return apiErr(http.StatusBadRequest, "bad-request", "the request needs a JSON body")
	case err != nil:
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return err
		}
		return apiErr(http.StatusBadRequest, "bad-request", "the request's JSON: %v", err)
	}
	return nil
}

// LoginCookie is the console's cookie for a login.
func LoginCookie(token string, expires time.Time) *http.Cookie {
	return &http.Cookie{Name: SessionCookie, Value: token, Path: "/", Expires: expires, Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode}
}

// ClientAddr is the caller's address, for the audit and the login limits:
// the connection's, never a header a client could set.
func ClientAddr(r *http.Request) string { return addrOf(r) }

func addrOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil || host == "" {
		return "local"
	}
	return host
}

// did records an operator's action in the audit log.
func (s *Server) did(r *http.Request, id Identity, what, kiosk, vm, detail string) {
	if s.Audit != nil {
		s.Audit.Admin(id.Name, addrOf(r), what, kiosk, vm, detail)
	}
}

// Health is what GET /healthz says, to anyone: enough for a load balancer
// or a monitor, nothing about kiosks or sessions.
type Health struct {
	Status  string `json:"status"` // "ok", "degraded" (serving, with a problem) or "unavailable"
	Libvirt bool   `json:"libvirt"`
	Clean   int    `json:"clean"`
	Size    int    `json:"size"`
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ Identity) error {
	p := s.Pool.Status()
	h := Health{Status: "ok", Libvirt: p.Connected, Clean: p.Counts[pool.Clean], Size: p.Size}
	code := http.StatusOK
	switch {
	case !p.Connected:
		h.Status, code = "unavailable", http.StatusServiceUnavailable
	case p.Degraded != "" || p.Paused != "" || p.Memory != "":
		h.Status = "degraded"
	}
	return reply(w, code, h)
}

// LoginRequest is POST /v1/login's body.
type LoginRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// LoginReply is a login: the bearer token (also set as the console's
// cookie), and the CSRF token the console sends with every change.
type LoginReply struct {
	Token   string    `json:"token"`
	CSRF    string    `json:"csrf"`
	User    string    `json:"user"`
	Role    Role      `json:"role"`
	Expires time.Time `json:"expires"`
}

func (s *Server) login(w http.ResponseWriter, r *http.Request, _ Identity) error {
	if s.Auth == nil {
		return apiErr(http.StatusNotFound, "not-found", "the admin socket needs no login")
	}
	var req LoginRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	token, csrf, id, retry, err := s.Auth.Login(req.User, req.Password, addrOf(r))
	switch {
	case errors.Is(err, ErrRateLimited):
		w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
		return apiErr(http.StatusTooManyRequests, "rate-limited", "%v (%v)", err, retry)
	case errors.Is(err, ErrBadLogin):
		return apiErr(http.StatusUnauthorized, "bad-login", "%v", err)
	case err != nil:
		return err
	}
	http.SetCookie(w, LoginCookie(token, id.Expires))
	return reply(w, http.StatusOK, LoginReply{Token: token, CSRF: csrf, User: id.Name, Role: id.Role, Expires: id.Expires})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, id Identity) error {
	if s.Auth != nil && id.Via == "password" {
		_, secret, _ := s.Auth.Authenticate(r)
		s.Auth.Logout(secret)
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true,
		SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, _ Identity) error {
	return reply(w, 200, s.Snapshot())
}

// Snapshot is the whole status: GET /v1/status's, and the console's.
func (s *Server) Snapshot() Status {
	st := Status{Libvirt: s.Libvirt, Pool: s.Pool.Status(), Sessions: s.Sessions.Leases(),
		Kiosks: s.Sessions.Fleet(), Handoffs: s.Sessions.Handoffs(), Closed: s.Sessions.Closed()}
	if s.Schedule != nil {
		st.Schedule = s.Schedule()
	}
	return st
}

// SizeRequest is PUT /v1/pool/size's body.
type SizeRequest struct {
	Size int `json:"size"`
}

func (s *Server) setSize(w http.ResponseWriter, r *http.Request, id Identity) error {
	req := SizeRequest{Size: -1}
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if err := s.Pool.SetSize(req.Size); errors.Is(err, pool.ErrBadSize) {
		return apiErr(http.StatusBadRequest, "bad-request", "%v", err)
	} else if err != nil {
		return poolError(err)
	}
	s.did(r, id, "resize", "", "", fmt.Sprintf("pool size %d until the broker restarts", req.Size))
	return reply(w, 200, req)
}

// DrainRequest is POST /v1/pool/drain's body: why (for the audit and the
// operators) and what the kiosks' slideshows say meanwhile.
type DrainRequest struct {
	Reason string `json:"reason"`
	Notice string `json:"notice"` // default "Closed"
}

// Drained is the answer to drain and resume.
type Drained struct {
	Closed string `json:"closed"` // why no new session starts; "" serves
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request, id Identity) error {
	var req DrainRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	why := strings.TrimSpace(req.Reason)
	if why == "" {
		why = "drained by " + id.Name
	}
	notice := strings.TrimSpace(req.Notice)
	if notice == "" {
		notice = "Closed"
	}
	if len(why) > 200 || len(notice) > 200 {
		return apiErr(http.StatusBadRequest, "bad-request", "a reason or a notice holds at most 200 bytes")
	}
	s.Sessions.Drain(why, notice)
	s.did(r, id, "drain", "", "", why)
	return reply(w, 200, Drained{Closed: why})
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request, id Identity) error {
	s.Sessions.Resume()
	s.did(r, id, "resume", "", "", "serving new sessions")
	return reply(w, 200, Drained{})
}

// VM is one VM and the session on it, if any.
type VM struct {
	pool.VMStatus
	Session *session.LeaseStatus `json:"session,omitempty"`
}

func (s *Server) vm(w http.ResponseWriter, r *http.Request, _ Identity) error {
	name := r.PathValue("name")
	i := slices.IndexFunc(s.Pool.Status().VMs, func(v pool.VMStatus) bool { return v.Name == name })
	if i < 0 {
		return apiErr(http.StatusNotFound, "not-found", "no VM %q in the pool", name)
	}
	out := VM{VMStatus: s.Pool.Status().VMs[i]}
	for _, l := range s.Sessions.Leases() {
		if l.VM == name {
			out.Session = &l
		}
	}
	return reply(w, 200, out)
}

// EndRequest is the optional body of an end: why, for the kiosk and the audit.
type EndRequest struct {
	Reason string `json:"reason"`
}

// Ending is the answer to an end: the VM is destroyed with its disk in the
// background.
type Ending struct {
	VM    string `json:"vm,omitempty"`
	Lease string `json:"lease,omitempty"`
}

func endReason(r *http.Request, id Identity) (string, error) {
	req := EndRequest{Reason: r.URL.Query().Get("reason")}
	if err := decode(r, &req, true); err != nil {
		return "", err
	}
	if len(req.Reason) > 200 {
		return "", apiErr(http.StatusBadRequest, "bad-request", "a reason holds at most 200 bytes")
	}
	reason := "ended by an admin (" + id.Name + ")"
	if q := strings.TrimSpace(req.Reason); q != "" {
		reason += ": " + q
	}
	return reason, nil
}

func (s *Server) endVM(w http.ResponseWriter, r *http.Request, id Identity) error {
	name := r.PathValue("name")
	reason, err := endReason(r, id)
	if err != nil {
		return err
	}
	if !s.Sessions.EndVM(name, reason) {
		if err := s.Pool.End(name, reason); errors.Is(err, pool.ErrUnknownVM) {
			return apiErr(http.StatusNotFound, "not-found", "no VM %q in the pool", name)
		} else if err != nil {
			return poolError(err)
		}
	}
	s.did(r, id, "end", "", name, reason)
	return reply(w, http.StatusAccepted, Ending{VM: name})
}

func (s *Server) endSession(w http.ResponseWriter, r *http.Request, id Identity) error {
	lease := r.PathValue("id")
	reason, err := endReason(r, id)
	if err != nil {
		return err
	}
	vm := ""
	for _, l := range s.Sessions.Leases() {
		if l.ID == lease {
			vm = l.VM
		}
	}
	if !s.Sessions.EndLease(lease, reason) {
		return apiErr(http.StatusNotFound, "not-found", "no session %q", lease)
	}
	s.did(r, id, "end", "", vm, reason)
	return reply(w, http.StatusAccepted, Ending{VM: vm, Lease: lease})
}

func (s *Server) kiosk(w http.ResponseWriter, r *http.Request, _ Identity) error {
	id := r.PathValue("id")
	for _, k := range s.Sessions.Fleet() {
		if k.ID == id {
			return reply(w, 200, k)
		}
	}
	return apiErr(http.StatusNotFound, "not-found", "no kiosk %q is configured or has been seen", id)
}

// Versions is GET /v1/versions: the published versions of the golden VM
// and the publish under way (or the last one).
type Versions struct {
	Current  int                  `json:"current"`
	Versions []pool.VersionStatus `json:"versions"`
	Publish  *pool.PublishStatus  `json:"publish,omitempty"`
}

func (s *Server) versions(w http.ResponseWriter, r *http.Request, _ Identity) error {
	p := s.Pool.Status()
	return reply(w, 200, Versions{Current: p.Current, Versions: p.Versions, Publish: p.Publish})
}

// Published is the answer to a publish: the version being copied.
type Published struct {
	Version int `json:"version"`
}

func (s *Server) publish(w http.ResponseWriter, r *http.Request, id Identity) error {
	seq, err := s.Pool.Publish(r.Context())
	if err != nil {
		return poolError(err)
	}
	s.did(r, id, "publish", "", "", fmt.Sprintf("version %d", seq))
	return reply(w, http.StatusAccepted, Published{Version: seq})
}

// RolledBack is the answer to a rollback.
type RolledBack struct {
	From int `json:"from"`
	To   int `json:"to"`
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request, id Identity) error {
	from, to, err := s.Pool.Rollback(r.Context())
	if err != nil {
		return poolError(err)
	}
	s.did(r, id, "rollback", "", "", fmt.Sprintf("from version %d to %d", from, to))
	return reply(w, 200, RolledBack{From: from, To: to})
}

// poolError is the API's error for a refused pool call.
func poolError(err error) error {
	switch {
	case errors.Is(err, pool.ErrNoSpace):
		return apiErr(http.StatusInsufficientStorage, "no-space", "%v", err)
	case errors.Is(err, domxml.ErrGolden), errors.Is(err, pool.ErrPublishing), errors.Is(err, pool.ErrNoEarlier):
		return apiErr(http.StatusConflict, "conflict", "%v", err)
	case errors.Is(err, pool.ErrUnavailable):
		return apiErr(http.StatusServiceUnavailable, "unavailable", "%v", err)
	}
	return err
}

// AuditPage is a page of the audit log, newest first. Next, when set, is
// the before= of the following page.
type AuditPage struct {
	Records []session.AuditRecord `json:"records"`
	Next    string                `json:"next,omitempty"`
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request, _ Identity) error {
	q := r.URL.Query()
	aq := session.AuditQuery{Kiosk: q.Get("kiosk"), VM: q.Get("vm"), Event: q.Get("event"), Limit: 100}
	for key, t := range map[string]*time.Time{"since": &aq.Since, "before": &aq.Before} {
		if v := q.Get(key); v != "" {
			var err error
			if *t, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return apiErr(http.StatusBadRequest, "bad-request", "%s=%q: a time such as 2026-12-01T09:00:00Z", key, v)
			}
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return apiErr(http.StatusBadRequest, "bad-request", "limit=%q: from 1 to 1000", v)
		}
		aq.Limit = n
	}
	if s.AuditLog == "" {
		return apiErr(http.StatusNotFound, "not-found", "this broker keeps no audit file (sessions.audit_log is empty): its records are in the journal")
	}
	recs, more, err := session.ReadAudit(s.AuditLog, aq)
	if err != nil {
		return err
	}
	page := AuditPage{Records: recs}
	if recs == nil {
		page.Records = []session.AuditRecord{}
	}
	if more {
		page.Next = recs[len(recs)-1].Time.Format(time.RFC3339Nano)
	}
	return reply(w, 200, page)
}

// kioskError is the API's error for a refused kiosk command.
func kioskError(err error) error {
	switch {
	case errors.Is(err, session.ErrUnknownKiosk):
		return apiErr(http.StatusNotFound, "not-found", "%v", err)
	case errors.Is(err, session.ErrKioskOffline):
		return apiErr(http.StatusConflict, "offline", "%v", err)
	case errors.Is(err, session.ErrNoCommands):
		return apiErr(http.StatusConflict, "no-commands", "%v", err)
	case errors.Is(err, session.ErrInSession):
		return apiErr(http.StatusConflict, "in-session", "%v", err)
	case errors.Is(err, kioskproto.ErrBadMessage):
		return apiErr(http.StatusBadRequest, "bad-request", "%v", err)
	}
	return err
}

// screenshot is a kiosk's screen while it shows the slideshow, as JPEG:
// refused (409 in-session) while a visitor is at it, by the broker and by
// the kiosk.
func (s *Server) screenshot(w http.ResponseWriter, r *http.Request, _ Identity) error {
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	img, err := s.Sessions.Screenshot(ctx, r.PathValue("id"))
	if err != nil {
		return kioskError(err)
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Content-Length", strconv.Itoa(len(img)))
	_, err = w.Write(img)
	return err
}

// Sent is the answer to a command sent to kiosks.
type Sent struct {
	Kiosks int `json:"kiosks"` // how many got it
}

func (s *Server) reboot(w http.ResponseWriter, r *http.Request, id Identity) error {
	kiosk := r.PathValue("id")
	if err := s.Sessions.Command(kiosk, kioskproto.Command{Action: kioskproto.CmdReboot, Text: "an operator (" + id.Name + ")"}); err != nil {
		return kioskError(err)
	}
	s.did(r, id, "reboot", kiosk, "", "after the session on it, if any, ends")
	return reply(w, http.StatusAccepted, Sent{Kiosks: 1})
}

// MessageRequest is POST /v1/kiosks/{id}/message's body.
type MessageRequest struct {
	Text    string `json:"text"`
	Seconds int    `json:"seconds"` // default 60, at most a day
}

func (s *Server) message(w http.ResponseWriter, r *http.Request, id Identity) error {
	kiosk := r.PathValue("id")
	var req MessageRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	req.Text = strings.TrimSpace(req.Text)
	if req.Seconds == 0 {
		req.Seconds = 60
	}
	if req.Text == "" || len(req.Text) > 200 || req.Seconds < 1 || req.Seconds > 24*3600 {
		return apiErr(http.StatusBadRequest, "bad-request", "a message has 1 to 200 bytes of text, shown 1 to 86400 seconds")
	}
	if err := s.Sessions.Command(kiosk, kioskproto.Command{Action: kioskproto.CmdMessage, Text: req.Text, Seconds: req.Seconds}); err != nil {
		return kioskError(err)
	}
	s.did(r, id, "message", kiosk, "", fmt.Sprintf("%q for %ds", req.Text, req.Seconds))
	return reply(w, http.StatusAccepted, Sent{Kiosks: 1})
}

// OutOfOrderRequest is PUT /v1/kiosks/{id}/out-of-order's body.
type OutOfOrderRequest struct {
	Reason string `json:"reason"`
}

func (s *Server) outOfOrder(w http.ResponseWriter, r *http.Request, id Identity) error {
	kiosk := r.PathValue("id")
	var req OutOfOrderRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	why := strings.TrimSpace(req.Reason)
	if why == "" {
		why = "put out of order by " + id.Name
	}
	if len(why) > 200 {
		return apiErr(http.StatusBadRequest, "bad-request", "a reason holds at most 200 bytes")
	}
	if err := s.Sessions.SetOutOfOrder(kiosk, why); err != nil {
		return kioskError(err)
	}
	s.did(r, id, "out-of-order", kiosk, "", why)
	return reply(w, 200, OutOfOrderRequest{Reason: why})
}

func (s *Server) inOrder(w http.ResponseWriter, r *http.Request, id Identity) error {
	kiosk := r.PathValue("id")
	if err := s.Sessions.SetOutOfOrder(kiosk, ""); err != nil {
		return kioskError(err)
	}
	s.did(r, id, "in-order", kiosk, "", "back in order")
	return reply(w, 200, OutOfOrderRequest{})
}

func (s *Server) refreshAds(w http.ResponseWriter, r *http.Request, id Identity) error {
	n := s.Sessions.Broadcast(kioskproto.Command{Action: kioskproto.CmdRefreshAds})
	s.did(r, id, "refresh-ads", "", "", fmt.Sprintf("%d kiosks told", n))
	return reply(w, 200, Sent{Kiosks: n})
}

func (s *Server) library() (*ads.Library, error) {
	if s.Ads == nil {
		return nil, apiErr(http.StatusNotFound, "not-found", "this broker serves no ads (ads.dir is empty)")
	}
	return s.Ads, nil
}

func adError(err error) error {
	switch {
	case errors.Is(err, ads.ErrNoAd):
		return apiErr(http.StatusNotFound, "not-found", "%v", err)
	case errors.Is(err, ads.ErrBadAd):
		return apiErr(http.StatusBadRequest, "bad-request", "%v", err)
	}
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return apiErr(http.StatusRequestEntityTooLarge, "too-large", "an ad holds at most %d MiB", ads.MaxUpload>>20)
	}
	return err
}

func (s *Server) listAds(w http.ResponseWriter, r *http.Request, _ Identity) error {
	lib, err := s.library()
	if err != nil {
		return err
	}
	list, err := lib.List()
	if err != nil {
		return err
	}
	return reply(w, 200, list)
}

func (s *Server) getAd(w http.ResponseWriter, r *http.Request, _ Identity) error {
	lib, err := s.library()
	if err != nil {
		return err
	}
	f, typ, err := lib.Open(r.PathValue("name"))
	if err != nil {
		return adError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", typ)
	http.ServeContent(w, r, "", st.ModTime(), f)
	return nil
}

// putAd stores the request's body as an ad; every kiosk mirrors it at once.
func (s *Server) putAd(w http.ResponseWriter, r *http.Request, id Identity) error {
	lib, err := s.library()
	if err != nil {
		return err
	}
	ad, err := lib.Put(r.PathValue("name"), r.Body)
	if err != nil {
		return adError(err)
	}
	n := s.Sessions.Broadcast(kioskproto.Command{Action: kioskproto.CmdRefreshAds})
	s.did(r, id, "ad", "", "", fmt.Sprintf("added %s (%dx%d, %d bytes); %d kiosks told", ad.Name, ad.Width, ad.Height, ad.Size, n))
	return reply(w, http.StatusCreated, ad)
}

func (s *Server) removeAd(w http.ResponseWriter, r *http.Request, id Identity) error {
	lib, err := s.library()
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := lib.Remove(name); err != nil {
		return adError(err)
	}
	n := s.Sessions.Broadcast(kioskproto.Command{Action: kioskproto.CmdRefreshAds})
	s.did(r, id, "ad", "", "", fmt.Sprintf("removed %s; %d kiosks told", name, n))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
