// Package adsync mirrors the broker's advertising folder into a local
// folder (a tmpfs on the kiosk) for the slideshow, downloading only what
// changed and checking each file's sha256. Files appear by an atomic rename
// and go when the broker drops them, and a network failure leaves the
// mirror as it was.
package adsync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"undervdi/slideshow"
)

const (
	// DefaultMaxFile is the largest file downloaded if Mirror.MaxFile is 0.
	DefaultMaxFile = 64 << 20
	// DefaultMaxTotal bounds the bytes downloaded by one Sync if
	// Mirror.MaxTotal is 0.
	DefaultMaxTotal = 256 << 20
	// DefaultMaxDir bounds the images Dir holds in all, across syncs, if
	// Mirror.MaxDir is 0: Dir is a tmpfs, the kiosk's RAM.
	DefaultMaxDir = 256 << 20

	maxIndex = 4 << 20 // bytes of index JSON
)

// defaultClient is used when Mirror.Client is nil.
var defaultClient = &http.Client{Timeout: 5 * time.Minute}

// Mirror keeps Dir a copy of the images the broker lists at URL. Only
// JPEG, PNG and GIF files whose names do not start with a dot are
// managed: other files in Dir are never touched. The zero values of the
// optional fields are sensible; a Mirror must not be copied after first use.
type Mirror struct {
	URL      string       // the index, e.g. http://broker:8080/ads/; files are fetched relative to it
	Dir      string       // the local folder, which must exist
	Client   *http.Client // nil: a client with a 5 minute timeout
	Log      *slog.Logger // nil: discard
	MaxFile  int64        // largest file accepted; 0: DefaultMaxFile
	MaxTotal int64        // bytes downloaded per Sync at most; 0: DefaultMaxTotal
	MaxDir   int64        // bytes of images Dir holds at most, in all; 0: DefaultMaxDir

	mu      sync.Mutex
	etag    string               // of the index Dir fully matches; "" after any failure
	local   map[string]localFile // what is known of Dir's images, by name
	refused map[string]string    // content (sha256) fetched and refused, and why: not fetched again
	kick    chan struct{}        // Refresh: sync now
}

// Refresh makes Run sync now rather than at its next turn (an operator
// added ads). It never blocks.
func (m *Mirror) Refresh() {
	select {
	case m.kicks() <- struct{}{}:
	default:
	}
}

func (m *Mirror) kicks() chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kick == nil {
		m.kick = make(chan struct{}, 1)
	}
	return m.kick
}

// localFile is a file of Dir, with the sha256 of its content when it had
// this size and mtime.
type localFile struct {
	size  int64
	mtime time.Time
	sum   string
}

// index is the broker's JSON index.
type index struct {
	Files []indexFile `json:"files"`
}

type indexFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Sync brings Dir up to date with the broker's index: new and changed files
// are downloaded, checked against their sha256 and renamed into place, and
// images the index no longer lists are deleted. When the index has not
// changed (a 304) and Dir is as the last Sync left it, nothing else is
// done. It reports whether any file in Dir was added, replaced or removed.
// On an error, files that could not be fetched keep their old version, and
// nothing is deleted unless the index itself was read.
func (m *Mirror) Sync(ctx context.Context) (changed bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	base, err := m.base()
	if err != nil {
		return false, err
	}
	if m.local == nil {
		m.local = map[string]localFile{}
	}
	entries, err := os.ReadDir(m.Dir)
	if err != nil {
		return false, err
	}
	m.cleanTemps(entries)
	if m.etag != "" && !m.intact(entries) {
		m.log().Info("adsync: local folder changed, checking everything", "dir", m.Dir)
		m.etag = ""
	}

	idx, etag, err := m.fetchIndex(ctx, base)
	if err != nil || idx == nil { // nil: not modified
		return false, err
	}
	m.etag = ""

	var errs []error
	listed := map[string]bool{}
	var fetch []indexFile
	for _, f := range idx.Files {
		if !isImageName(f.Name) || len(f.Name) > 255 || !isSHA256(f.SHA256) {
			errs = append(errs, fmt.Errorf("index lists %q with sha256 %q: invalid", f.Name, f.SHA256))
			continue
		}
		if listed[f.Name] {
			errs = append(errs, fmt.Errorf("index lists %q twice", f.Name))
			continue
		}
		listed[f.Name] = true
		if m.sum(f.Name) != f.SHA256 {
			fetch = append(fetch, f)
		}
	}

	// Delete what the index dropped first, so its room is free for what
	// comes: only images, only regular files.
	held := int64(0) // bytes of the images Dir keeps
	for _, e := range entries {
		name := e.Name()
		if !isImageName(name) || !e.Type().IsRegular() {
			continue
		}
		if listed[name] {
			if fi, err := e.Info(); err == nil {
				held += fi.Size()
			}
			continue
		}
		if err := os.Remove(filepath.Join(m.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(m.local, name)
		changed = true
		m.log().Info("adsync: removed", "name", name)
	}

	budget := m.maxTotal()
	for _, f := range fetch {
		if why, ok := m.refused[f.SHA256]; ok {
			errs = append(errs, fmt.Errorf("%s: %s", f.Name, why))
			continue
		}
		old := m.local[f.Name].size // the copy the download replaces
		switch {
		case f.Size > m.maxFile():
			errs = append(errs, fmt.Errorf("%s: %d bytes, more than %d", f.Name, f.Size, m.maxFile()))
			continue
		case f.Size > budget:
			errs = append(errs, fmt.Errorf("%s: over the %d bytes a sync may fetch, left for the next", f.Name, m.maxTotal()))
			continue
		case held+f.Size > m.maxDir():
			errs = append(errs, fmt.Errorf("%s: %d bytes more would bring the mirror over the %d bytes it may hold: left out", f.Name, f.Size, m.maxDir()))
			continue
		}
		n, err := m.download(ctx, base, f.Name, f.SHA256, min(budget, m.maxFile(), m.maxDir()-held))
		budget -= n
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		held += n - old
		changed = true
	}
	for name := range m.local {
		if !listed[name] {
			delete(m.local, name)
		}
	}
	if changed {
		syncDir(m.Dir)
	}
	err = errors.Join(errs...)
	if err == nil && ctx.Err() == nil {
		m.etag = etag // only a complete mirror may skip the next index
	}
	return changed, err
}

// Run syncs at once and then about every every (randomly between half and
// one and a half times, so kiosks started together spread out), until ctx
// ends. A failure is logged when it first happens or changes, and the
// recovery once; changes to the folder are logged each time.
func (m *Mirror) Run(ctx context.Context, every time.Duration) {
	var last string // the last error's message, "" if the last Sync worked
	t := time.NewTimer(0)
	defer t.Stop()
	kick := m.kicks()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
			t.Stop()
		}
		changed, err := m.Sync(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && err.Error() != last:
			m.log().Warn("adsync: sync failed", "url", m.URL, "err", err)
			last = err.Error()
		case err == nil && last != "":
			m.log().Info("adsync: sync works again", "url", m.URL)
			last = ""
		}
		if changed {
			m.log().Info("adsync: ads updated", "dir", m.Dir)
		}
		t.Reset(jitter(every))
	}
}

// jitter returns a duration uniformly in [d/2, 3d/2).
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return max(d, 1)
	}
	return d/2 + rand.N(d)
}

// base is the index URL, with a slash at the end so that files resolve
// under it.
func (m *Mirror) base() (*url.URL, error) {
	u, err := url.Parse(m.URL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("adsync: URL %q is not http or https", m.URL)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		u.RawPath = ""
	}
	return u, nil
}

// fetchIndex gets the index, or nil if it has not changed since m.etag.
func (m *Mirror) fetchIndex(ctx context.Context, base *url.URL) (*index, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.String(), nil)
	if err != nil {
		return nil, "", err
	}
	if m.etag != "" {
		req.Header.Set("If-None-Match", m.etag)
	}
	resp, err := m.client().Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil, m.etag, nil
	case http.StatusOK:
	default:
		return nil, "", fmt.Errorf("GET %s: %s", base, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIndex+1))
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", base, err)
	}
	if len(body) > maxIndex {
		return nil, "", fmt.Errorf("GET %s: index larger than %d bytes", base, maxIndex)
	}
	var idx index
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", base, err)
	}
	if idx.Files == nil {
		// A 200 without a files list is more likely a wrong URL than an
		// empty folder: do not delete everything on its word.
		return nil, "", fmt.Errorf("GET %s: no \"files\" in the answer", base)
	}
	return &idx, resp.Header.Get("ETag"), nil
}

