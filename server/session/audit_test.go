package session

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"undervdi/internal/poll"
	"undervdi/internal/syncbuf"
)

// TestRefusalFloodIsSummarised: a flood of one refusal is one line, then
// one line with its count; another kind of refusal still gets its own.
func TestRefusalFloodIsSummarised(t *testing.T) {
	buf := &syncbuf.Buffer{}
	a := NewAudit(buf, logger())
	a.window = 100 * time.Millisecond
	counted := map[string]int{} // what the metrics hear: every refusal
	a.OnRefused = func(what string) { counted[what]++ }
	for range 1000 {
		a.Refused("spice-link", "169.254.24.99", "", "main channel: no live lease for this address")
	}
	a.Refused("spice-link", "169.254.24.99", "", "main channel: ticket does not match the lease")
	a.Refused("spice-link", "169.254.24.98", "", "main channel: no live lease for this address")
	if got := records(buf); len(got) != 3 {
		t.Fatalf("audit after the flood = %d lines, want 3 (one per kind):\n%s", len(got), buf.Bytes())
	}
	if counted["spice-link"] != 1002 {
		t.Errorf("OnRefused heard %v, want all 1002 refusals", counted)
	}
	poll.Until(t, 10*time.Second, "the flood's count", func() bool { return len(records(buf)) == 4 })
	r := records(buf)[3]
	if r.Count != 999 || r.Addr != "169.254.24.99" || r.Since == nil || !strings.Contains(r.Reason, "no live lease") {
		t.Errorf("summary = %+v, want 999 more from 169.254.24.99", r)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(records(buf)); n != 4 {
		t.Errorf("%d lines; kinds refused once have nothing to summarise", n)
	}
	a.Refused("spice-link", "169.254.24.99", "", "main channel: no live lease for this address")
	if n := len(records(buf)); n != 5 {
		t.Errorf("a refusal after the window = %d lines, want it written at once", n)
	}
}

// TestAuditRotates: the audit file is rotated at its size, so a flood
// cannot fill the disk.
func TestAuditRotates(t *testing.T) {
	dir, err := os.MkdirTemp("", "audit-rotates-")
	if err != nil {
		t.Fatal(err)
	}
	// lumberjack compresses rotated files in the background, after the
	// test is done with them: remove the directory once it has finished.
	t.Cleanup(func() {
		poll.Until(t, 30*time.Second, "the rotated files' compression to finish", func() bool { return os.RemoveAll(dir) == nil })
	})
	path := filepath.Join(dir, "sessions.jsonl")
	a, err := OpenAudit(path, 1<<20, 2, logger())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12000 { // about 2.5 MiB of lines
		a.Write(&AuditRecord{Event: "session", Lease: fmt.Sprintf("l-%016d", i), Kiosk: "lobby-1", Reason: strings.Repeat("x", 150)})
	}
	poll.Until(t, 10*time.Second, "rotated files", func() bool {
		old, _ := filepath.Glob(path[:len(path)-len(".jsonl")] + "-*")
		return len(old) >= 1
	})
	st, err := os.Stat(path)
	if err != nil || st.Size() > 1<<20 {
		t.Errorf("current audit file: %v, %v; want at most 1 MiB", st.Size(), err)
	}
	if _, err := OpenAudit(filepath.Join("/proc", "no", "audit.jsonl"), 1<<20, 2, logger()); err == nil {
		t.Errorf("OpenAudit on an unwritable path = nil error, want it refused at start")
	}
}
