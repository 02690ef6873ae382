package kickstart

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The RHEL 9 kickstart syntax Check knows, from pykickstart's RHEL9Handler
// (pykickstart/handlers/rhel9.py) and its command classes. An option is
// "name" (a flag) or "name=" (it takes a value). Check wants options
// written in full, as the generator writes them (pykickstart would also
// take an unambiguous prefix).
type command struct {
	opts     []string
	min, max int  // positional arguments
	multi    bool // may be given more than once
}

var commands = map[string]command{
	"text": {}, "graphical": {}, "cmdline": {}, "skipx": {}, "zerombr": {}, "cdrom": {},
	"lang":       {opts: []string{"addsupport="}, min: 1, max: 1},
	"keyboard":   {opts: []string{"vckeymap=", "xlayouts=", "switch="}, max: 1},
	"timezone":   {opts: []string{"utc", "isUtc", "nontp", "ntpservers="}, max: 1},
	"timesource": {opts: []string{"ntp-server=", "ntp-pool=", "ntp-disable", "nts"}, multi: true},
	"network": {multi: true, opts: []string{"bootproto=", "dhcpclass=", "device=", "essid=", "ethtool=", "gateway=", "hostname=",
		"ip=", "mtu=", "nameserver=", "netmask=", "nodns", "onboot=", "wepkey=", "notksdevice", "noipv4", "noipv6", "ipv6=",
		"activate", "nodefroute", "wpakey=", "bondslaves=", "bondopts=", "vlanid=", "ipv6gateway=", "teamslaves=", "teamconfig=",
		"interfacename=", "bridgeslaves=", "bridgeopts=", "no-activate", "bindto=", "ipv4-dns-search=", "ipv6-dns-search=",
		"ipv4-ignore-auto-dns", "ipv6-ignore-auto-dns"}},
	"rootpw":     {opts: []string{"iscrypted", "plaintext", "lock", "allow-ssh"}, max: 1},
	"user":       {multi: true, opts: []string{"name=", "groups=", "homedir=", "iscrypted", "plaintext", "password=", "shell=", "uid=", "lock", "gecos=", "gid="}},
	"group":      {multi: true, opts: []string{"name=", "gid="}},
	"sshkey":     {multi: true, opts: []string{"username="}, min: 1, max: 1},
	"selinux":    {opts: []string{"disabled", "enforcing", "permissive"}},
	"firewall":   {opts: []string{"disable", "disabled", "enable", "enabled", "ftp", "http", "smtp", "ssh", "port=", "trust=", "service=", "remove-service=", "use-system-defaults"}},
	"services":   {multi: true, opts: []string{"disabled=", "enabled="}},
	"clearpart":  {opts: []string{"all", "drives=", "initlabel", "linux", "none", "list=", "disklabel=", "cdl"}},
	"ignoredisk": {opts: []string{"drives=", "only-use="}},
	"bootloader": {opts: []string{"append=", "location=", "password=", "md5pass=", "driveorder=", "timeout=", "default=", "iscrypted",
		"boot-drive=", "leavebootorder", "extlinux", "disabled", "nombr"}},
	"reqpart": {opts: []string{"add-boot"}},
	"part": {multi: true, min: 1, max: 1, opts: []string{"asprimary", "fstype=", "type=", "grow", "maxsize=", "noformat", "onbiosdisk=",
		"ondisk=", "ondrive=", "onpart=", "usepart=", "recommended", "size=", "fsoptions=", "label=", "fsprofile=", "encrypted",
		"passphrase=", "escrowcert=", "backuppassphrase", "resize", "hibernation", "cipher=", "mkfsoptions=", "luks-version=",
		"pbkdf=", "pbkdf-memory=", "pbkdf-time=", "pbkdf-iterations="}},
	"volgroup": {multi: true, min: 1, max: 64, opts: []string{"noformat", "useexisting", "pesize=", "reserved-space=", "reserved-percent="}},
	"logvol": {multi: true, min: 1, max: 1, opts: []string{"name=", "vgname=", "fstype=", "grow", "maxsize=", "noformat", "percent=",
		"recommended", "size=", "useexisting", "fsoptions=", "fsprofile=", "encrypted", "passphrase=", "escrowcert=",
		"backuppassphrase", "label=", "resize", "hibernation", "cipher=", "thinpool", "thin", "poolname=", "chunksize=",
		"metadatasize=", "profile=", "cachesize=", "cachemode=", "cachepvs=", "mkfsoptions=", "luks-version=", "pbkdf=",
		"pbkdf-memory=", "pbkdf-time=", "pbkdf-iterations="}},
	"autopart": {opts: []string{"encrypted", "passphrase=", "escrowcert=", "backuppassphrase", "nolvm", "type=", "cipher=", "fstype=",
		"nohome", "noboot", "noswap", "luks-version=", "pbkdf=", "pbkdf-memory=", "pbkdf-time=", "pbkdf-iterations="}},
	"reboot": {opts: []string{"eject", "kexec"}}, "poweroff": {opts: []string{"eject", "kexec"}},
	"halt": {opts: []string{"eject", "kexec"}}, "shutdown": {opts: []string{"eject", "kexec"}},
	"firstboot": {opts: []string{"disable", "disabled", "enable", "enabled", "reconfig"}},
	"eula":      {opts: []string{"agreed", "agree", "accepted", "accept"}},
	"url":       {opts: []string{"url=", "mirrorlist=", "metalink=", "proxy=", "noverifyssl", "sslcacert=", "sslclientcert=", "sslclientkey="}},
	"harddrive": {opts: []string{"partition=", "dir="}},
	"repo": {multi: true, opts: []string{"name=", "baseurl=", "mirrorlist=", "metalink=", "cost=", "excludepkgs=", "includepkgs=", "proxy=",
		"noverifyssl", "install", "sslcacert=", "sslclientcert=", "sslclientkey=", "ignoregroups="}},
	"xconfig": {opts: []string{"defaultdesktop=", "startxonboot"}},
}

