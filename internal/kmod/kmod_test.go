package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
)

func tree() *Tree {
	mod := func(name, path string, deps ...string) *Module {
		return &Module{Name: name, Path: path, Depends: deps}
	}
	return &Tree{
		Modules: map[string]*Module{
			"virtio_blk":            mod("virtio_blk", "kernel/drivers/block/virtio_blk.ko", "virtio", "virtio_ring"),
			"virtio_pci":            mod("virtio_pci", "kernel/drivers/virtio/virtio_pci.ko", "virtio_pci_modern_dev", "virtio", "virtio_ring"),
			"virtio_ring":           mod("virtio_ring", "kernel/drivers/virtio/virtio_ring.ko", "virtio"),
			"virtio":                mod("virtio", "kernel/drivers/virtio/virtio.ko"),
			"virtio_pci_modern_dev": mod("virtio_pci_modern_dev", "kernel/drivers/virtio/virtio_pci_modern_dev.ko"),
			"broken":                mod("broken", "kernel/broken.ko", "missing_dep"),
		},
		Builtin: map[string]bool{"crc32c": true},
	}
}

func names(ms []*Module) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return strings.Join(s, " ")
}

func TestClosure(t *testing.T) {
	got, err := tree().Closure("virtio-blk", "crc32c")
	if err != nil {
		t.Fatal(err)
	}
	if want := "virtio virtio_ring virtio_blk"; names(got) != want {
		t.Errorf("Closure(virtio-blk) = %q, want %q (dependencies first, builtins skipped)", names(got), want)
	}
	if _, err := tree().Closure("nosuch"); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("Closure(nosuch) = %v, want ErrUnknownModule", err)
	}
	if _, err := tree().Closure("broken"); err == nil || !strings.Contains(err.Error(), "missing_dep") || !strings.Contains(err.Error(), "needed by broken") {
		t.Errorf("Closure(broken) = %v, want it to name the missing dependency and who needs it", err)
	}
}

func TestWriteDep(t *testing.T) {
	tr := tree()
	mods, _ := tr.Closure("virtio_pci", "virtio_blk")
	var b bytes.Buffer
	if err := WriteDep(&b, tr, mods); err != nil {
		t.Fatal(err)
	}
	want := `kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
`
	if b.String() != want {
		t.Errorf("WriteDep() =\n%s\nwant\n%s", b.String(), want)
	}
}

func TestParseModinfo(t *testing.T) {
	data := []byte("license=GPL\x00depends=virtio,virtio-ring\x00alias=pci:v00001AF4d00001001sv*sd*bc*sc*i*\x00name=virtio_blk\x00\x00junk")
	m := parseModinfo(data)
	if m.Name != "virtio_blk" || fmt.Sprint(m.Depends) != "[virtio virtio_ring]" || len(m.Aliases) != 1 {
		t.Errorf("parseModinfo() = %+v", m)
	}
	tr := &Tree{Modules: map[string]*Module{"virtio_blk": m}}
	if got := tr.Match("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"); fmt.Sprint(got) != "[virtio_blk]" {
		t.Errorf("Match() = %v, want [virtio_blk]", got)
	}
	if got := tr.Match("pci:v00008086d00001234sv0sd0bc0sc0i0"); len(got) != 0 {
		t.Errorf("Match(other device) = %v, want none", got)
	}
}

func FuzzParseModule(f *testing.F) {
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseModule(b)
		parseModinfo(b)
	})
}

// TestReadIndex reads back what WriteDep and WriteAlias wrote: the image's
// loader sees the dependencies and aliases the builder chose.
func TestReadIndex(t *testing.T) {
	tr := tree()
	tr.Modules["virtio_blk"].Aliases = []string{"virtio:d00000002v*"}
	mods, _ := tr.Closure("virtio_pci", "virtio_blk")
	var dep, alias bytes.Buffer
	if err := WriteDep(&dep, tr, mods); err != nil {
		t.Fatal(err)
	}
	if err := WriteAlias(&alias, mods); err != nil {
		t.Fatal(err)
	}
	back, err := ReadIndex(fstest.MapFS{
		"modules.dep":     {Data: dep.Bytes()},
		"modules.alias":   {Data: alias.Bytes()},
		"modules.builtin": {Data: []byte("kernel/lib/crc32c.ko\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := back.Closure("virtio-pci", "virtio_blk", "crc32c")
	if err != nil {
		t.Fatal(err)
	}
	// Dependencies first (modules.dep lists each module's whole closure,
	// nearest first, which Closure walks as it does .modinfo's).
	if want := "virtio virtio_ring virtio_pci_modern_dev virtio_pci virtio_blk"; names(got) != want {
		t.Errorf("Closure after ReadIndex = %q, want %q", names(got), want)
	}
	if got[0].Path != "kernel/drivers/virtio/virtio.ko" {
		t.Errorf("path = %q", got[0].Path)
	}
	if got := back.Match("virtio:d00000002v00001AF4"); fmt.Sprint(got) != "[virtio_blk]" {
		t.Errorf("Match after ReadIndex = %v, want [virtio_blk]", got)
	}
	if _, err := ReadIndex(fstest.MapFS{}); err == nil {
		t.Errorf("ReadIndex without index files gave no error")
	}
}
