package ads

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func allowAll(netip.Addr) bool { return true }

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hexsum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// get performs a request against h from a default httptest address.
func get(h http.Handler, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func decode(t *testing.T, w *httptest.ResponseRecorder) index {
	t.Helper()
	var idx index
	if err := json.Unmarshal(w.Body.Bytes(), &idx); err != nil {
		t.Fatalf("GET /ads/ body %q: %v", w.Body.String(), err)
	}
	return idx
}

func names(idx index) []string {
	var out []string
	for _, f := range idx.Files {
		out = append(out, f.Name)
	}
	return out
}

func TestIndex(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "b.png", "png bytes")
	write(t, dir, "a.jpg", "jpeg bytes")
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "a.jpg"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	h := Handler(dir, allowAll, nil)

	w := get(h, "/ads/")
	if w.Code != http.StatusOK {
		t.Fatalf("GET /ads/ = %d, want 200", w.Code)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /ads/ Content-Type = %q, want application/json", ct)
	}
	want := []file{
		{Name: "a.jpg", Size: 10, SHA256: hexsum("jpeg bytes"), MTime: "2024-05-06T07:08:09Z"},
		{Name: "b.png", Size: 9, SHA256: hexsum("png bytes")},
	}
	got := decode(t, w).Files
	if len(got) == 2 {
		want[1].MTime = got[1].MTime // not set by the test
	}
	if !slices.Equal(got, want) {
		t.Errorf("GET /ads/ = %+v, want %+v", got, want)
	}
	etag := w.Header().Get("ETag")
	if wantTag := `"` + hexsum(w.Body.String()) + `"`; etag != wantTag {
		t.Errorf("GET /ads/ ETag = %s, want %s", etag, wantTag)
	}

	w = get(h, "/ads/", "If-None-Match", etag)
	if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("GET /ads/ If-None-Match %s = %d, %d bytes, want 304, 0 bytes", etag, w.Code, w.Body.Len())
	}
	w = get(h, "/ads/", "If-None-Match", `"other", `+etag)
	if w.Code != http.StatusNotModified {
		t.Errorf("GET /ads/ If-None-Match list = %d, want 304", w.Code)
	}

	// A change makes a new ETag, and the old one no longer matches.
	write(t, dir, "c.gif", "gif bytes")
	w = get(h, "/ads/", "If-None-Match", etag)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /ads/ after adding c.gif = %d, want 200", w.Code)
	}
	if got := w.Header().Get("ETag"); got == etag {
		t.Errorf("GET /ads/ after adding c.gif ETag = %s, want a new one", got)
	}
	if got, want := names(decode(t, w)), []string{"a.jpg", "b.png", "c.gif"}; !slices.Equal(got, want) {
		t.Errorf("GET /ads/ after adding c.gif = %v, want %v", got, want)
	}
}

func TestEmptyIndex(t *testing.T) {
	w := get(Handler(t.TempDir(), allowAll, nil), "/ads/")
	if w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != `{"files":[]}` {
		t.Errorf("GET /ads/ of an empty folder = %d %q, want 200 {\"files\":[]}", w.Code, w.Body.String())
	}
}

func TestMissingFolder(t *testing.T) {
	w := get(Handler(filepath.Join(t.TempDir(), "nope"), allowAll, nil), "/ads/")
	if w.Code != http.StatusInternalServerError {
		t.Errorf("GET /ads/ of a missing folder = %d, want 500", w.Code)
	}
}

func TestFile(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.PNG", "png bytes")
	write(t, dir, "b.jpeg", "jpeg bytes")
	h := Handler(dir, allowAll, nil)

	w := get(h, "/ads/a.PNG")
	if w.Code != http.StatusOK || w.Body.String() != "png bytes" {
		t.Fatalf("GET /ads/a.PNG = %d %q, want 200 %q", w.Code, w.Body.String(), "png bytes")
	}
	if got, want := w.Header().Get("Content-Type"), "image/png"; got != want {
		t.Errorf("GET /ads/a.PNG Content-Type = %q, want %q", got, want)
	}
	etag := w.Header().Get("ETag")
	if want := `"` + hexsum("png bytes") + `"`; etag != want {
		t.Errorf("GET /ads/a.PNG ETag = %s, want %s", etag, want)
	}
	w = get(h, "/ads/a.PNG", "If-None-Match", etag)
	if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("GET /ads/a.PNG If-None-Match = %d, %d bytes, want 304, 0 bytes", w.Code, w.Body.Len())
	}
	w = get(h, "/ads/b.jpeg", "If-None-Match", etag)
	if w.Code != http.StatusOK {
		t.Errorf("GET /ads/b.jpeg If-None-Match of a.PNG = %d, want 200", w.Code)
	}
	if got, want := w.Header().Get("Content-Type"), "image/jpeg"; got != want {
		t.Errorf("GET /ads/b.jpeg Content-Type = %q, want %q", got, want)
	}

	// HEAD has the headers and no body.
	r := httptest.NewRequest(http.MethodHead, "/ads/a.PNG", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK || rec.Header().Get("ETag") != etag || rec.Body.Len() != 0 {
		t.Errorf("HEAD /ads/a.PNG = %d ETag %s %d bytes, want 200 ETag %s 0 bytes", rec.Code, rec.Header().Get("ETag"), rec.Body.Len(), etag)
	}
	r = httptest.NewRequest(http.MethodPut, "/ads/a.PNG", strings.NewReader("x"))
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("PUT /ads/a.PNG = %d, want 405", rec.Code)
	}

	// A file changed in place gets a new ETag.
	write(t, dir, "a.PNG", "new png bytes!")
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "a.PNG"), future, future); err != nil {
		t.Fatal(err)
	}
	w = get(h, "/ads/a.PNG", "If-None-Match", etag)
	if w.Code != http.StatusOK || w.Body.String() != "new png bytes!" {
		t.Errorf("GET /ads/a.PNG after a change = %d %q, want 200 %q", w.Code, w.Body.String(), "new png bytes!")
	}
	if got, want := w.Header().Get("ETag"), `"`+hexsum("new png bytes!")+`"`; got != want {
		t.Errorf("GET /ads/a.PNG after a change ETag = %s, want %s", got, want)
	}
}

