// Command undervdi-kickstart writes the kickstart file that installs an
// undervdi KVM server unattended, and checks kickstart files.
//
//	undervdi-kickstart generate [-o ks.cfg] site.toml   the ks.cfg for a site file
//	undervdi-kickstart check ks.cfg                     check a kickstart file against RHEL 9's syntax
//	undervdi-kickstart example                          print a documented site file
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"undervdi/kickstart"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `usage:
  undervdi-kickstart generate [-o ks.cfg] site.toml   write the ks.cfg for a site file
  undervdi-kickstart check ks.cfg...                  check kickstart files against RHEL 9's syntax
  undervdi-kickstart example                          print a documented site file
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "generate":
		fs := flag.NewFlagSet("generate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		out := fs.String("o", "", "write here (default: standard output)")
		if fs.Parse(args[1:]) != nil || fs.NArg() != 1 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		site, err := kickstart.Load(fs.Arg(0))
		if err != nil {
			fmt.Fprintf(stderr, "undervdi-kickstart: %v\n", err)
			return 1
		}
		ks, err := kickstart.Generate(site, strings.TrimSuffix(filepath.Base(fs.Arg(0)), filepath.Ext(fs.Arg(0))))
		if err == nil {
			err = kickstart.Check(ks)
		}
		if err != nil {
			fmt.Fprintf(stderr, "undervdi-kickstart: %v\n", err)
			return 1
		}
		if *out == "" {
			stdout.Write(ks)
			return 0
		}
		if err := os.WriteFile(*out, ks, 0o600); err != nil {
			fmt.Fprintf(stderr, "undervdi-kickstart: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "wrote %s: boot the EL9 installer with inst.ks=... pointing at it (docs/install.md)\n", *out)
		return 0
	case "check":
		if len(args) < 2 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		code := 0
		for _, path := range args[1:] {
			b, err := os.ReadFile(path)
			if err == nil {
				err = kickstart.Check(b)
			}
			if err != nil {
				var lines []string
				for _, e := range unjoin(err) {
					lines = append(lines, fmt.Sprintf("%s: %v", path, e))
				}
				fmt.Fprintln(stderr, strings.Join(lines, "\n"))
				code = 1
				continue
			}
			fmt.Fprintf(stdout, "%s: ok\n", path)
		}
		return code
	case "example":
		fmt.Fprint(stdout, kickstart.Example)
		return 0
	}
	fmt.Fprintf(stderr, "undervdi-kickstart: unknown command %q\n%s", args[0], usage)
	return 2
}

func unjoin(err error) []error {
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		return j.Unwrap()
	}
	return []error{err}
}
