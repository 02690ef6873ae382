// Package ads serves the broker's advertising folder to kiosks over HTTP:
// a JSON index of the images with their sha256, and the images themselves.
// Only regular JPEG, PNG and GIF files directly inside the folder are
// served, only to allowed addresses, and an unchanged answer costs a 304.
package ads

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// Prefix is the path the handler answers under: Prefix itself is the
	// index, Prefix+name a file.
	Prefix = "/ads/"
	// maxFileSize is the largest file served; larger ones are skipped.
	maxFileSize = 64 << 20
	// maxFiles is the most files listed; the rest (by name) are skipped.
	maxFiles = 1000
)

// index is the JSON document served at Prefix.
type index struct {
	Files []file `json:"files"`
}

// file is one image in the index.
type file struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lower-case hex
	MTime  string `json:"mtime"`  // RFC 3339, UTC
}

// Handler serves the images of dir: GET Prefix is a JSON index,
// {"files":[{"name","size","sha256","mtime"}...]} sorted by name,, with an ETag
// that is the sha256 of its body; GET Prefix+name is one file, with its
// sha256 as ETag. Both honour If-None-Match (and files If-Modified-Since
// and ranges too). Clients whose address allow rejects get 403; a nil
// allow rejects everyone. Mount it at Prefix, e.g. mux.Handle(ads.Prefix,
// ads.Handler(...)).
func Handler(dir string, allow func(netip.Addr) bool, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &handler{dir: dir, allow: allow, log: log,
		cache: map[string]entry{}, warned: map[string]entry{}}
}

// entry is what the hash cache knows about a file.
type entry struct {
	size  int64
	mtime time.Time
	sum   string // hex sha256; empty in warned
}

type handler struct {
	dir   string
	allow func(netip.Addr) bool
	log   *slog.Logger

	mu       sync.Mutex       // serialises scans, so a new file is hashed once
	cache    map[string]entry // by name
	warned   map[string]entry // files logged as too big, so they are logged once
	tooMany  bool             // whether "too many files" was logged
	lastScan string           // the last scan's error, logged once

	hashes atomic.Int64 // files hashed, for tests
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || h.allow == nil || !h.allow(ap.Addr().Unmap()) {
		h.log.Debug("ads: refused", "remote", r.RemoteAddr, "path", r.URL.Path)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	files, err := h.scan()
	if err != nil {
		http.Error(w, "ad folder unreadable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if name == "" {
		h.serveIndex(w, r, files)
		return
	}
	// Only names the index lists are served: they come from ReadDir, so
	// they have no slashes, and they passed the checks in scan.
	i, found := slices.BinarySearchFunc(files, name, func(f file, n string) int { return strings.Compare(f.Name, n) })
	if !found {
		http.NotFound(w, r)
		return
	}
	h.serveFile(w, r, files[i].Name)
}

func (h *handler) serveIndex(w http.ResponseWriter, r *http.Request, files []file) {
	body, err := json.Marshal(index{Files: files})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	sum := sha256.Sum256(body)
	w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:])+`"`)
	w.Header().Set("Content-Type", "application/json")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

