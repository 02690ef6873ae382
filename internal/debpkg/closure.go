package debpkg

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Closure returns roots and every package they depend on (Depends and
// Pre-Depends; the first alternative that is not pruned; a virtual package
// by its first provider), sorted by name. Packages in prune, and what only
// they would pull in, are left out: an image builder takes files, not
// whole installations, and prunes what it knows it does not need.
func (c *Cache) Closure(ctx context.Context, roots []string, prune map[string]bool) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, roots...)
	out, err := run(ctx, "apt-cache", args...)
	if err != nil {
		return nil, fmt.Errorf("%w among %s: %v", ErrNoPackage, strings.Join(roots, " "), err)
	}
	g := parseGraph(out)
	seen := map[string]bool{}
	var walk func(name string) error
	walk = func(name string) error {
		if seen[name] {
			return nil
		}
		deps, ok := g.deps[name]
		if !ok {
			return fmt.Errorf("%w %q", ErrNoPackage, name)
		}
		seen[name] = true
		for _, alts := range deps {
			pick := ""
			for _, a := range alts {
				if prune[a] {
					continue
				}
				if provs, virtual := g.providers[a]; virtual {
					for _, p := range provs {
						if !prune[p] {
							pick = p
							break
						}
					}
				} else {
					pick = a
				}
				if pick != "" {
					break
				}
			}
			if pick == "" {
				continue // every alternative pruned, or a virtual nobody provides
			}
			if err := walk(pick); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := walk(r); err != nil {
			return nil, err
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// graph is `apt-cache depends --recurse` output: for each package its
// dependencies, each a list of alternatives; for each virtual package
// (<name>) the packages providing it.
type graph struct {
	deps      map[string][][]string
	providers map[string][]string
}

func parseGraph(out []byte) *graph {
	g := &graph{deps: map[string][][]string{}, providers: map[string][]string{}}
	var cur string    // the package whose dependencies are listed
	var virt string   // the virtual dependency whose providers follow
	var open []string // alternatives of the dependency being read
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case line == "":
		case !strings.HasPrefix(line, " "): // a package heading
			cur, virt = trimmed, ""
			if !strings.HasPrefix(cur, "<") {
				if _, ok := g.deps[cur]; !ok {
					g.deps[cur] = nil
				}
			}
		case strings.HasPrefix(line, "    "): // a provider of the virtual dependency above
			if virt != "" {
				g.providers[virt] = append(g.providers[virt], trimmed)
			}
		default:
			kind, name, ok := strings.Cut(strings.TrimPrefix(trimmed, "|"), ": ")
			if !ok || (kind != "Depends" && kind != "PreDepends") || strings.HasPrefix(cur, "<") {
				virt = ""
				continue
			}
			virt = ""
			if strings.HasPrefix(name, "<") {
				name = strings.Trim(name, "<>")
				virt = name
				if _, ok := g.providers[name]; !ok {
					g.providers[name] = []string{}
				}
			}
			open = append(open, name)
			if !strings.HasPrefix(trimmed, "|") { // "|" means the next line is another alternative
				g.deps[cur] = append(g.deps[cur], open)
				open = nil
			}
		}
	}
	return g
}

// FetchAll makes sure the candidate versions of names are in the cache,
// downloading the missing ones with one apt-get call, and returns them in
// the order given.
func (c *Cache) FetchAll(ctx context.Context, names []string) ([]Package, error) {
	pkgs, err := c.candidates(ctx, names)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	debs := filepath.Join(c.Dir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	var missing []string
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(debs, p.fileName())); err != nil {
			missing = append(missing, p.String())
		}
	}
	if len(missing) == 0 {
		return pkgs, nil
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	c.log().Info("downloading Debian packages", "count", len(missing))
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q", "-o", "APT::Sandbox::User=root"}, missing...)...)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download (%d packages): %v: %s", len(missing), err, lastLines(out, 3))
	}
	for _, p := range pkgs {
		dst := filepath.Join(debs, p.fileName())
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		got, _ := filepath.Glob(filepath.Join(tmp, p.Name+"_*.deb"))
		if len(got) != 1 {
			return nil, fmt.Errorf("apt-get download %s: expected one .deb, got %d", p, len(got))
		}
		if err := os.Rename(got[0], dst); err != nil {
			return nil, err
		}
	}
	return pkgs, nil
}

// candidates is Candidate for many names with one apt-cache call.
func (c *Cache) candidates(ctx context.Context, names []string) ([]Package, error) {
	out, err := run(ctx, "apt-cache", append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil {
		return nil, fmt.Errorf("%w among %d packages (is `apt-get update` done?): %v", ErrNoPackage, len(names), err)
	}
	found := map[string]Package{}
	for _, stanza := range strings.Split(string(out), "\n\n") {
		var p Package
		for _, line := range strings.Split(stanza, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			switch k {
			case "Package":
				p.Name = v
			case "Version":
				p.Version = v
			case "Architecture":
				p.Arch = v
			}
		}
		if p.Name != "" && p.Version != "" {
			if _, dup := found[p.Name]; !dup {
				found[p.Name] = p
			}
		}
	}
	pkgs := make([]Package, 0, len(names))
	for _, n := range names {
		p, ok := found[n]
		if !ok {
			return nil, fmt.Errorf("%w %q: apt-cache shows no version", ErrNoPackage, n)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

// OpenLocked makes a builder's cache directory and takes an exclusive lock
// on it, so builds in several processes (parallel test binaries) wait for
// one another and share the result. Packages go to dir/debs. Call unlock
// when the build is done.
func OpenLocked(dir string, log *slog.Logger) (c *Cache, unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, nil, err
	}
	return &Cache{Dir: filepath.Join(dir, "debs"), Log: log}, func() { f.Close() }, nil
}

// kernelMeta is the Debian package whose first dependency is the current kernel.
const kernelMeta = "linux-image-amd64"

// Kernel fetches and unpacks Debian's current kernel package and returns
// it, its unpacked tree and the kernel's release (e.g. 6.1.0-56-amd64).
func (c *Cache) Kernel(ctx context.Context) (Package, string, string, error) {
	deps, err := c.Depends(ctx, kernelMeta)
	if err != nil || len(deps) == 0 {
		return Package{}, "", "", fmt.Errorf("finding the kernel package behind %s: %v", kernelMeta, err)
	}
	p, root, err := c.Unpack(ctx, deps[0])
	if err != nil {
		return p, "", "", err
	}
	return p, root, strings.TrimPrefix(p.Name, "linux-image-"), nil
}