// TestRefused checks what is not served: everything the index leaves out
// is a 404, whatever the path looks like.
func TestRefused(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "ads")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, root, "secret.png", "outside")
	write(t, root, "passwd", "root:x:0:0")
	write(t, dir, "ok.png", "fine")
	write(t, dir, ".hidden.png", "dotfile")
	write(t, dir, "notes.txt", "not an image")
	write(t, dir, "noext", "not an image")
	if err := os.Mkdir(filepath.Join(dir, "sub.png"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "sub.png"), "in.png", "in a subfolder")
	for link, target := range map[string]string{
		"link.png":   filepath.Join(root, "secret.png"),
		"rel.png":    "../secret.png",
		"inside.png": "ok.png", // even within the folder: symlinks are not followed
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	h := Handler(dir, allowAll, nil)

	if got, want := names(decode(t, get(h, "/ads/"))), []string{"ok.png"}; !slices.Equal(got, want) {
		t.Errorf("GET /ads/ = %v, want %v", got, want)
	}
	for _, target := range []string{
		"/ads/../passwd",
		"/ads/../etc/passwd",
		"/ads/%2e%2e/passwd",
		"/ads/%2e%2e/secret.png",
		"/ads/..%2fsecret.png",
		"/ads/..%2Fsecret.png",
		"/ads/./ok.png",
		"/ads//ok.png",
		"/ads/ok.png/",
		"/ads/ok.png%00",
		"/ads/ok.png/..",
		"/ads/sub.png/in.png",
		"/ads/sub.png%2fin.png",
		"/ads/sub.png",
		"/ads/link.png",
		"/ads/rel.png",
		"/ads/inside.png",
		"/ads/.hidden.png",
		"/ads/notes.txt",
		"/ads/noext",
		"/ads/missing.png",
		"/ads/OK.PNG",
		"/ads",
		"/",
		"/other/ok.png",
	} {
		w := get(h, target)
		if w.Code != http.StatusNotFound {
			t.Errorf("GET %s = %d %q, want 404", target, w.Code, w.Body.String())
		}
		if strings.Contains(w.Body.String(), "outside") || strings.Contains(w.Body.String(), "root:") {
			t.Errorf("GET %s leaked %q", target, w.Body.String())
		}
	}
	if w := get(h, "/ads/ok.png"); w.Code != http.StatusOK {
		t.Errorf("GET /ads/ok.png = %d, want 200", w.Code)
	}
}

