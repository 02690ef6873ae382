package adsync

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"undervdi/internal/poll"
	"undervdi/internal/testimg"

	"undervdi/server/ads"
)

// broker is the real ads handler over a temporary folder, behind a
// wrapper that counts answers and can corrupt file downloads.
type broker struct {
	dir string
	srv *httptest.Server

	mu      sync.Mutex
	status  map[string][]int // by path
	corrupt bool             // flip the first byte of every file body
}

func newBroker(t *testing.T) *broker {
	t.Helper()
	b := &broker{dir: t.TempDir(), status: map[string][]int{}}
	h := ads.Handler(b.dir, func(netip.Addr) bool { return true }, nil)
	mux := http.NewServeMux()
	mux.Handle(ads.Prefix, h)
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		corrupt := b.corrupt && r.URL.Path != ads.Prefix
		b.mu.Unlock()
		rec := &recorder{ResponseWriter: w, corrupt: corrupt}
		mux.ServeHTTP(rec, r)
		b.mu.Lock()
		b.status[r.URL.Path] = append(b.status[r.URL.Path], rec.code)
		b.mu.Unlock()
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *broker) url() string { return b.srv.URL + ads.Prefix }

// requests returns the status codes answered since the last call, by path,
// and forgets them.
func (b *broker) requests() map[string][]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	b.status = map[string][]int{}
	return s
}

func (b *broker) setCorrupt(c bool) {
	b.mu.Lock()
	b.corrupt = c
	b.mu.Unlock()
}

type recorder struct {
	http.ResponseWriter
	code    int
	corrupt bool
	flipped bool
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	if r.corrupt && !r.flipped && len(p) > 0 {
		p = bytes.Clone(p)
		p[0] ^= 0xff
		r.flipped = true
	}
	return r.ResponseWriter.Write(p)
}

// write sets a file's content, with an mtime that differs from the last
// one even on a coarse clock.
// gifHeader makes a test file an image as far as its header goes (a 1×1
// GIF): the mirror reads an image's header before it keeps it. write adds
// it to image names and contents takes it off, so tests compare the text
// after it.
const gifHeader = "GIF89a\x01\x00\x01\x00\x00\x00\x00"

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	path := filepath.Join(dir, name)
	old, err := os.Stat(path)
	if isImageName(name) {
		content = gifHeader + content
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		mt := old.ModTime().Add(time.Second)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

// contents reads every file of dir, dotfiles included.
func contents(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = strings.TrimPrefix(string(b), gifHeader)
	}
	return out
}

func mtimes(t *testing.T, dir string) map[string]time.Time {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fi.ModTime()
	}
	return out
}

func newMirror(t *testing.T, b *broker) *Mirror {
	return &Mirror{URL: b.url(), Dir: t.TempDir(), Client: b.srv.Client()}
}

func sync1(t *testing.T, m *Mirror) bool {
	t.Helper()
	changed, err := m.Sync(context.Background())
	if err != nil {
		t.Fatalf("Sync() = %v, %v, want no error", changed, err)
	}
	return changed
}

