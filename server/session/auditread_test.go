package session

import (
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReadAuditPages reads a rotated audit log back newest first, filtered
// and in pages, skipping a line a crash cut short.
func TestReadAuditPages(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	line := func(i int, kiosk string) []byte {
		b, _ := json.Marshal(AuditRecord{Time: t0.Add(time.Duration(i) * time.Minute), Event: "session", Kiosk: kiosk, VM: "vm" + string(rune('a'+i))})
		return append(b, '\n')
	}
	// The oldest file, compressed, as lumberjack leaves it; then a plain
	// rotated one; then the live file with a cut last line.
	gzf, _ := os.Create(filepath.Join(dir, "audit-2026-12-01T09-02-00.000.log.gz"))
	zw := gzip.NewWriter(gzf)
	zw.Write(line(0, "k1"))
	zw.Write(line(1, "k2"))
	zw.Close()
	gzf.Close()
	os.WriteFile(filepath.Join(dir, "audit-2026-12-01T09-04-00.000.log"), append(line(2, "k1"), line(3, "k2")...), 0o600)
	os.WriteFile(path, append(append(line(4, "k1"), line(5, "k1")...), []byte(`{"time":"2026-12-01T09:0`)...), 0o600)
	os.WriteFile(filepath.Join(dir, "other.log"), line(9, "k1"), 0o600)

	recs, more, err := ReadAudit(path, AuditQuery{Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || !more || recs[0].VM != "vmf" || recs[3].VM != "vmc" {
		t.Fatalf("first page: %d records, more=%v, %+v", len(recs), more, recs)
	}
	recs, more, err = ReadAudit(path, AuditQuery{Limit: 4, Before: recs[3].Time})
	if err != nil || len(recs) != 2 || more || recs[0].VM != "vmb" || recs[1].VM != "vma" {
		t.Fatalf("second page: %v, more=%v, %+v", err, more, recs)
	}
	recs, _, _ = ReadAudit(path, AuditQuery{Kiosk: "k2"})
	if len(recs) != 2 || recs[0].VM != "vmd" || recs[1].VM != "vmb" {
		t.Errorf("kiosk k2: %+v", recs)
	}
	recs, _, _ = ReadAudit(path, AuditQuery{Since: t0.Add(3 * time.Minute), Kiosk: "k1"})
	if len(recs) != 2 || recs[1].VM != "vme" {
		t.Errorf("k1 since 09:03: %+v", recs)
	}
	recs, _, _ = ReadAudit(path, AuditQuery{Event: "login"})
	if len(recs) != 0 {
		t.Errorf("event login: %+v", recs)
	}
}
