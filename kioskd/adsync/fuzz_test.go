package adsync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzSyncIndex feeds Sync any index the broker (or someone posing as it)
// might send: whatever it lists, the mirror writes only images with the
// content they were checked against, only inside Dir, never touches files
// that are not its own, and leaves no temporary file.
func FuzzSyncIndex(f *testing.F) {
	const body = gifHeader + "an ad"
	sum := sha256.Sum256([]byte(body))
	good := hex.EncodeToString(sum[:])
	var index atomic.Value // the current input
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ads/" {
			w.Write(index.Load().([]byte))
			return
		}
		w.Write([]byte(body)) // every file has the same content
	}))
	f.Cleanup(srv.Close)
	entry := func(name, sha string, size int) string {
		return fmt.Sprintf(`{"name":%q,"size":%d,"sha256":%q}`, name, size, sha)
	}
	f.Add([]byte(`{"files":[` + entry("a.png", good, len(body)) + `,` + entry("b.JPG", good, len(body)) + `]}`))
	f.Add([]byte(`{"files":[` + entry("../outside.png", good, len(body)) + `,` + entry(".hidden.png", good, len(body)) + `]}`))
	f.Add([]byte(`{"files":[` + entry("README", good, 5) + `,` + entry("a.png", good, -1) + `,` + entry("a.png", good, 1) + `]}`))
	f.Add([]byte(`{"files":[` + entry("sub/x.gif", good, 9) + `,` + entry("x.gif\x00.png", good, 9) + `,` + entry("c:\\x.png", "zz", 9) + `]}`))
	f.Add([]byte(`{"files":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, idx []byte) {
		index.Store(idx)
		root := t.TempDir()
		dir := filepath.Join(root, "ads")
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "README"), []byte("not the mirror's"), 0o644)
		os.WriteFile(filepath.Join(dir, "old.png"), []byte(body), 0o644)
		m := &Mirror{URL: srv.URL + "/ads/", Dir: dir, Client: srv.Client(), MaxFile: 1 << 10, MaxTotal: 8 << 10, MaxDir: 4 << 10}
		m.Sync(context.Background())

		if entries, _ := os.ReadDir(root); len(entries) != 1 {
			t.Fatalf("the mirror wrote beside its folder: %v", entries)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			switch {
			case e.Name() == "README":
				if string(b) != "not the mirror's" {
					t.Fatalf("the mirror changed a file that is not its own")
				}
			case !isImageName(e.Name()) || strings.HasPrefix(e.Name(), "."):
				t.Fatalf("the mirror left %q, not an image of its own", e.Name())
			case string(b) != body:
				t.Fatalf("%s holds %q, not the content checked", e.Name(), b)
			}
		}
	})
}