func TestSync(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	write(t, b.dir, "b.JPG", "jpeg b")
	write(t, b.dir, "notes.txt", "not served")
	m := newMirror(t, b)
	write(t, m.Dir, "README", "mine, not the mirror's")
	write(t, m.Dir, ".keep.png", "a dotfile")

	if !sync1(t, m) {
		t.Errorf("first Sync() changed = false, want true")
	}
	want := map[string]string{"a.png": "png a", "b.JPG": "jpeg b", "README": "mine, not the mirror's", ".keep.png": "a dotfile"}
	if got := contents(t, m.Dir); !maps.Equal(got, want) {
		t.Errorf("Dir after first Sync() = %v, want %v", got, want)
	}
	b.requests()

	// Nothing changed: one request, a 304, and no file touched.
	before := mtimes(t, m.Dir)
	time.Sleep(10 * time.Millisecond)
	if sync1(t, m) {
		t.Errorf("second Sync() changed = true, want false")
	}
	if got, want := b.requests(), map[string][]int{"/ads/": {304}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("requests of second Sync() = %v, want %v", got, want)
	}
	if got := mtimes(t, m.Dir); !maps.Equal(got, before) {
		t.Errorf("mtimes after second Sync() = %v, want %v", got, before)
	}

	// Add, change, remove.
	write(t, b.dir, "c.gif", "gif c")
	write(t, b.dir, "a.png", "png a, version 2")
	if err := os.Remove(filepath.Join(b.dir, "b.JPG")); err != nil {
		t.Fatal(err)
	}
	if !sync1(t, m) {
		t.Errorf("Sync() after changes changed = false, want true")
	}
	want = map[string]string{"a.png": "png a, version 2", "c.gif": "gif c", "README": "mine, not the mirror's", ".keep.png": "a dotfile"}
	if got := contents(t, m.Dir); !maps.Equal(got, want) {
		t.Errorf("Dir after changes = %v, want %v", got, want)
	}
	if got, want := b.requests(), map[string][]int{"/ads/": {200}, "/ads/a.png": {200}, "/ads/c.gif": {200}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("requests of Sync() after changes = %v, want %v", got, want)
	}

	// A touched file (same content, new mtime) changes the index but is
	// not downloaded again.
	mt := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(b.dir, "c.gif"), mt, mt); err != nil {
		t.Fatal(err)
	}
	if sync1(t, m) {
		t.Errorf("Sync() after touching c.gif changed = true, want false")
	}
	if got, want := b.requests(), map[string][]int{"/ads/": {200}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("requests of Sync() after touching c.gif = %v, want %v", got, want)
	}

	// The server's folder emptied: the mirror's images go, the rest stays.
	for _, name := range []string{"a.png", "c.gif"} {
		if err := os.Remove(filepath.Join(b.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if !sync1(t, m) {
		t.Errorf("Sync() of an empty folder changed = false, want true")
	}
	want = map[string]string{"README": "mine, not the mirror's", ".keep.png": "a dotfile"}
	if got := contents(t, m.Dir); !maps.Equal(got, want) {
		t.Errorf("Dir after emptying = %v, want %v", got, want)
	}
}

// TestRestart checks that a new Mirror over a folder already in sync
// downloads nothing, and replaces what differs.
func TestRestart(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	write(t, b.dir, "b.png", "png b")
	m := newMirror(t, b)
	sync1(t, m)
	write(t, m.Dir, "b.png", "damaged") // as if changed while kioskd was down
	write(t, m.Dir, "old.gif", "no longer listed")
	before := mtimes(t, m.Dir)
	b.requests()

	m2 := &Mirror{URL: m.URL, Dir: m.Dir, Client: m.Client}
	if !sync1(t, m2) {
		t.Errorf("Sync() after restart changed = false, want true")
	}
	if got, want := b.requests(), map[string][]int{"/ads/": {200}, "/ads/b.png": {200}}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("requests after restart = %v, want %v", got, want)
	}
	if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a", "b.png": "png b"}; !maps.Equal(got, want) {
		t.Errorf("Dir after restart = %v, want %v", got, want)
	}
	if got := mtimes(t, m.Dir)["a.png"]; !got.Equal(before["a.png"]) {
		t.Errorf("a.png mtime after restart = %v, want unchanged %v", got, before["a.png"])
	}
}

// TestLocalChange checks that a file changed or removed behind the
// mirror's back is restored even though the index answers 304.
func TestLocalChange(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	write(t, b.dir, "b.png", "png b")
	m := newMirror(t, b)
	sync1(t, m)
	if err := os.Remove(filepath.Join(m.Dir, "a.png")); err != nil {
		t.Fatal(err)
	}
	write(t, m.Dir, "b.png", "damaged")
	sync1(t, m)
	if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a", "b.png": "png b"}; !maps.Equal(got, want) {
		t.Errorf("Dir after local changes = %v, want %v", got, want)
	}
}

func TestCorrupt(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	m := newMirror(t, b)
	sync1(t, m)

	write(t, b.dir, "a.png", "png a, version 2")
	write(t, b.dir, "new.png", "new png")
	b.setCorrupt(true)
	changed, err := m.Sync(context.Background())
	if err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("Sync() of corrupted files = %v, %v, want a sha256 error", changed, err)
	}
	if changed {
		t.Errorf("Sync() of corrupted files changed = true, want false")
	}
	if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a"}; !maps.Equal(got, want) {
		t.Errorf("Dir after corrupted downloads = %v, want %v", got, want)
	}

	// The failure is not hidden behind a 304 next time.
	b.setCorrupt(false)
	b.requests()
	if !sync1(t, m) {
		t.Errorf("Sync() after the corruption ended changed = false, want true")
	}
	if got, want := b.requests()["/ads/"], []int{200}; !slices.Equal(got, want) {
		t.Errorf("index requests after a failed Sync() = %v, want %v", got, want)
	}
	if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a, version 2", "new.png": "new png"}; !maps.Equal(got, want) {
		t.Errorf("Dir after the corruption ended = %v, want %v", got, want)
	}
}

