// Package kmod reads Linux kernel module metadata (the .modinfo section) from
// a distribution's module tree and writes the index files (modules.dep,
// modules.alias) that module loaders expect. It lets an image carry a chosen
// subset of a kernel's modules without running depmod on the build host.
package kmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnknownModule is returned when a requested module is neither in the tree
// nor built into the kernel.
var ErrUnknownModule = errors.New("unknown kernel module")

// Module is one loadable module found in a module tree.
type Module struct {
	Name    string   // canonical name, as the kernel knows it (underscores)
	Path    string   // slash-separated path relative to the tree root, e.g. kernel/drivers/block/virtio_blk.ko
	Depends []string // names of modules that must be loaded first
	Aliases []string // modalias patterns, e.g. pci:v00001AF4d00001001sv*sd*bc*sc*i*
}

// Tree is the set of modules of one kernel version.
type Tree struct {
	Modules map[string]*Module
	Builtin map[string]bool // modules compiled into the kernel (modules.builtin)
}

// Canonical returns the kernel's name for a module: dashes become underscores.
func Canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

// Load is Scan for a kernel's whole module directory when only some
// modules matter: it indexes the tree by file name and reads the .modinfo
// of names and of what they depend on, not of every module.
func Load(fsys fs.FS, names ...string) (*Tree, error) {
	paths := map[string]string{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[nameOf(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	t := &Tree{Modules: map[string]*Module{}, Builtin: readBuiltin(fsys)}
	queue := append([]string(nil), names...)
	for len(queue) > 0 {
		name := Canonical(queue[0])
		queue = queue[1:]
		p, ok := paths[name]
		if _, done := t.Modules[name]; done || !ok {
			continue // unknown names are reported by Closure
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, err
		}
		m, err := parseModule(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		m.Path = p
		if m.Name == "" {
			m.Name = name
		}
		t.Modules[m.Name] = m
		queue = append(queue, m.Depends...)
	}
	return t, nil
}

// ReadIndex reads back the modules.dep and modules.alias that WriteDep and
// WriteAlias wrote into fsys (a /lib/modules/<release> directory), and
// modules.builtin: the tree a loader on the running image needs, without
// opening a module.
func ReadIndex(fsys fs.FS) (*Tree, error) {
	t := &Tree{Modules: map[string]*Module{}, Builtin: readBuiltin(fsys)}
	dep, err := fs.ReadFile(fsys, "modules.dep")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(dep), "\n") {
		file, deps, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		m := &Module{Name: nameOf(file), Path: file}
		for _, d := range strings.Fields(deps) {
			m.Depends = append(m.Depends, nameOf(d))
		}
		t.Modules[m.Name] = m
	}
	alias, err := fs.ReadFile(fsys, "modules.alias")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(alias), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			continue
		}
		if m, ok := t.Modules[Canonical(f[2])]; ok {
			m.Aliases = append(m.Aliases, f[1])
		}
	}
	return t, nil
}

// nameOf is a module's name from its file: kernel/drivers/hid/hid-generic.ko
// is hid_generic.
func nameOf(file string) string { return Canonical(strings.TrimSuffix(path.Base(file), ".ko")) }

// readBuiltin reads modules.builtin, if there is one.
func readBuiltin(fsys fs.FS) map[string]bool {
	builtin := map[string]bool{}
	if b, err := fs.ReadFile(fsys, "modules.builtin"); err == nil {
		for _, line := range strings.Fields(string(b)) {
			builtin[nameOf(line)] = true
		}
	}
	return builtin
}

// parseModule reads the .modinfo section of a module image.
func parseModule(image []byte) (*Module, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo: %w", err)
	}
	return parseModinfo(data), nil
}

// parseModinfo decodes NUL-separated key=value records.
func parseModinfo(data []byte) *Module {
	m := &Module{}
	for _, rec := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(rec), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			m.Name = Canonical(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					m.Depends = append(m.Depends, Canonical(d))
				}
			}
		case "alias":
			m.Aliases = append(m.Aliases, v)
		}
	}
	return m
}

// Closure returns the named modules and everything they depend on,
// dependencies first. Names of built-in modules are accepted and skipped.
func (t *Tree) Closure(names ...string) ([]*Module, error) {
	var out []*Module
	seen := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		name = Canonical(name)
		if seen[name] {
			return nil
		}
		m, ok := t.Modules[name]
		if !ok {
			if t.Builtin[name] {
				seen[name] = true
				return nil
			}
			if len(stack) > 0 {
				return fmt.Errorf("%w %q (needed by %s)", ErrUnknownModule, name, strings.Join(stack, " <- "))
			}
			return fmt.Errorf("%w %q", ErrUnknownModule, name)
		}
		seen[name] = true
		for _, d := range m.Depends {
			if err := visit(d, append([]string{name}, stack...)); err != nil {
				return err
			}
		}
		out = append(out, m)
		return nil
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, visit(n, nil))
	}
	return out, errors.Join(errs...)
}

// Match returns the names of modules with an alias pattern matching modalias
// (as found in /sys/devices/.../modalias), sorted.
func (t *Tree) Match(modalias string) []string {
	var out []string
	for name, m := range t.Modules {
		for _, a := range m.Aliases {
			if ok, _ := filepath.Match(a, modalias); ok {
				out = append(out, name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// WriteDep writes modules.dep for mods in the format kmod and u-root's
// kmodule read: "path: dep-path dep-path ...", each module's full transitive
// dependency list, nearest first.
func WriteDep(w io.Writer, t *Tree, mods []*Module) error {
	for _, m := range mods {
		deps, err := t.Closure(m.Name)
		if err != nil {
			return err
		}
		var paths []string
		for i := len(deps) - 2; i >= 0; i-- { // last is m itself
			paths = append(paths, deps[i].Path)
		}
		if _, err := fmt.Fprintf(w, "%s:%s\n", m.Path, joinPrefixed(paths)); err != nil {
			return err
		}
	}
	return nil
}

// WriteAlias writes modules.alias for mods: "alias <pattern> <name>".
func WriteAlias(w io.Writer, mods []*Module) error {
	for _, m := range mods {
		for _, a := range m.Aliases {
			if _, err := fmt.Fprintf(w, "alias %s %s\n", a, m.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

func joinPrefixed(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return " " + strings.Join(s, " ")
}
