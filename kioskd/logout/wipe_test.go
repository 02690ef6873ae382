package logout

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// asTestUser reruns the test as the unprivileged test user if we are root,
// for whom (unlike root) read-only directories are read-only.
func asTestUser(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		return
	}
	uid, gid := testUserIDs(t)
	// The test binary lives in a directory only we may enter: copy it.
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	bin := filepath.Join(dir, "logout.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	if err := errors.Join(err, dst.Close()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Dir, cmd.SysProcAttr = "/", asUser(uid, gid)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s as %s: %v\n%s", t.Name(), testUser, err, out)
	}
	t.Logf("as %s: passed", testUser)
}

// tree makes files, directories (names ending in /) and symlinks ("name -> target") under dir.
func tree(t *testing.T, dir string, entries ...string) {
	t.Helper()
	for _, e := range entries {
		name, target, link := strings.Cut(e, " -> ")
		p := filepath.Join(dir, name)
		var err error
		switch {
		case link:
			err = os.Symlink(target, p)
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		default:
			err = os.WriteFile(p, []byte("visitor data"), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestWipe(t *testing.T) {
	asTestUser(t)

	outside := t.TempDir()
	tree(t, outside, "secret", "keep/", "keep/file")
	for _, mode := range []os.FileMode{0o750, 0o500} {
		dir := filepath.Join(t.TempDir(), "session")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		tree(t, dir, ".vv", "home/", "home/.bashrc", "home/.cache/fontconfig/", "home/.cache/fontconfig/x.cache",
			"home/Downloads/", "home/Downloads/scan.pdf", "home/ro/", "home/ro/file", "home/ro/closed/", "home/ro/closed/file",
			"home/secret -> "+filepath.Join(outside, "secret"), "home/keep -> "+filepath.Join(outside, "keep"),
			"home/escape -> ../../../../../../"+outside, "home/vv -> ../.vv", "home/dangling -> /nonexistent")
		if err := syscall.Mkfifo(filepath.Join(dir, "home/fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name string
			mode os.FileMode
		}{{"home/ro/closed", 0}, {"home/ro", 0o500}, {"home/Downloads/scan.pdf", 0o400}, {".", mode}} {
			if err := os.Chmod(filepath.Join(dir, c.name), c.mode); err != nil {
				t.Fatal(err)
			}
		}

		if err := Wipe(dir); err != nil {
			t.Errorf("Wipe(%s) = %v, want nil", dir, err)
		}
		if left, err := os.ReadDir(dir); len(left) > 0 || err != nil {
			t.Errorf("os.ReadDir(%s) = %v, %v after Wipe, want nothing", dir, left, err)
		}
		if fi, err := os.Lstat(dir); err != nil || fi.Mode() != os.ModeDir|mode {
			t.Errorf("os.Lstat(%s) = %v, %v after Wipe, want mode %v", dir, fi.Mode(), err, os.ModeDir|mode)
		}
		for _, name := range []string{"secret", "keep/file"} {
			if b, err := os.ReadFile(filepath.Join(outside, name)); string(b) != "visitor data" {
				t.Errorf("os.ReadFile(%s) = %q, %v after Wipe, want the file outside the session untouched", name, b, err)
			}
		}
		os.Chmod(dir, 0o700)
	}
}

func TestWipeRefuses(t *testing.T) {
	outside := t.TempDir()
	tree(t, outside, "secret")
	link := filepath.Join(t.TempDir(), "session")
	os.Symlink(outside, link)
	if err := Wipe(link); err == nil {
		t.Errorf("Wipe(symlink to a directory) = nil, want an error")
	}
	if _, err := os.Stat(filepath.Join(outside, "secret")); err != nil {
		t.Errorf("Wipe(symlink to a directory) removed the target's file: %v", err)
	}
	if err := Wipe(filepath.Join(outside, "secret")); err == nil {
		t.Errorf("Wipe(a file) = nil, want an error")
	}
	if err := Wipe(filepath.Join(outside, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Wipe(missing) = %v, want fs.ErrNotExist", err)
	}
}
