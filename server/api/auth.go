package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Identity is who makes a request.
type Identity struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Via is how they proved it: "password" (a login), "token", or
	// "socket" (root on the broker's machine, through the admin socket).
	Via     string    `json:"via"`
	Expires time.Time `json:"expires,omitzero"`
	CSRF    string    `json:"-"` // a login's, for the console's pages
}

// Errors of authentication; each is a JSON error with its code.
var (
	ErrUnauthenticated = errors.New("log in or send an API token")
	ErrBadLogin        = errors.New("wrong user name or password")
	ErrRateLimited     = errors.New("too many failed logins; wait before trying again")
	ErrExpired         = errors.New("the login or token has expired")
	ErrCSRF            = errors.New("a change through the console must carry its X-CSRF-Token")
)

// AuthConfig says where accounts live and how long a login lasts.
type AuthConfig struct {
	Accounts    string        // the accounts file
	LoginTTL    time.Duration // a login ends this long after it began
	IdleTimeout time.Duration // or this long after its last request
	// Failed logins allowed at once from one address or for one user, and
	// how fast that allowance comes back.
	Burst  int
	Refill time.Duration
	// Audit hears every login and every refused one.
	Audit func(event, user, addr, reason string)
	Log   *slog.Logger
}

// Auth checks logins, login sessions and API tokens.
type Auth struct {
	cfg AuthConfig
	now func() time.Time // tests move time
	kdf chan struct{}    // argon2id runs: each holds 64 MiB, so a login flood waits here

	mu       sync.Mutex
	accounts *Accounts
	stamp    fileStamp
	logins   map[string]*login // by the SHA-256 of the login's token
	limits   map[string]*rate.Limiter
}

