package debpkg

import (
	"fmt"
	"testing"
)

func TestParseDepends(t *testing.T) {
	out := `linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
qemu-guest-agent
  PreDepends: init-system-helpers
 |Depends: libc6
  Depends: libc6-udeb
  Depends: libglib2.0-0
  Depends: <debconf-2.0>
    cdebconf
`
	got := parseDepends(out)
	want := []string{"linux-image-6.1.0-56-amd64", "init-system-helpers", "libc6", "libglib2.0-0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseDepends() = %v, want %v", got, want)
	}
}

func TestFileName(t *testing.T) {
	p := Package{Name: "libfoo", Version: "1:2.3-4", Arch: "amd64"}
	if got, want := p.fileName(), "libfoo_1_2.3-4_amd64.deb"; got != want {
		t.Errorf("fileName() = %q, want %q", got, want)
	}
}
