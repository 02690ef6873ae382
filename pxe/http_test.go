package pxe

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/syncbuf"
)

func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// bootTree makes a boot directory with a kernel, a script, a
// subdirectory, a dotfile, and a symbolic link to a file outside.
func bootTree(t *testing.T) (dir string, kernel []byte, mtime time.Time) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "boot")
	kernel = []byte("0123456789abcdefghij")
	mtime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for name, data := range map[string][]byte{
		"boot/vmlinuz":    kernel,
		"boot/boot.ipxe":  []byte(IPXEScript("console=ttyS0")),
		"boot/sub/file":   []byte("nested"),
		"boot/.hidden":    []byte("dot"),
		"secret-outside":  []byte("secret"),
		"boot/empty.conf": nil,
	} {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(filepath.Join(dir, "vmlinuz"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret-outside", filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	return dir, kernel, mtime
}

func TestHandler(t *testing.T) {
	dir, kernel, mtime := bootTree(t)
	var logs syncbuf.Buffer
	srv := httptest.NewServer(&Handler{Dir: dir, Log: debugLogger(&logs)})
	defer srv.Close()

	for _, tc := range []struct {
		name, method, path string
		header             map[string]string
		status             int
		body               string
		wantHeader         map[string]string
	}{
		{name: "GET", method: "GET", path: "/vmlinuz", status: 200, body: string(kernel),
			wantHeader: map[string]string{"Last-Modified": mtime.Format(http.TimeFormat), "Accept-Ranges": "bytes", "Content-Length": "20"}},
		{name: "HEAD", method: "HEAD", path: "/vmlinuz", status: 200, body: "",
			wantHeader: map[string]string{"Content-Length": "20", "Last-Modified": mtime.Format(http.TimeFormat)}},
		{name: "range", method: "GET", path: "/vmlinuz", header: map[string]string{"Range": "bytes=10-13"}, status: 206, body: "abcd",
			wantHeader: map[string]string{"Content-Range": "bytes 10-13/20"}},
		{name: "not modified", method: "GET", path: "/vmlinuz", header: map[string]string{"If-Modified-Since": mtime.Format(http.TimeFormat)}, status: 304},
		{name: "script", method: "GET", path: "/boot.ipxe", status: 200, body: IPXEScript("console=ttyS0")},
		{name: "missing", method: "GET", path: "/initramfs.img", status: 404},
		{name: "no listing", method: "GET", path: "/", status: 404},
		{name: "no listing without slash", method: "GET", path: "", status: 404},
		{name: "subdirectory", method: "GET", path: "/sub", status: 404},
		{name: "file in subdirectory", method: "GET", path: "/sub/file", status: 404},
		{name: "dotfile", method: "GET", path: "/.hidden", status: 404},
		{name: "dotdot", method: "GET", path: "/..%2fsecret-outside", status: 404},
		{name: "symlink out", method: "GET", path: "/escape", status: 404},
		{name: "POST", method: "POST", path: "/vmlinuz", status: 405, wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "PUT", method: "PUT", path: "/vmlinuz", status: 405},
		{name: "DELETE", method: "DELETE", path: "/vmlinuz", status: 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(""))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
			}
			if tc.status < 300 && string(body) != tc.body {
				t.Errorf("%s %s body = %q, want %q", tc.method, tc.path, body, tc.body)
			}
			if bytes.Contains(body, []byte("secret")) || bytes.Contains(body, []byte("nested")) {
				t.Errorf("%s %s leaked a file: %q", tc.method, tc.path, body)
			}
			for k, v := range tc.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s %s header %s = %q, want %q", tc.method, tc.path, k, got, v)
				}
			}
		})
	}

	log := logs.String()
	for _, want := range []string{
		`level=DEBUG msg=http`, `method=GET path=/vmlinuz range="bytes=10-13" status=206 bytes=4`,
		`method=POST path=/vmlinuz range="" status=405`, `method=HEAD path=/vmlinuz range="" status=200 bytes=0`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("access log lacks %q:\n%s", want, log)
		}
	}
}

// TestHandlerLargeFile checks a file far larger than any buffer arrives
// whole through the access log's writer (which keeps sendfile).
func TestHandlerLargeFile(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("initramfs "), 1<<20)
	if err := os.WriteFile(filepath.Join(dir, "initramfs.img"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	srv := httptest.NewServer(&Handler{Dir: dir, Log: debugLogger(&logs)})
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/initramfs.img")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GET /initramfs.img = %d bytes, %v; want %d bytes", len(got), err, len(data))
	}
	if want := "bytes=10485760"; !strings.Contains(logs.String(), want) {
		t.Errorf("access log lacks %q:\n%s", want, logs.String())
	}
}

func TestServe(t *testing.T) {
	dir, kernel, _ := bootTree(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, &Handler{Dir: dir}, debugLogger(&logs)) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/vmlinuz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(body, kernel) {
		t.Errorf("GET /vmlinuz = %q, want %q", body, kernel)
	}
	if want := "level=INFO msg=\"serving network-boot files over HTTP\" addr=" + ln.Addr().String(); !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, logs.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve() after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve() did not return after cancel")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Errorf("the listener still accepts after Serve returned")
	}
}