type login struct {
	Identity
	csrf string
	seen time.Time
	hash string // the password's when it logged in: a new password ends the login
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// SessionCookie carries a console login.
const SessionCookie = "undervdi_session"

// NewAuth reads the accounts file (a missing one is no accounts yet).
func NewAuth(cfg AuthConfig) (*Auth, error) {
	if cfg.Burst <= 0 {
		cfg.Burst = 5
	}
	if cfg.Refill <= 0 {
		cfg.Refill = 20 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = func(string, string, string, string) {}
	}
	a := &Auth{cfg: cfg, now: time.Now, kdf: make(chan struct{}, 2), logins: map[string]*login{}, limits: map[string]*rate.Limiter{}}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reloadLocked(); err != nil {
		return nil, err
	}
	return a, nil
}

// reloadLocked reads the accounts file again if it changed. A file that
// became unreadable keeps the accounts read before, and says so.
func (a *Auth) reloadLocked() error {
	st, err := os.Stat(a.cfg.Accounts)
	var s fileStamp
	if err == nil {
		s = fileStamp{st.ModTime(), st.Size()}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("accounts file: %w", err)
	}
	if a.accounts != nil && s == a.stamp {
		return nil
	}
	acc, err := ReadAccounts(a.cfg.Accounts)
	if err != nil && a.accounts != nil {
		// An edit gone wrong locks nobody out, and changes nothing.
		a.stamp = s
		a.cfg.Log.Error("the accounts file does not parse; keeping the accounts read before", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("accounts file: %w", err)
	}
	a.accounts, a.stamp = acc, s
	// A user removed, demoted, or given a new password loses the logins
	// made before.
	for k, l := range a.logins {
		if u, ok := acc.user(l.Name); !ok || u.Role != l.Role || u.Hash != l.hash {
			delete(a.logins, k)
		}
	}
	return nil
}

// Users says how many users and tokens the accounts file holds.
func (a *Auth) Users() (users, tokens int, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	err = a.reloadLocked()
	return len(a.accounts.Users), len(a.accounts.Tokens), err
}

// dummyHash is checked for unknown users, so that a login takes as long
// whether the user exists or not.
var dummyHash = sync.OnceValue(func() string { return HashPassword("not a password anyone has") })

// Login checks a user's password and opens a login: its bearer token (also
// the console's cookie) and the CSRF token the console sends with changes.
func (a *Auth) Login(user, password, addr string) (token, csrf string, id Identity, retry time.Duration, err error) {
	if CheckName(user) != nil {
		// No account has such a name: nothing to check, and nothing of
		// it is kept (a name is the audit's, and a flood's, to repeat).
		user = ""
	}
	a.mu.Lock()
	if err := a.reloadLocked(); err != nil {
		a.mu.Unlock()
		return "", "", Identity{}, 0, err
	}
	now := a.now()
	// A try costs an allowance before the password is checked, so that
	// guesses sent at once cannot all pass the check while they wait for
	// the KDF; a login that succeeds gets it back.
	var held []*rate.Reservation
	for _, key := range []string{"addr " + addr, "user " + user} {
		lim := a.limitLocked(key)
		r := lim.ReserveN(now, 1)
		if d := r.DelayFrom(now); !r.OK() || d > 0 {
			r.CancelAt(now)
			for _, h := range held {
				h.CancelAt(now)
			}
			a.pruneLocked(now)
			a.mu.Unlock()
			// The refusal's reason names no user: a flood of names must
			// not become a flood of audit lines.
			a.cfg.Audit("refused", "", addr, "login rate-limited after failed attempts")
			return "", "", Identity{}, d.Round(time.Second) + time.Second, ErrRateLimited
		}
		held = append(held, r)
	}
	u, known := a.accounts.user(user)
	a.mu.Unlock()

	hash := dummyHash()
	if known {
		hash = u.Hash
	}
	a.kdf <- struct{}{} // the slow part, outside the lock, two at a time
	ok := CheckPassword(hash, password) && known
	<-a.kdf

	a.mu.Lock()
	defer a.mu.Unlock()
	if !ok {
		a.pruneLocked(now)
		a.cfg.Audit("refused", user, addr, "wrong user name or password")
		return "", "", Identity{}, 0, ErrBadLogin
	}
	for _, h := range held {
		h.CancelAt(now)
	}
	token, csrf = randomText(32), randomText(18)
	id = Identity{Name: u.Name, Role: u.Role, Via: "password", Expires: now.Add(a.cfg.LoginTTL)}
	a.logins[tokenHash(token)] = &login{Identity: id, csrf: csrf, seen: now, hash: u.Hash}
	a.pruneLocked(now)
	a.cfg.Audit("login", u.Name, addr, "logged in as "+string(u.Role))
	return token, csrf, id, 0, nil
}

// limitLocked is the failed-login allowance for key ("addr 10.0.0.9" or
// "user alice").
func (a *Auth) limitLocked(key string) *rate.Limiter {
	lim := a.limits[key]
	if lim == nil {
		lim = rate.NewLimiter(rate.Every(a.cfg.Refill), a.cfg.Burst)
		a.limits[key] = lim
	}
	return lim
}

// pruneLocked forgets expired logins and full allowances, so neither map
// grows with time.
func (a *Auth) pruneLocked(now time.Time) {
	for k, l := range a.logins {
		if a.expiredLocked(l, now) {
			delete(a.logins, k)
		}
	}
	if len(a.limits) > 1000 {
		for k, lim := range a.limits {
			if lim.TokensAt(now) >= float64(a.cfg.Burst) {
				delete(a.limits, k)
			}
		}
	}
}

func (a *Auth) expiredLocked(l *login, now time.Time) bool {
	return !now.Before(l.Expires) || (a.cfg.IdleTimeout > 0 && now.Sub(l.seen) >= a.cfg.IdleTimeout)
}

// Logout ends the login whose token is token.
func (a *Auth) Logout(token string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.logins, tokenHash(token))
}

// Authenticate says who sent r: a bearer token (an API token or a login's)
// or the console's cookie, whose changes must carry the login's CSRF token.
// The request counts as activity: it keeps a login from its idle timeout.
func (a *Auth) Authenticate(r *http.Request) (Identity, string, error) {
	return a.authenticate(r, true)
}

// Still says who sent r, like Authenticate, without counting it as
// activity: the console's live updates, which run while nobody looks.
func (a *Auth) Still(r *http.Request) (Identity, error) {
	id, _, err := a.authenticate(r, false)
	return id, err
}

func (a *Auth) authenticate(r *http.Request, active bool) (Identity, string, error) {
	secret, cookie := bearer(r), false
	if secret == "" {
		if c, err := r.Cookie(SessionCookie); err == nil {
			secret, cookie = c.Value, true
		}
	}
	if secret == "" {
		return Identity{}, "", ErrUnauthenticated
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reloadLocked(); err != nil {
		return Identity{}, "", err
	}
	now := a.now()
	if strings.HasPrefix(secret, TokenPrefix) && !cookie {
		t, ok := a.accounts.token(secret)
		switch {
		case !ok:
			return Identity{}, "", ErrUnauthenticated
		case !t.Expires.IsZero() && !now.Before(t.Expires):
			return Identity{}, "", ErrExpired
		}
		return Identity{Name: t.Name, Role: t.Role, Via: "token", Expires: t.Expires}, secret, nil
	}
	l := a.logins[tokenHash(secret)]
	switch {
	case l == nil:
		return Identity{}, "", ErrUnauthenticated
	case a.expiredLocked(l, now):
		delete(a.logins, tokenHash(secret))
		return Identity{}, "", ErrExpired
	case cookie && !safeMethod(r.Method) && r.Header.Get("X-CSRF-Token") != l.csrf:
		return Identity{}, "", ErrCSRF
	}
	if active {
		l.seen = now
	}
	id := l.Identity
	id.CSRF = l.csrf
	return id, secret, nil
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}