func TestServerDown(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	m := newMirror(t, b)
	sync1(t, m)
	want := contents(t, m.Dir)
	b.srv.Close()

	for range 2 {
		changed, err := m.Sync(context.Background())
		if err == nil || changed {
			t.Errorf("Sync() with the server down = %v, %v, want false, an error", changed, err)
		}
	}
	if got := contents(t, m.Dir); !maps.Equal(got, want) {
		t.Errorf("Dir with the server down = %v, want %v", got, want)
	}
}

// TestBadAnswers checks that answers other than an index delete nothing.
func TestBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		code int
		body string
	}{
		{"404", http.StatusNotFound, ""},
		{"500", http.StatusInternalServerError, `{"files":[]}`},
		{"html", http.StatusOK, "<html>captive portal</html>"},
		{"no files", http.StatusOK, `{}`},
		{"null files", http.StatusOK, `{"files":null}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.code)
				fmt.Fprint(w, tc.body)
			}))
			defer srv.Close()
			m := &Mirror{URL: srv.URL + "/ads", Dir: t.TempDir(), Client: srv.Client()}
			write(t, m.Dir, "a.png", "png a")
			changed, err := m.Sync(context.Background())
			if err == nil || changed {
				t.Errorf("Sync() = %v, %v, want false, an error", changed, err)
			}
			if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a"}; !maps.Equal(got, want) {
				t.Errorf("Dir = %v, want %v", got, want)
			}
		})
	}
}

// TestHostileIndex checks that names from the index cannot write outside
// Dir or over its other files.
func TestHostileIndex(t *testing.T) {
	const sum = "0000000000000000000000000000000000000000000000000000000000000000"
	var files []string
	for _, name := range []string{"../x.png", "/etc/x.png", "sub/x.png", ".x.png", "x.txt", "..", ""} {
		files = append(files, fmt.Sprintf(`{"name":%q,"size":1,"sha256":%q}`, name, sum))
	}
	files = append(files, `{"name":"y.png","size":1,"sha256":"not hex"}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ads/" {
			t.Errorf("GET %s, want only the index", r.URL.Path)
		}
		fmt.Fprintf(w, `{"files":[%s]}`, strings.Join(files, ","))
	}))
	defer srv.Close()
	root := t.TempDir()
	dir := filepath.Join(root, "ads")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &Mirror{URL: srv.URL + "/ads/", Dir: dir, Client: srv.Client()}
	if _, err := m.Sync(context.Background()); err == nil {
		t.Errorf("Sync() of a hostile index = nil error, want one")
	}
	for _, d := range []string{root, dir} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if d == root {
			want = 1 // ads itself
		}
		if len(entries) != want {
			t.Errorf("ReadDir(%s) = %v, want %d entries", d, entries, want)
		}
	}
}

func TestLimits(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", strings.Repeat("a", 100))
	write(t, b.dir, "b.png", strings.Repeat("b", 100))
	write(t, b.dir, "c.png", strings.Repeat("c", 1000))
	m := newMirror(t, b)
	m.MaxFile = 500
	m.MaxTotal = 150
	changed, err := m.Sync(context.Background())
	if !changed || err == nil {
		t.Errorf("Sync() over the limits = %v, %v, want true, an error", changed, err)
	}
	if got, want := contents(t, m.Dir), map[string]string{"a.png": strings.Repeat("a", 100)}; !maps.Equal(got, want) {
		t.Errorf("Dir after Sync() over the limits = %v, want %v", got, want)
	}
	// The next Sync carries on where the budget stopped.
	b.requests()
	changed, err = m.Sync(context.Background())
	if !changed || err == nil {
		t.Errorf("second Sync() over the limits = %v, %v, want true, an error", changed, err)
	}
	if _, ok := contents(t, m.Dir)["b.png"]; !ok {
		t.Errorf("Dir after second Sync() lacks b.png")
	}
	if got := b.requests()["/ads/c.png"]; got != nil {
		t.Errorf("requests for c.png, over MaxFile = %v, want none", got)
	}
}

// TestDirCapAcrossSyncs: the mirror's size is bounded in all, not per
// sync: new ads that would bring it over MaxDir wait until the broker drops
// old ones, which go first.
func TestDirCapAcrossSyncs(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", strings.Repeat("a", 100))
	write(t, b.dir, "b.png", strings.Repeat("b", 100))
	m := newMirror(t, b)
	m.MaxDir = 300 // two files, with their headers, not three
	if _, err := m.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	write(t, b.dir, "c.png", strings.Repeat("c", 100))
	_, err := m.Sync(context.Background())
	if err == nil || !strings.Contains(err.Error(), "c.png") || !strings.Contains(err.Error(), "over the 300 bytes it may hold") {
		t.Errorf("Sync() over MaxDir = %v, want c.png left out", err)
	}
	if got := slices.Sorted(maps.Keys(contents(t, m.Dir))); !slices.Equal(got, []string{"a.png", "b.png"}) {
		t.Errorf("Dir = %v, want a.png and b.png", got)
	}
	os.Remove(filepath.Join(b.dir, "a.png"))
	if _, err := m.Sync(context.Background()); err != nil {
		t.Errorf("Sync() once a.png is dropped = %v", err)
	}
	if got := slices.Sorted(maps.Keys(contents(t, m.Dir))); !slices.Equal(got, []string{"b.png", "c.png"}) {
		t.Errorf("Dir = %v, want b.png and c.png", got)
	}
}

