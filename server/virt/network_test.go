package virt

import (
	"strings"
	"testing"

	"github.com/digitalocean/go-libvirt"
)

// A redefinition carries the existing object's UUID (libvirt refuses a
// definition of an existing name with another), replacing any it had.
func TestWithUUID(t *testing.T) {
	id := libvirt.UUID{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x47, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00}
	for _, in := range []string{
		`<filter name='f' chain='root'><rule action='drop' direction='inout'/></filter>`,
		`<filter name='f' chain='root'><uuid>00000000-0000-4000-8000-000000000000</uuid></filter>`,
	} {
		out, err := withUUID(in, id)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(out, "<uuid>") != 1 || !strings.Contains(out, "<uuid>11223344-5566-4788-99aa-bbccddeeff00</uuid>") {
			t.Errorf("withUUID(%s) = %s", in, out)
		}
	}
	if n, err := rootName(`<filter name='f-ipv4' chain='ipv4'/>`, "filter"); err != nil || n != "f-ipv4" {
		t.Errorf("rootName = %q, %v", n, err)
	}
	if _, err := rootName(`<network><name>n</name></network>`, "filter"); err == nil {
		t.Errorf("rootName of a network as a filter: no error")
	}
	s, err := networkShape(`<network><name>n</name><bridge name='b0'/><ip address='10.0.0.1' prefix='24'/></network>`)
	if err != nil || s != (shape{"n", "b0", "10.0.0.1/24"}) {
		t.Errorf("networkShape = %+v, %v", s, err)
	}
}