func (h *handler) serveFile(w http.ResponseWriter, r *http.Request, name string) {
	f, fi, err := h.open(name)
	if err != nil {
		h.log.Info("ads: not served", "name", name, "err", err)
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	// The file may have changed since the scan: hash what is open now,
	// unless the cache already knows it.
	sum, err := h.sum(name, fi, f)
	if err != nil {
		h.log.Warn("ads: reading", "name", name, "err", err)
		http.Error(w, "unreadable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("ETag", `"`+sum+`"`)
	w.Header().Set("Content-Type", contentType(name))
	http.ServeContent(w, r, name, fi.ModTime(), io.NewSectionReader(f, 0, fi.Size()))
}

// scan lists the folder's images, sorted by name, hashing the ones the
// cache does not know.
func (h *handler) scan() ([]file, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	entries, err := os.ReadDir(h.dir)
	if err != nil {
		if msg := err.Error(); msg != h.lastScan {
			h.log.Error("ads: reading folder", "err", err)
			h.lastScan = msg
		}
		return nil, err
	}
	h.lastScan = ""
	files := []file{} // "files":[] rather than null
	seen, big := map[string]bool{}, map[string]bool{}
	for _, e := range entries { // sorted by name
		name := e.Name()
		if !isImageName(name) || !e.Type().IsRegular() { // symlinks and directories too
			continue
		}
		if len(files) == maxFiles {
			if !h.tooMany {
				h.log.Warn("ads: too many files, serving the first ones by name", "max", maxFiles)
				h.tooMany = true
			}
			break
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue // gone or replaced since ReadDir
		}
		if fi.Size() > maxFileSize {
			big[name] = true
			w := entry{size: fi.Size(), mtime: fi.ModTime()}
			if h.warned[name] != w {
				h.log.Warn("ads: file too big, skipped", "name", name, "size", fi.Size(), "max", maxFileSize)
				h.warned[name] = w
			}
			continue
		}
		seen[name] = true
		sum, ok := h.cached(name, fi)
		if !ok {
			f, ofi, err := h.open(name)
			if err != nil {
				h.log.Info("ads: skipped", "name", name, "err", err)
				continue
			}
			fi = ofi
			sum, err = h.hash(name, fi, f)
			f.Close()
			if err != nil {
				h.log.Warn("ads: reading", "name", name, "err", err)
				continue
			}
		}
		files = append(files, file{Name: name, Size: fi.Size(), SHA256: sum,
			MTime: fi.ModTime().UTC().Format(time.RFC3339)})
	}
	if len(files) < maxFiles {
		h.tooMany = false
	}
	for name := range h.cache {
		if !seen[name] {
			delete(h.cache, name)
		}
	}
	for name := range h.warned {
		if !big[name] {
			delete(h.warned, name)
		}
	}
	return files, nil
}

// open opens a file of the folder without following a symlink, and checks
// that what it opened is a regular file within the size cap.
func (h *handler) open(name string) (*os.File, os.FileInfo, error) {
	if !isImageName(name) {
		return nil, nil, fmt.Errorf("%q is not an image name", name)
	}
	// O_NOFOLLOW: a symlink put there after ReadDir fails to open;
	// O_NONBLOCK: so does a FIFO, rather than hanging.
	f, err := os.OpenFile(filepath.Join(h.dir, name), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file", name)
	}
	if fi.Size() > maxFileSize {
		f.Close()
		return nil, nil, fmt.Errorf("%s is larger than %d bytes", name, maxFileSize)
	}
	return f, fi, nil
}

// cached returns the cached sha256 of a file, if its size and mtime are
// still those it was hashed with. The caller holds h.mu.
func (h *handler) cached(name string, fi os.FileInfo) (string, bool) {
	e, ok := h.cache[name]
	if !ok || e.size != fi.Size() || !e.mtime.Equal(fi.ModTime()) {
		return "", false
	}
	return e.sum, true
}

// sum is the sha256 of an open file: from the cache, or hashed.
func (h *handler) sum(name string, fi os.FileInfo, f *os.File) (string, error) {
	h.mu.Lock()
	sum, ok := h.cached(name, fi)
	h.mu.Unlock()
	if ok {
		return sum, nil
	}
	sum, err := h.hashFile(fi, f)
	if err != nil {
		return "", err
	}
	h.mu.Lock()
	h.cache[name] = entry{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	h.mu.Unlock()
	return sum, nil
}

// hash hashes an open file and caches the result. The caller holds h.mu.
func (h *handler) hash(name string, fi os.FileInfo, f *os.File) (string, error) {
	sum, err := h.hashFile(fi, f)
	if err != nil {
		return "", err
	}
	h.cache[name] = entry{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	return sum, nil
}

func (h *handler) hashFile(fi os.FileInfo, f *os.File) (string, error) {
	h.hashes.Add(1)
	d := sha256.New()
	n, err := io.Copy(d, io.NewSectionReader(f, 0, fi.Size()))
	if err != nil {
		return "", err
	}
	if n != fi.Size() {
		return "", fmt.Errorf("%s: read %d bytes, size is %d", fi.Name(), n, fi.Size())
	}
	return hex.EncodeToString(d.Sum(nil)), nil
}

// isImageName reports whether name is one the folder may serve: a plain
// file name (no slashes, not starting with a dot) ending in .jpg, .jpeg,
// .png or .gif, in any case.
func isImageName(name string) bool {
	if name == "" || name[0] == '.' || strings.ContainsAny(name, "/\\\x00") {
		return false
	}
	return contentType(name) != ""
}

func contentType(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jpg", ".jpeg":
		return "image/jpeg"
	case ".png":
		return "image/png"
	case ".gif":
		return "image/gif"
	}
	return ""
}