// rhel9Unchecked are RHEL 9's other commands: Check knows them, and does not
// check their options.
var rhel9Unchecked = []string{"auth", "authconfig", "authselect", "autostep", "btrfs", "device", "deviceprobe", "dmraid",
	"driverdisk", "module", "fcoe", "hmc", "install", "iscsi", "iscsiname", "liveimg", "logging", "mediacheck", "method",
	"mount", "multipath", "nfs", "nvdimm", "ostreecontainer", "ostreesetup", "partition", "raid", "realm", "rescue", "rhsm",
	"snapshot", "sshpw", "syspurpose", "updates", "vnc", "zfcp", "zipl"}

// sections and their header's options.
var sections = map[string][]string{
	"%pre":         {"erroronfail", "interpreter=", "log=", "logfile="},
	"%pre-install": {"erroronfail", "interpreter=", "log=", "logfile="},
	"%post":        {"erroronfail", "interpreter=", "log=", "logfile=", "nochroot"},
	"%onerror":     {"erroronfail", "interpreter=", "log=", "logfile="},
	"%traceback":   {"erroronfail", "interpreter=", "log=", "logfile="},
	"%packages": {"excludedocs", "ignoremissing", "default", "multilib", "nocore", "ignorebroken", "instLangs=", "inst-langs=",
		"timeout=", "retries=", "excludeWeakdeps", "exclude-weakdeps"},
	"%addon":    nil, // not validated by pykickstart either
	"%anaconda": nil,
}

