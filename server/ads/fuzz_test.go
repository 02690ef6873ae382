package ads

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzHandler sends the ads handler any request a kiosk address (or not)
// can make: it answers with a known status, and what it sends is the index
// or a part of a listed image, never a file outside the folder, a file that
// is not an image, or what a symbolic link points to.
func FuzzHandler(f *testing.F) {
	root := f.TempDir()
	dir := filepath.Join(root, "ads")
	os.Mkdir(dir, 0o755)
	const secret = "SECRET-NOT-AN-AD"
	os.WriteFile(filepath.Join(root, "outside.png"), []byte(secret), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(secret), 0o644)
	os.WriteFile(filepath.Join(dir, ".hidden.png"), []byte(secret), 0o644)
	os.Symlink("../outside.png", filepath.Join(dir, "link.png"))
	ad := "an ad's bytes, several of them"
	os.WriteFile(filepath.Join(dir, "a.png"), []byte(ad), 0o644)
	h := Handler(dir, func(a netip.Addr) bool { return a == netip.MustParseAddr("169.254.24.10") }, nil)

	for _, s := range []string{
		"GET /ads/ HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET /ads/a.png HTTP/1.1\r\nHost: b\r\nRange: bytes=3-9\r\n\r\n",
		"GET /ads/a.png HTTP/1.1\r\nHost: b\r\nIf-None-Match: \"x\"\r\n\r\n",
		"GET /ads/../outside.png HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET /ads/%2e%2e/outside.png HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET /ads/link.png HTTP/1.1\r\nHost: b\r\n\r\n",
		"HEAD /ads/notes.txt HTTP/1.1\r\nHost: b\r\n\r\n",
		"POST /ads/ HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s, "169.254.24.10:40000")
	}
	f.Add("GET /ads/ HTTP/1.1\r\nHost: b\r\n\r\n", "10.0.0.9:1")
	f.Add("GET /ads/ HTTP/1.1\r\nHost: b\r\n\r\n", "garbage")
	f.Fuzz(func(t *testing.T, raw, remote string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		body := w.Body.Bytes()
		if bytes.Contains(body, []byte(secret)) {
			t.Fatalf("%q served something that is not an ad: %d %q", raw, w.Code, body)
		}
		switch w.Code {
		case http.StatusOK, http.StatusPartialContent:
			index := bytes.HasPrefix(body, []byte(`{"files":`))
			if !index && !strings.Contains(ad, string(body)) {
				t.Fatalf("%q answered %d with %q: neither the index nor part of an ad", raw, w.Code, body)
			}
		case http.StatusNotModified, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusRequestedRangeNotSatisfiable, http.StatusPreconditionFailed:
		default:
			t.Fatalf("%q answered %d: %q", raw, w.Code, body)
		}
	})
}
