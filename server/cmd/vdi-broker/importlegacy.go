package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/google/renameio/v2"

	"undervdi/server/config"
)

// importLegacy turns the original's /etc/vm_manager.conf into a broker
// configuration: on stdout, or into -o FILE (never over an existing one).
// What it could not carry over is said on stderr, and in the file.
func importLegacy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("import-legacy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the configuration to this file instead of stdout (it must not exist)")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: vdi-broker import-legacy [-o FILE] /etc/vm_manager.conf")
		return exitSetup
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitSetup
	}
	defer f.Close()
	imp, err := config.ImportLegacy(f, interfaceAddr)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %s: %v\n", fs.Arg(0), err)
		return exitSetup
	}
	for _, n := range imp.Notes {
		fmt.Fprintf(stderr, "vdi-broker: import-legacy: %s\n", n)
	}
	if *out == "" {
		io.WriteString(stdout, imp.TOML)
		return exitOK
	}
	if _, err := os.Lstat(*out); err == nil {
		fmt.Fprintf(stderr, "vdi-broker: %s exists: not overwritten\n", *out)
		return exitSetup
	}
	if err := renameio.WriteFile(*out, []byte(imp.TOML), 0o640); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stderr, "vdi-broker: wrote %s; check it with vdi-broker check -config %s\n", *out, *out)
	return exitOK
}

// interfaceAddr is the first IPv4 address of a network interface of this
// machine.
func interfaceAddr(name string) (string, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return "", err
	}
	addrs, err := iface.Addrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("it has no IPv4 address")
}