// TestServer goes through a real server and client, which send the path
// as written, and a ServeMux as the broker mounts it.
func TestServer(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "ads")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, root, "secret.png", "outside")
	write(t, dir, "ok.png", "fine")
	mux := http.NewServeMux()
	mux.Handle(Prefix, Handler(dir, allowAll, nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for path, want := range map[string]int{
		"/ads/ok.png":            http.StatusOK,
		"/ads/%2e%2e/secret.png": http.StatusNotFound,
		"/ads/..%2fsecret.png":   http.StatusNotFound,
	} {
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = path // sent as is, not cleaned
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || strings.Contains(string(body), "outside") {
			t.Errorf("GET %s = %d %q, want %d", path, resp.StatusCode, body, want)
		}
	}
}

func TestForbidden(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.png", "png bytes")
	kiosks := netip.MustParsePrefix("192.0.2.0/28")
	var asked []netip.Addr
	h := Handler(dir, func(a netip.Addr) bool { asked = append(asked, a); return kiosks.Contains(a) }, nil)
	for _, tc := range []struct {
		remote string
		want   int
	}{
		{"192.0.2.1:1234", http.StatusOK},
		{"[::ffff:192.0.2.2]:1234", http.StatusOK}, // IPv4-mapped: unmapped
		{"192.0.2.99:1234", http.StatusForbidden},
		{"[2001:db8::1]:1234", http.StatusForbidden},
		{"garbage", http.StatusForbidden},
		{"", http.StatusForbidden},
	} {
		for _, target := range []string{"/ads/", "/ads/a.png", "/ads/missing.png"} {
			r := httptest.NewRequest(http.MethodGet, target, nil)
			r.RemoteAddr = tc.remote
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			want := tc.want
			if want == http.StatusOK && target == "/ads/missing.png" {
				want = http.StatusNotFound
			}
			if w.Code != want {
				t.Errorf("GET %s from %q = %d, want %d", target, tc.remote, w.Code, want)
			}
			if w.Code == http.StatusForbidden && strings.Contains(w.Body.String(), "png") {
				t.Errorf("GET %s from %q = %q, want no content", target, tc.remote, w.Body.String())
			}
		}
	}
	if !slices.Contains(asked, netip.MustParseAddr("192.0.2.2")) {
		t.Errorf("allow was asked about %v, want 192.0.2.2 among them", asked)
	}

	if w := get(Handler(dir, nil, nil), "/ads/"); w.Code != http.StatusForbidden {
		t.Errorf("GET /ads/ with a nil allow = %d, want 403", w.Code)
	}
}

// TestHashCache checks that unchanged files are hashed once, however many
// requests there are, and a changed one again.
func TestHashCache(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.png", "a")
	write(t, dir, "b.png", "b")
	h := Handler(dir, allowAll, nil).(*handler)
	for range 5 {
		get(h, "/ads/")
		get(h, "/ads/a.png")
	}
	if got := h.hashes.Load(); got != 2 {
		t.Errorf("hashes after 5 index and 5 file requests = %d, want 2", got)
	}

	write(t, dir, "a.png", "a changed")
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "a.png"), future, future); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		get(h, "/ads/")
	}
	if got := h.hashes.Load(); got != 3 {
		t.Errorf("hashes after changing a.png = %d, want 3", got)
	}
	if err := os.Remove(filepath.Join(dir, "b.png")); err != nil {
		t.Fatal(err)
	}
	get(h, "/ads/")
	h.mu.Lock()
	_, ok := h.cache["b.png"]
	h.mu.Unlock()
	if ok {
		t.Errorf("cache[b.png] after removing b.png present, want forgotten")
	}
}

func TestLimits(t *testing.T) {
	dir := t.TempDir()
	// Sparse: the size is what counts, not the disk it takes.
	f, err := os.Create(filepath.Join(dir, "huge.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(maxFileSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	write(t, dir, "small.png", "x")
	var logs strings.Builder
	h := Handler(dir, allowAll, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 3 {
		if got, want := names(decode(t, get(h, "/ads/"))), []string{"small.png"}; !slices.Equal(got, want) {
			t.Errorf("GET /ads/ with huge.png = %v, want %v", got, want)
		}
	}
	if w := get(h, "/ads/huge.png"); w.Code != http.StatusNotFound {
		t.Errorf("GET /ads/huge.png = %d, want 404", w.Code)
	}
	if got := strings.Count(logs.String(), "too big"); got != 1 {
		t.Errorf("log lines about huge.png = %d, want 1; log:\n%s", got, logs.String())
	}

	dir = t.TempDir()
	for i := range maxFiles + 5 {
		write(t, dir, fmt.Sprintf("%04d.gif", i), "g")
	}
	h = Handler(dir, allowAll, nil)
	got := names(decode(t, get(h, "/ads/")))
	if len(got) != maxFiles || got[len(got)-1] != fmt.Sprintf("%04d.gif", maxFiles-1) {
		t.Errorf("GET /ads/ with %d files = %d files ending %q, want %d", maxFiles+5, len(got), got[len(got)-1], maxFiles)
	}
	if w := get(h, fmt.Sprintf("/ads/%04d.gif", maxFiles)); w.Code != http.StatusNotFound {
		t.Errorf("GET a file beyond the cap = %d, want 404", w.Code)
	}
}

func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		write(t, dir, fmt.Sprintf("%d.png", i), strings.Repeat("x", i*1000))
	}
	h := Handler(dir, allowAll, nil).(*handler)
	done := make(chan struct{})
	for i := range 10 {
		go func() {
			defer func() { done <- struct{}{} }()
			get(h, "/ads/")
			get(h, fmt.Sprintf("/ads/%d.png", i))
		}()
	}
	for range 10 {
		<-done
	}
	if got := h.hashes.Load(); got != 20 {
		t.Errorf("hashes after concurrent requests = %d, want 20", got)
	}
}