// TestHugeImageRefused: an image whose header claims 40000×40000 pixels
// never lands in the mirror, and is not fetched again.
func TestHugeImageRefused(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	if err := os.WriteFile(filepath.Join(b.dir, "huge.png"), testimg.HugePNG(40000, 40000), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newMirror(t, b)
	for i := range 2 {
		_, err := m.Sync(context.Background())
		if err == nil || !strings.Contains(err.Error(), "huge.png: not shown") || !strings.Contains(err.Error(), "40000×40000") {
			t.Errorf("Sync() %d = %v, want huge.png refused on its size", i, err)
		}
		if got := slices.Sorted(maps.Keys(contents(t, m.Dir))); !slices.Equal(got, []string{"a.png"}) {
			t.Errorf("Dir = %v, want a.png only", got)
		}
	}
	if got := b.requests()["/ads/huge.png"]; len(got) != 1 {
		t.Errorf("huge.png fetched %d times, want once", len(got))
	}
}

// TestTemps checks that temporary files an interrupted run left are
// removed, and no others.
func TestTemps(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	m := newMirror(t, b)
	write(t, m.Dir, ".a.png.tmp-12345", "half")
	write(t, m.Dir, ".other.tmp-12345", "not ours")
	write(t, m.Dir, ".a.png.tmp-x", "not ours")
	sync1(t, m)
	want := map[string]string{"a.png": "png a", ".other.tmp-12345": "not ours", ".a.png.tmp-x": "not ours"}
	if got := contents(t, m.Dir); !maps.Equal(got, want) {
		t.Errorf("Dir = %v, want %v", got, want)
	}
}

// logs collects the messages of records.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

func (l *logs) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func TestRun(t *testing.T) {
	b := newBroker(t)
	write(t, b.dir, "a.png", "png a")
	l := &logs{}
	m := newMirror(t, b)
	m.Log = slog.New(l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx, 5*time.Millisecond)
		close(done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log: %v", l.all())
		}
	})
	waitFor := func(what string, cond func() bool) { t.Helper(); poll.Until(t, 10*time.Second, "Run: "+what, cond) }
	waitFor("a.png", func() bool { _, err := os.Stat(filepath.Join(m.Dir, "a.png")); return err == nil })

	b.setCorrupt(true)
	write(t, b.dir, "a.png", "png a, version 2")
	b.requests()
	n := 0
	waitFor("failed syncs", func() bool {
		n += len(b.requests()["/ads/a.png"])
		return n >= 5
	})
	if got := l.count("adsync: sync failed"); got != 1 {
		t.Errorf("Run: %q logged %d times over 5 failures, want 1", "adsync: sync failed", got)
	}
	b.setCorrupt(false)
	waitFor("recovery", func() bool { return l.count("adsync: sync works again") > 0 })
	cancel()
	<-done
	if got, want := contents(t, m.Dir), map[string]string{"a.png": "png a, version 2"}; !maps.Equal(got, want) {
		t.Errorf("Dir after Run = %v, want %v", got, want)
	}
}

func TestJitter(t *testing.T) {
	const d = time.Minute
	lo, hi := d, time.Duration(0)
	for range 1000 {
		j := jitter(d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < d/2 || hi >= 3*d/2 || hi-lo < d/2 {
		t.Errorf("jitter(%v) over 1000 calls in [%v, %v], want spread within [%v, %v)", d, lo, hi, d/2, 3*d/2)
	}
	if got := jitter(0); got <= 0 {
		t.Errorf("jitter(0) = %v, want > 0", got)
	}
}

// TestRefresh: Run syncs at once on Refresh, not at its next turn an hour
// away.
func TestRefresh(t *testing.T) {
	b := newBroker(t)
	m := newMirror(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx, time.Hour)
	poll.Until(t, 10*time.Second, "the first sync", func() bool { return len(b.requests()["/ads/"]) > 0 })
	write(t, b.dir, "new.png", "a new ad")
	m.Refresh()
	poll.Until(t, 10*time.Second, "the new ad mirrored", func() bool { return contents(t, m.Dir)["new.png"] == "a new ad" })
}
