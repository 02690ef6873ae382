package initramfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// sysroot is a merged view of unpacked Debian package trees, as if they were
// installed together on a merged-/usr system: /lib/x, /bin/x and /sbin/x
// are /usr/lib/x, /usr/bin/x and /usr/sbin/x.
type sysroot struct {
	entries map[string]entry // by merged absolute path
}

type entry struct {
	host string      // the file in the unpacked tree
	orig string      // its absolute path as the package ships it
	mode fs.FileMode // from Lstat
	link string      // symlink target, if a symlink
	pkg  string
}

// merged maps a path to where it lives on a merged-/usr system.
func merged(p string) string {
	p = path.Clean("/" + p)
	for _, d := range []string{"/lib", "/lib64", "/bin", "/sbin"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "/usr" + p
		}
	}
	return p
}

// addTree adds every file of one unpacked package; the first package to
// ship a path keeps it.
func (s *sysroot) addTree(pkg, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		orig := "/" + filepath.ToSlash(rel)
		m := merged(orig)
		if _, ok := s.entries[m]; ok {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{host: p, orig: orig, mode: info.Mode(), pkg: pkg}
		if info.Mode()&fs.ModeSymlink != 0 {
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		s.entries[m] = e
		return nil
	})
}

// resolve follows symlinks to a regular file and returns its entry.
func (s *sysroot) resolve(p string) (entry, error) {
	p = merged(p)
	for hops := 0; hops < 40; hops++ {
		e, ok := s.entries[p]
		if !ok {
			// A directory symlink on the way (rare in Debian packages) is
			// not followed: report the path as missing.
			return entry{}, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
		}
		if e.link == "" {
			return e, nil
		}
		t := e.link
		if !path.IsAbs(t) {
			t = path.Join(path.Dir(e.orig), t)
		}
		p = merged(t)
	}
	return entry{}, fmt.Errorf("%s: too many levels of symbolic links", p)
}

// read returns the content of the file at p, following links.
func (s *sysroot) read(p string) ([]byte, error) {
	e, err := s.resolve(p)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(e.host)
}

// under returns the merged paths of the files below dir, sorted.
func (s *sysroot) under(dir string) []string {
	dir = strings.TrimSuffix(merged(dir), "/") + "/"
	var out []string
	for p := range s.entries {
		if strings.HasPrefix(p, dir) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// libDirs are where the dynamic loader looks by default on Debian amd64
// (merged: /lib/x86_64-linux-gnu is /usr/lib/x86_64-linux-gnu).
var libDirs = []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib"}

// errMissingLib is returned when a shared library some binary needs is in
// none of the fetched packages.
var errMissingLib = errors.New("shared library not found in the fetched packages")

// elfDeps returns what the ELF file at merged path p needs at run time:
// its program interpreter and its DT_NEEDED libraries, found the way ld.so
// would (DT_RPATH/DT_RUNPATH with $ORIGIN, then the default directories).
// A file that is not ELF needs nothing.
func (s *sysroot) elfDeps(p string) ([]string, error) {
	e, err := s.resolve(p)
	if err != nil {
		return nil, err
	}
	if !isELF(e.host) {
		return nil, nil
	}
	f, err := elf.Open(e.host)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	var deps []string
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: reading PT_INTERP: %w", p, err)
			}
			deps = append(deps, merged(strings.TrimRight(string(b), "\x00")))
		}
	}
	needed, err := f.DynString(elf.DT_NEEDED)
	if err != nil {
		return deps, nil // static, or no dynamic section
	}
	var search []string
	for _, tag := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		paths, _ := f.DynString(tag)
		for _, rp := range paths {
			for _, d := range strings.Split(rp, ":") {
				d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", "$ORIGIN"), "$ORIGIN", path.Dir(p))
				search = append(search, merged(d))
			}
		}
	}
	search = append(search, libDirs...)
	for _, lib := range needed {
		found := ""
		for _, d := range search {
			if _, err := s.resolve(path.Join(d, lib)); err == nil {
				found = path.Join(d, lib)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%w: %s (needed by %s)", errMissingLib, lib, p)
		}
		deps = append(deps, found)
	}
	return deps, nil
}

// isELF tells an ELF file by its magic number.
func isELF(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && string(magic) == elf.ELFMAG
}
