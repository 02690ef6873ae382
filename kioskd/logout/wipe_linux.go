package logout

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"syscall"
)

// Wipe removes everything inside dir, the session's tmpfs, and keeps dir
// itself with its mode and owner. It never follows a symbolic link (it
// removes the link, not its target), makes the visitor's read-only
// directories writable before emptying them, leaves other filesystems
// mounted below dir alone (reporting them), and checks dir is empty.
func Wipe(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("logout: wipe: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("logout: wipe %s: not a directory", dir)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("logout: wipe: %w", err)
	}
	defer r.Close()
	var errs []error
	if mode := fi.Mode().Perm(); mode&0o700 != 0o700 {
		errs = append(errs, r.Chmod(".", mode|0o700), emptyDir(r, ".", device(fi)), r.Chmod(".", fi.Mode()))
	} else {
		errs = append(errs, emptyDir(r, ".", device(fi)))
	}
	if left, err := fs.ReadDir(r.FS(), "."); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		names := make([]string, len(left))
		for i, e := range left {
			names[i] = e.Name()
		}
		errs = append(errs, fmt.Errorf("still holds %q", names))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("logout: wipe %s: %w", dir, err)
	}
	return nil
}

// emptyDir removes everything in directory name of r, which is on device dev.
func emptyDir(r *os.Root, name string, dev uint64) error {
	entries, err := fs.ReadDir(r.FS(), name)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, e := range entries {
		errs = append(errs, remove(r, path.Join(name, e.Name()), dev))
	}
	return errors.Join(errs...)
}

// remove removes name from r, and if it is a directory on device dev (not
// a mount point) everything in it first.
func remove(r *os.Root, name string, dev uint64) error {
	fi, err := r.Lstat(name)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if device(fi) != dev {
			return fmt.Errorf("%s: a mount point, not wiped", name)
		}
		if fi.Mode().Perm()&0o700 != 0o700 {
			if err := r.Chmod(name, fi.Mode().Perm()|0o700); err != nil {
				return err
			}
		}
		if err := emptyDir(r, name, dev); err != nil {
			return err
		}
	}
	return r.Remove(name)
}

// device is the device fi's file lives on.
func device(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Dev
	}
	return 0
}
