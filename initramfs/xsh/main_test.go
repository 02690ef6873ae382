package main

import (
	"fmt"
	"testing"
)

func TestParse(t *testing.T) {
	// The command Xorg 21 runs (xkb/ddxLoad.c).
	xorg := `"/usr/bin/xkbcomp" -w 1 "-R/usr/share/X11/xkb" -xkm "-" -em1 "The XKEYBOARD keymap compiler (xkbcomp) reports:" -emp "> " -eml "Errors from xkbcomp are not fatal to the X server" "/var/lib/xkb/server-0D2A.xkm"`
	got, err := parse([]string{"-c", xorg})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/xkbcomp", "-w", "1", "-R/usr/share/X11/xkb", "-xkm", "-", "-em1",
		"The XKEYBOARD keymap compiler (xkbcomp) reports:", "-emp", "> ", "-eml",
		"Errors from xkbcomp are not fatal to the X server", "/var/lib/xkb/server-0D2A.xkm"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("parse = %q\nwant %q", got, want)
	}
	for _, bad := range [][]string{
		nil,                           // an interactive shell
		{"-i"},                        // likewise
		{"-c", "/usr/bin/busybox sh"}, // not on the list
		{"-c", "xkbcomp -w 1"},        // not by its full path
		{"-c", "$(/usr/bin/xkbcomp)"}, // no expansion
		{"-c", "/usr/bin/xkbcomp", "extra"},
	} {
		if got, err := parse(bad); err == nil {
			t.Errorf("parse(%q) = %q, want an error", bad, got)
		}
	}
}
