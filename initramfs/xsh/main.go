// Command xsh is the kiosk image's /bin/sh, and it is not a shell.
//
// Xorg starts the keymap compiler through `/bin/sh -c '"/usr/bin/xkbcomp"
// -w 1 ...'`, so the image needs something at /bin/sh. A real shell there
// would be one crash away from a prompt on the kiosk's console (u-root's
// init falls back to /bin/sh when its uinit exits). xsh only splits the -c
// string into words (quotes, no expansion, no redirection, no pipes) and
// executes it if the program is on its allow list; anything else exits 127.
package main

import (
	"fmt"
	"os"
	"syscall"

	"mvdan.cc/sh/v3/shell"
)

// allowed are the only programs xsh will run.
var allowed = map[string]bool{
	"/usr/bin/xkbcomp": true,
}

func main() {
	argv, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "xsh:", err)
		os.Exit(127)
	}
	err = syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintln(os.Stderr, "xsh:", err)
	os.Exit(127)
}

// parse turns `-c command` into the argv to run.
func parse(args []string) ([]string, error) {
	if len(args) != 2 || args[0] != "-c" {
		return nil, fmt.Errorf("not a shell: only -c with one allowed command")
	}
	words, err := shell.Fields(args[1], func(string) string { return "" })
	if err != nil {
		return nil, err
	}
	if len(words) == 0 || !allowed[words[0]] {
		return nil, fmt.Errorf("not allowed: %q", args[1])
	}
	return words, nil
}
