// Package debpkg fetches Debian packages into a local cache and unpacks them
// into directory trees, without installing anything on the build host. Image
// builders (the kiosk initramfs, the tiny test VM) take files from there.
package debpkg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// ErrNoPackage is returned when apt knows no installable version of a package.
var ErrNoPackage = errors.New("no such Debian package")

// Cache keeps downloaded .deb files under Dir/debs and unpacked trees under
// Dir/roots. It is safe for concurrent use within one process; separate
// processes sharing a Dir should hold a lock around their builds.
type Cache struct {
	Dir string
	Log *slog.Logger

	mu sync.Mutex
}

// Package names one version of a package.
type Package struct {
	Name    string
	Version string
	Arch    string
}

func (p Package) String() string { return p.Name + "=" + p.Version }

// fileName is the cache's own name for the .deb: apt's file names escape the
// epoch colon, ours avoid it altogether.
func (p Package) fileName() string {
	return strings.NewReplacer(":", "_").Replace(fmt.Sprintf("%s_%s_%s.deb", p.Name, p.Version, p.Arch))
}

func (c *Cache) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// Candidate returns the version apt would install for name. A virtual or
// meta package is not resolved here: see Depends.
func (c *Cache) Candidate(ctx context.Context, name string) (Package, error) {
	out, err := run(ctx, "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return Package{}, fmt.Errorf("%w %q (is `apt-get update` done?): %v", ErrNoPackage, name, err)
	}
	p := Package{Name: name}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		}
		if sc.Text() == "" && p.Version != "" {
			break
		}
	}
	if p.Version == "" {
		return Package{}, fmt.Errorf("%w %q: apt-cache shows no version", ErrNoPackage, name)
	}
	return p, nil
}

var depRE = regexp.MustCompile(`^\s*(?:\|)?(?:Pre)?Depends: ([^<>\s]+)`)

// Depends returns the direct dependencies of name (first alternative only),
// for instance the versioned kernel package behind linux-image-amd64.
func (c *Cache) Depends(ctx context.Context, name string) ([]string, error) {
	out, err := run(ctx, "apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances", name)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrNoPackage, name, err)
	}
	return parseDepends(string(out)), nil
}

// parseDepends reads `apt-cache depends` output: the first alternative of
// each Depends or PreDepends line, skipping virtual packages (<name>).
func parseDepends(out string) []string {
	var deps []string
	alt := false // the line after "|Depends:" is an alternative of the same dependency
	for _, line := range strings.Split(out, "\n") {
		m := depRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if !alt {
			deps = append(deps, m[1])
		}
		alt = strings.HasPrefix(strings.TrimSpace(line), "|")
	}
	return deps
}

// Fetch returns the path of the cached .deb for the candidate version of
// name, downloading it first if needed.
func (c *Cache) Fetch(ctx context.Context, name string) (Package, string, error) {
	p, err := c.Candidate(ctx, name)
	if err != nil {
		return Package{}, "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	debs := filepath.Join(c.Dir, "debs")
	path := filepath.Join(debs, p.fileName())
	if _, err := os.Stat(path); err == nil {
		return p, path, nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return p, "", err
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return p, "", fmt.Errorf("download %s: %w", p, err)
	}
	defer os.RemoveAll(tmp)
	c.log().Info("downloading Debian package", "package", p.String())
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", p.String())
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return p, "", fmt.Errorf("apt-get download %s: %v: %s", p, err, lastLines(out, 3))
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(got) != 1 {
		return p, "", fmt.Errorf("apt-get download %s: expected one .deb, got %d", p, len(got))
	}
	if err := os.Rename(got[0], path); err != nil {
		return p, "", err
	}
	return p, path, nil
}

// Unpack returns a directory holding the unpacked contents of the candidate
// version of name, unpacking it on first use.
func (c *Cache) Unpack(ctx context.Context, name string) (Package, string, error) {
	p, deb, err := c.Fetch(ctx, name)
	if err != nil {
		return p, "", err
	}
	root, err := c.unpack(ctx, p, deb)
	return p, root, err
}

// UnpackFetched is Unpack for a package FetchAll returned, without asking
// apt again.
func (c *Cache) UnpackFetched(ctx context.Context, p Package) (string, error) {
	return c.unpack(ctx, p, filepath.Join(c.Dir, "debs", p.fileName()))
}

// unpack extracts into a temporary directory renamed into place, so
// concurrent callers (this process or another) never see half a tree.
func (c *Cache) unpack(ctx context.Context, p Package, deb string) (string, error) {
	root := filepath.Join(c.Dir, "roots", strings.TrimSuffix(p.fileName(), ".deb"))
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(root), ".unpack-")
	if err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, lastLines(out, 3))
	}
	if err := os.Rename(tmp, root); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(root); serr == nil {
			return root, nil // another caller was first
		}
		return "", err
	}
	return root, nil
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", name, err, lastLines(stderr.Bytes(), 3))
	}
	return out, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
