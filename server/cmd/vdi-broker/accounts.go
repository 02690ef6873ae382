package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"undervdi/server/api"
	"undervdi/server/config"
)

// stdin is where passwd reads a password that does not come from a terminal.
var stdin io.Reader = os.Stdin

// accountsFile parses -config (and -accounts, which overrides it) and the
// verb's own flags; it returns the accounts file's path.
func accountsFile(name string, args []string, stderr io.Writer, flags func(*flag.FlagSet)) (string, *flag.FlagSet, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file (for api.accounts)")
	file := fs.String("accounts", "", "the accounts file (overrides the config)")
	if flags != nil {
		flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return "", nil, exitSetup
	}
	if *file != "" {
		return *file, fs, exitOK
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: config: %v\n", err)
		return "", nil, exitSetup
	}
	return cfg.API.Accounts, fs, exitOK
}

// passwd sets a user's password (and role), or removes the user. The
// broker reads the file again at the next request: no restart.
func passwd(args []string, stdout, stderr io.Writer) int {
	var role *string
	var remove *bool
	path, fs, code := accountsFile("passwd", args, stderr, func(fs *flag.FlagSet) {
		role = fs.String("role", "operator", "viewer (reads) or operator (also acts)")
		remove = fs.Bool("remove", false, "remove the user instead")
	})
	if path == "" {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: vdi-broker passwd [-config FILE] [-role viewer|operator] [-remove] USER")
		return exitSetup
	}
	user := fs.Arg(0)
	acc, err := api.ReadAccounts(path)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	if *remove {
		what, err := acc.Remove(user)
		if err == nil && what != "user" {
			err = fmt.Errorf("%s is a token: vdi-broker token revoke %s", user, user)
		}
		if err == nil {
			err = acc.Write(path)
		}
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "removed %s; their logins end at their next request\n", user)
		return exitOK
	}
	if err := api.CheckName(user); err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitSetup
	}
	pw, err := readPassword(stderr)
	if err == nil {
		err = acc.SetPassword(user, api.Role(*role), pw)
	}
	if err == nil {
		err = acc.Write(path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "%s (%s): password set in %s\n", user, *role, path)
	return exitOK
}

// readPassword asks twice on a terminal, or reads one line from stdin (a
// script, the demo).
func readPassword(stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", fmt.Errorf("the two passwords differ; nothing changed")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no password on stdin")
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// token adds, lists or revokes API tokens.
func token(args []string, stdout, stderr io.Writer) int {
	usage := "usage: vdi-broker token add [-role viewer|operator] [-expires 90d] NAME | list | revoke NAME"
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitSetup
	}
	sub, args := args[0], args[1:]
	var role, expires *string
	path, fs, code := accountsFile("token "+sub, args, stderr, func(fs *flag.FlagSet) {
		if sub == "add" {
			role = fs.String("role", "viewer", "viewer (reads) or operator (also acts)")
			expires = fs.String("expires", "", "the token stops working after this long (90d, 12h); empty: never")
		}
	})
	if path == "" {
		return code
	}
	acc, err := api.ReadAccounts(path)
	if err != nil {
		fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
		return exitError
	}
	switch {
	case sub == "add" && fs.NArg() == 1:
		ttl, err := parseDays(*expires)
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: -expires %q: %v\n", *expires, err)
			return exitSetup
		}
		secret, err := acc.AddToken(fs.Arg(0), api.Role(*role), ttl)
		if err == nil {
			err = acc.Write(path)
		}
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
			return exitError
		}
		fmt.Fprintln(stderr, "the token, shown this once (the broker keeps only its hash):")
		fmt.Fprintln(stdout, secret)
		return exitOK
	case sub == "revoke" && fs.NArg() == 1:
		what, err := acc.Remove(fs.Arg(0))
		if err == nil && what != "token" {
			err = fmt.Errorf("%s is a user: vdi-broker passwd -remove %s", fs.Arg(0), fs.Arg(0))
		}
		if err == nil {
			err = acc.Write(path)
		}
		if err != nil {
			fmt.Fprintf(stderr, "vdi-broker: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "revoked %s\n", fs.Arg(0))
		return exitOK
	case sub == "list" && fs.NArg() == 0:
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tROLE\tSINCE\tEXPIRES")
		for _, u := range acc.Users {
			fmt.Fprintf(tw, "%s\tuser\t%s\t%s\t-\n", u.Name, u.Role, u.Changed.Local().Format(time.DateOnly))
		}
		for _, t := range acc.Tokens {
			exp := "never"
			if !t.Expires.IsZero() {
				exp = t.Expires.Local().Format(time.DateTime)
				if time.Now().After(t.Expires) {
					exp += " (expired)"
				}
			}
			fmt.Fprintf(tw, "%s\ttoken\t%s\t%s\t%s\n", t.Name, t.Role, t.Created.Local().Format(time.DateOnly), exp)
		}
		tw.Flush()
		return exitOK
	}
	fmt.Fprintln(stderr, usage)
	return exitSetup
}

// parseDays is a duration that may also be in days ("90d").
func parseDays(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("a number of days such as 90d")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("a duration such as 90d or 12h")
	}
	return d, nil
}
