package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
)

// Role is what an account may do: a viewer reads, an operator also acts.
type Role string

const (
	Viewer   Role = "viewer"
	Operator Role = "operator"
)

// Valid reports whether r is one of the two roles.
func (r Role) Valid() bool { return r == Viewer || r == Operator }

// may reports whether r may do what need asks.
func (r Role) may(need Role) bool { return need == Viewer || r == Operator }

// Accounts is the accounts file: operator logins with their password's
// hash, and API tokens by name with their hash. It holds no secret in the
// clear; `vdi-broker passwd` and `vdi-broker token` write it (0600, root),
// and the broker reads it again whenever it changes.
type Accounts struct {
	Users  []User  `json:"users"`
	Tokens []Token `json:"tokens"`
}

// User is a person who logs in to the console or the API.
type User struct {
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Hash    string    `json:"hash"` // argon2id, in the PHC string format
	Changed time.Time `json:"changed"`
}

// Token is an API token for a script or a Prometheus: its SHA-256, since a
// token is 32 random bytes, not a password to guess.
type Token struct {
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"` // zero: never
}

// TokenPrefix starts every API token, so one pasted into the wrong place
// is recognised (and found by secret scanners).
const TokenPrefix = "uvdi_"

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$`)

// CheckName reports whether name can be an account's or a token's name.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q: a name is 1 to 32 lower-case letters, digits, '_', '.' or '-', starting with a letter or '_'", name)
	}
	return nil
}

// MinPassword is the shortest password passwd accepts.
const MinPassword = 12

// ReadAccounts reads the accounts file; a missing file is no accounts.
func ReadAccounts(path string) (*Accounts, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Accounts{}, nil
	}
	if err != nil {
		return nil, err
	}
	var a Accounts
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, u := range a.Users {
		if err := CheckName(u.Name); err != nil {
			return nil, fmt.Errorf("%s: user %w", path, err)
		}
		if !u.Role.Valid() {
			return nil, fmt.Errorf("%s: user %s: role %q is neither viewer nor operator", path, u.Name, u.Role)
		}
	}
	for _, t := range a.Tokens {
		if !t.Role.Valid() {
			return nil, fmt.Errorf("%s: token %s: role %q is neither viewer nor operator", path, t.Name, t.Role)
		}
	}
	return &a, nil
}

// ServiceGroup is the broker's group (the systemd unit's): the accounts
// file is root's, readable by it.
const ServiceGroup = "vdi-broker"

// Write writes the file atomically: root's, 0640 for the broker's group
// where that group exists (a server), else 0600.
func (a *Accounts) Write(path string) error {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".accounts-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if g, err := user.LookupGroup(ServiceGroup); err == nil && os.Geteuid() == 0 {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(tmp.Name(), 0, gid); err != nil {
			return err
		}
		if err := os.Chmod(tmp.Name(), 0o640); err != nil {
			return err
		}
	}
	return os.Rename(tmp.Name(), path) // CreateTemp made it 0600
}

// SetPassword sets a user's password and role, adding the user if new.
func (a *Accounts) SetPassword(name string, role Role, password string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if !role.Valid() {
		return fmt.Errorf("role %q: viewer or operator", role)
	}
	if len(password) < MinPassword {
		return fmt.Errorf("a password has at least %d characters", MinPassword)
	}
	u := User{Name: name, Role: role, Hash: HashPassword(password), Changed: time.Now().UTC()}
	if i := slices.IndexFunc(a.Users, func(u User) bool { return u.Name == name }); i >= 0 {
		a.Users[i] = u
	} else {
		a.Users = append(a.Users, u)
	}
	return nil
}

// AddToken makes a new token and returns it; only its hash is kept. ttl 0
// never expires.
func (a *Accounts) AddToken(name string, role Role, ttl time.Duration) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	if !role.Valid() {
		return "", fmt.Errorf("role %q: viewer or operator", role)
	}
	if slices.ContainsFunc(a.Tokens, func(t Token) bool { return t.Name == name }) {
		return "", fmt.Errorf("a token named %s exists; revoke it first", name)
	}
	secret := TokenPrefix + randomText(32)
	now := time.Now().UTC()
	t := Token{Name: name, Role: role, SHA256: tokenHash(secret), Created: now}
	if ttl > 0 {
		t.Expires = now.Add(ttl)
	}
	a.Tokens = append(a.Tokens, t)
	return secret, nil
}

// Remove removes a user or a token by name, and says which it was.
func (a *Accounts) Remove(name string) (string, error) {
	n := len(a.Users)
	a.Users = slices.DeleteFunc(a.Users, func(u User) bool { return u.Name == name })
	if len(a.Users) != n {
		return "user", nil
	}
	n = len(a.Tokens)
	a.Tokens = slices.DeleteFunc(a.Tokens, func(t Token) bool { return t.Name == name })
	if len(a.Tokens) != n {
		return "token", nil
	}
	return "", fmt.Errorf("no user or token named %s", name)
}

// user finds a user by name.
func (a *Accounts) user(name string) (User, bool) {
	i := slices.IndexFunc(a.Users, func(u User) bool { return u.Name == name })
	if i < 0 {
		return User{}, false
	}
	return a.Users[i], true
}

// token finds the token whose secret is s.
func (a *Accounts) token(s string) (Token, bool) {
	h := tokenHash(s)
	for _, t := range a.Tokens {
		if subtle.ConstantTimeCompare([]byte(t.SHA256), []byte(h)) == 1 {
			return t, true
		}
	}
	return Token{}, false
}

func tokenHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func randomText(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// argon2id parameters: RFC 9106's second recommended option (64 MiB, three
// passes), with the broker's two cores. A login takes ~0.1 s of one core.
const (
	kdfTime    = 3
	kdfMemory  = 64 << 10 // KiB
	kdfThreads = 2
	kdfKeyLen  = 32
)

// HashPassword hashes a password with argon2id and a random salt, in the
// PHC string format ($argon2id$v=19$m=65536,t=3,p=2$salt$hash).
func HashPassword(password string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, kdfTime, kdfMemory, kdfThreads, kdfKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, kdfMemory, kdfTime, kdfThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// CheckPassword reports whether password matches hash, with the
// parameters the hash names.
func CheckPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<20 || t == 0 || t > 16 || p == 0 {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 128 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}