// Check reports what in a kickstart file RHEL 9's installer would refuse
// or, for an unattended install, miss: unknown commands, unknown options
// and missing values, wrong positional arguments, a command given twice
// that takes one, sections not closed by %end, and the commands every
// unattended install needs. Each error says its line.
func Check(ks []byte) error {
	var errs []error
	bad := func(line int, format string, args ...any) {
		errs = append(errs, fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, args...)))
	}
	seen := map[string]int{}
	section, sectionLine := "", 0
	for i, raw := range splitLines(string(ks)) {
		n := i + 1
		line := strings.TrimSpace(raw)
		if section != "" {
			if line == "%end" {
				section = ""
				continue
			}
			if w := firstWord(line); !isSection(w) {
				continue // a section's body is the section's business
			} else {
				bad(sectionLine, "section %s does not end with %%end before %s on line %d", section, w, n)
				section = "" // and line n opens the next one
			}
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		words, err := split(line)
		if err != nil {
			bad(n, "%v", err)
			continue
		}
		if len(words) == 0 {
			continue
		}
		name := words[0]
		if strings.HasPrefix(name, "%") {
			switch {
			case name == "%include" || name == "%ksappend":
				if len(words) != 2 {
					bad(n, "%s takes one file", name)
				}
			case name == "%end":
				bad(n, "%%end outside a section")
			case isSection(name):
				section, sectionLine = name, n
				seen[name]++
				if opts := sections[name]; opts != nil {
					checkOptions(n, name, words[1:], opts, 0, 0, bad)
				}
			default:
				bad(n, "unknown section %s", name)
			}
			continue
		}
		c, known := commands[name]
		switch {
		case known:
			checkOptions(n, name, words[1:], c.opts, c.min, c.max, bad)
			if seen[name] > 0 && !c.multi {
				bad(n, "%s is given more than once", name)
			}
		case slices.Contains(rhel9Unchecked, name):
		default:
			bad(n, "%q is not a RHEL 9 kickstart command", name)
		}
		seen[name]++
	}
	if section != "" {
		bad(sectionLine, "section %s does not end with %%end", section)
	}
	for _, need := range [][]string{{"lang"}, {"keyboard"}, {"timezone"}, {"rootpw", "user"}, {"autopart", "part", "logvol"},
		{"%packages"}, {"bootloader", "autopart"}} {
		if !slices.ContainsFunc(need, func(c string) bool { return seen[c] > 0 }) {
			errs = append(errs, fmt.Errorf("missing: %s (an unattended install needs it)", strings.Join(need, " or ")))
		}
	}
	return errors.Join(errs...)
}

// isLineBreak reports whether r ends a line for pykickstart, which splits
// a file as Python's str.splitlines does.
func isLineBreak(r rune) bool {
	switch r {
	case '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029:
		return true
	}
	return false
}

// splitLines splits as the installer does (a \r\n is one break).
func splitLines(s string) []string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.Map(func(r rune) rune {
		if isLineBreak(r) {
			return '\n'
		}
		return r
	}, s)
	return strings.Split(s, "\n")
}

func isSection(word string) bool {
	_, ok := sections[word]
	return ok
}

func firstWord(line string) string {
	if f := strings.Fields(line); len(f) > 0 {
		return f[0]
	}
	return ""
}

// checkOptions checks a line's options and counts its positional words.
func checkOptions(n int, name string, args, opts []string, min, max int, bad func(int, string, ...any)) {
	pos := 0
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			pos++
			continue
		}
		opt, _, hasValue := strings.Cut(a[2:], "=")
		switch {
		case slices.Contains(opts, opt+"="):
			if !hasValue || strings.HasSuffix(a, "=") {
				bad(n, "%s: --%s needs a value (--%s=...)", name, opt, opt)
			}
		case slices.Contains(opts, opt):
			if hasValue {
				bad(n, "%s: --%s takes no value", name, opt)
			}
		default:
			bad(n, "%s: --%s is not an option of %s in RHEL 9", name, opt, name)
		}
	}
	switch {
	case pos < min:
		bad(n, "%s: wants %d argument(s) besides its options, has %d", name, min, pos)
	case pos > max:
		bad(n, "%s: takes at most %d argument(s) besides its options, has %d", name, max, pos)
	}
}

// split tokenises a line as kickstart does (shell quoting, # comments).
func split(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in, quote, escaped := false, byte(0), false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case c == '\\' && quote != '\'':
			escaped, in = true, true
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == '#' && !in:
			return out, nil
		case c == ' ' || c == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, errors.New("a quote is not closed")
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}
