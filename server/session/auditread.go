package session

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// AuditQuery picks audit records, newest first. Zero fields match all.
type AuditQuery struct {
	Kiosk  string
	VM     string
	Event  string
	Since  time.Time // at or after
	Before time.Time // strictly before: the cursor of the next page
	Limit  int
}

// ReadAudit reads the audit log at path and its rotated files, newest
// first, and returns up to q.Limit records that match q. more says whether
// older matches remain: the next page asks Before the last record's time.
// A line that does not parse (a record cut by a crash) is skipped.
func ReadAudit(path string, q AuditQuery) (recs []AuditRecord, more bool, err error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	files, err := auditFiles(path)
	if err != nil {
		return nil, false, err
	}
	for _, f := range files {
		matches, err := readAuditFile(f, q)
		if err != nil {
			return nil, false, err
		}
		// A file is oldest first; the page is newest first.
		for i := len(matches) - 1; i >= 0; i-- {
			if len(recs) == q.Limit {
				return recs, true, nil
			}
			recs = append(recs, matches[i])
		}
	}
	return recs, false, nil
}

// auditFiles is the audit log and its rotated files (lumberjack names them
// audit-2026-12-01T14-03-05.000.log[.gz]), newest first.
func auditFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	ext := filepath.Ext(base)
	prefix := strings.TrimSuffix(base, ext) + "-"
	entries, err := os.ReadDir(filepath.Clean(dir))
	if err != nil {
		return nil, err
	}
	var old []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, prefix) && (strings.HasSuffix(n, ext) || strings.HasSuffix(n, ext+".gz")) {
			old = append(old, filepath.Join(dir, n))
		}
	}
	slices.Sort(old) // the timestamps sort as text
	slices.Reverse(old)
	files := []string{}
	if _, err := os.Stat(path); err == nil {
		files = append(files, path)
	}
	return append(files, old...), nil
}

func readAuditFile(path string, q AuditQuery) ([]AuditRecord, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil // rotated away as we read
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, nil // still being compressed
		}
		defer gz.Close()
		r = gz
	}
	var out []AuditRecord
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec AuditRecord
		if json.Unmarshal(sc.Bytes(), &rec) != nil || !q.matches(&rec) {
			continue
		}
		out = append(out, rec)
	}
	return out, nil // a cut last line ends the scan; what came before counts
}

func (q AuditQuery) matches(r *AuditRecord) bool {
	return (q.Kiosk == "" || r.Kiosk == q.Kiosk) && (q.VM == "" || r.VM == q.VM) && (q.Event == "" || r.Event == q.Event) &&
		(q.Since.IsZero() || !r.Time.Before(q.Since)) && (q.Before.IsZero() || r.Time.Before(q.Before))
}