// download fetches name, checks it against sum, and renames it into
// place. It returns the bytes read, at most limit.
func (m *Mirror) download(ctx context.Context, base *url.URL, name, sum string, limit int64) (int64, error) {
	u := base.ResolveReference(&url.URL{Path: "./" + name})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := m.client().Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if resp.ContentLength > limit {
		return 0, fmt.Errorf("GET %s: %d bytes, more than the %d allowed", u, resp.ContentLength, limit)
	}

	tmp, err := renameio.NewPendingFile(filepath.Join(m.Dir, name), renameio.WithTempDir(m.Dir), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return 0, err
	}
	defer tmp.Cleanup()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return n, fmt.Errorf("GET %s: %w", u, err)
	}
	if n > limit {
		return n, fmt.Errorf("GET %s: more than the %d bytes allowed", u, limit)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return n, fmt.Errorf("GET %s: sha256 %s, want %s: rejected", u, got, sum)
	}
	// An image the slideshow would refuse (a header claiming 40000×40000
	// pixels) never lands in Dir, and is not fetched again.
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return n, err
	}
	if _, err := slideshow.CheckSize(tmp); err != nil {
		why := fmt.Sprintf("not shown: %v", err)
		if m.refused == nil {
			m.refused = map[string]string{}
		}
		m.refused[sum] = why
		return n, fmt.Errorf("%s: %s", name, why)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return n, err
	}
	if err := tmp.CloseAtomicallyReplace(); err != nil {
		return n, err
	}
	m.local[name] = localFile{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	m.log().Info("adsync: fetched", "name", name, "bytes", n)
	return n, nil
}

// sum is the sha256 of Dir's copy of name, "" if there is none. A file
// is hashed once, and again only if its size or mtime change: so a
// restarted kioskd reads what it has rather than downloading it again.
func (m *Mirror) sum(name string) string {
	fi, err := os.Lstat(filepath.Join(m.Dir, name))
	if err != nil || !fi.Mode().IsRegular() {
		delete(m.local, name)
		return ""
	}
	if l, ok := m.local[name]; ok && l.size == fi.Size() && l.mtime.Equal(fi.ModTime()) {
		return l.sum
	}
	f, err := os.Open(filepath.Join(m.Dir, name))
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	s := hex.EncodeToString(h.Sum(nil))
	m.local[name] = localFile{size: fi.Size(), mtime: fi.ModTime(), sum: s}
	return s
}

// intact reports whether Dir's images are still the ones the last
// complete Sync left.
func (m *Mirror) intact(entries []os.DirEntry) bool {
	n := 0
	for _, e := range entries {
		if !isImageName(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		n++
		l, ok := m.local[e.Name()]
		if !ok {
			return false
		}
		fi, err := e.Info()
		if err != nil || fi.Size() != l.size || !fi.ModTime().Equal(l.mtime) {
			return false
		}
	}
	return n == len(m.local)
}

// cleanTemps removes the temporary files an interrupted Sync left.
func (m *Mirror) cleanTemps(entries []os.DirEntry) {
	for _, e := range entries {
		if isTemp(e.Name()) && e.Type().IsRegular() {
			os.Remove(filepath.Join(m.Dir, e.Name()))
		}
	}
}

// isTemp reports whether name is one download's os.CreateTemp made:
// "." + an image name + ".tmp-" + digits.
func isTemp(name string) bool {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	i := strings.LastIndex(rest, ".tmp-")
	if i < 0 || !isImageName(rest[:i]) {
		return false
	}
	digits := rest[i+len(".tmp-"):]
	return digits != "" && strings.Trim(digits, "0123456789") == ""
}

// isImageName reports whether name is a file the mirror manages: no
// slashes, no leading dot, and a JPEG, PNG or GIF extension in any case.
func isImageName(name string) bool {
	if name == "" || name[0] == '.' || strings.ContainsAny(name, "/\\\x00") || !filepath.IsLocal(name) {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jpg", ".jpeg", ".png", ".gif":
		return true
	}
	return false
}

func isSHA256(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// syncDir makes renames and removals in dir durable, as far as the
// filesystem cares (a tmpfs does not).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func (m *Mirror) client() *http.Client {
	if m.Client != nil {
		return m.Client
	}
	return defaultClient
}

func (m *Mirror) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (m *Mirror) maxFile() int64 {
	if m.MaxFile > 0 {
		return m.MaxFile
	}
	return DefaultMaxFile
}

func (m *Mirror) maxDir() int64 {
	if m.MaxDir > 0 {
		return m.MaxDir
	}
	return DefaultMaxDir
}

func (m *Mirror) maxTotal() int64 {
	if m.MaxTotal > 0 {
		return m.MaxTotal
	}
	return DefaultMaxTotal
}
