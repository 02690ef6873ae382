package pxe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"boot", "usr/lib/ipxe"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "boot/ipxe.efi"), []byte("efi"), 0o644)
	os.WriteFile(filepath.Join(root, "usr/lib/ipxe/undionly.kpxe"), []byte("kpxe"), 0o644)
	links := map[string]string{
		"usr/lib/ipxe/ipxe.efi": "/boot/ipxe.efi", // as in Debian 12
		"usr/lib/ipxe/rel.efi":  "../../../boot/ipxe.efi",
		"usr/lib/ipxe/out":      "../../../../etc/passwd",
		"usr/lib/ipxe/loop":     "loop",
	}
	for link, target := range links {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ rel, want, err string }{
		{"usr/lib/ipxe/ipxe.efi", "boot/ipxe.efi", ""},
		{"usr/lib/ipxe/rel.efi", "boot/ipxe.efi", ""},
		{"usr/lib/ipxe/undionly.kpxe", "usr/lib/ipxe/undionly.kpxe", ""},
		{"usr/lib/ipxe/missing", "usr/lib/ipxe/missing", ""},
		{"usr/lib/ipxe/out", "", "links out"},
		{"usr/lib/ipxe/loop", "", "too many levels"},
	} {
		got, err := resolveInRoot(root, tc.rel)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("resolveInRoot(%s) = %q, %v; want an error saying %q", tc.rel, got, err, tc.err)
			}
			continue
		}
		if want := filepath.Join(root, tc.want); err != nil || got != want {
			t.Errorf("resolveInRoot(%s) = %q, %v; want %q", tc.rel, got, err, want)
		}
	}
}
