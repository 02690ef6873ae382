package pxe

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
)

// ServerInstall is a server install over the network: the EL9 installer's
// kernel and initrd (from the operator's installation media) and the
// generated kickstart, served to the machines being installed, with the
// files the kickstart's %post fetches.
//
// Dir holds InstallKernel, InstallInitrd and InstallKickstart, and the
// directory InstallFiles (vdi-broker, undervdi-pxe, and pxe/ with the
// kiosk image's network-boot files, for the kickstart's install.url).
type ServerInstall struct {
	Dir string
	// Repo, if set, is the installer's inst.repo (where it finds EL9's
	// packages and its own runtime), for a kickstart without url.
	Repo string
	// Cmdline is more for the installer's kernel command line
	// (console=ttyS0 for a server with a serial console, say).
	Cmdline string
	// MACs are the machines that boot the installer; every other client
	// boots the kiosk image. None: every client boots the installer (an
	// install network of its own).
	MACs []net.HardwareAddr
}

// What a server install serves, under InstallPrefix.
const (
	InstallScript    = "install.ipxe"
	InstallPrefix    = "/install/"
	InstallKernel    = "vmlinuz"
	InstallInitrd    = "initrd.img"
	InstallKickstart = "ks.cfg"
	InstallFiles     = "undervdi" // served at /undervdi/
)

// tagInstall marks the DHCP clients that boot the installer.
const tagInstall = "install"

// InstallURL is the address of the install boot script.
func (c Config) InstallURL() string {
	c = c.withDefaults()
	return fmt.Sprintf("http://%s/%s", net.JoinHostPort(c.Server.String(), fmt.Sprint(c.HTTPPort)), InstallScript)
}

// KickstartURL is where the installer fetches the kickstart (inst.ks).
func (c Config) KickstartURL() string {
	c = c.withDefaults()
	return fmt.Sprintf("http://%s%s%s", net.JoinHostPort(c.Server.String(), fmt.Sprint(c.HTTPPort)), InstallPrefix, InstallKickstart)
}

// FilesURL is the directory the kickstart's install.url names.
func (c Config) FilesURL() string {
	c = c.withDefaults()
	return fmt.Sprintf("http://%s/%s/", net.JoinHostPort(c.Server.String(), fmt.Sprint(c.HTTPPort)), InstallFiles)
}

// InstallIPXE is the iPXE script that boots the installer with the
// kickstart: BOOTIF names the card the server booted from, which the
// installer then uses.
func (c Config) InstallIPXE() string {
	var b strings.Builder
	b.WriteString("#!ipxe\n# undervdi: install a KVM server (EL9) with its kickstart\n")
	fmt.Fprintf(&b, "kernel %s initrd=%s inst.ks=%s", strings.TrimPrefix(InstallPrefix, "/")+InstallKernel, InstallInitrd, c.KickstartURL())
	if c.Install.Repo != "" {
		fmt.Fprintf(&b, " inst.repo=%s", c.Install.Repo)
	}
	b.WriteString(" inst.text rd.neednet=1")
	if f := strings.Fields(c.Install.Cmdline); len(f) > 0 {
		b.WriteString(" " + strings.Join(f, " "))
	}
	b.WriteString(" BOOTIF=01-${netX/mac:hexhyp}\n")
	fmt.Fprintf(&b, "initrd %s%s\nboot\n", strings.TrimPrefix(InstallPrefix, "/"), InstallInitrd)
	return b.String()
}

// checkInstall reports what a server install lacks.
func (c Config) checkInstall() []error {
	in := c.Install
	var errs []error
	if err := checkPath("install", in.Dir, true); err != nil {
		return []error{err}
	}
	for _, f := range []string{InstallKernel, InstallInitrd, InstallKickstart} {
		st, err := os.Stat(path.Join(in.Dir, f))
		switch {
		case err != nil:
			errs = append(errs, fieldErr("install", "%s has no %s: put the EL9 installer's images/pxeboot/%s there (the kickstart: undervdi-kickstart generate -o %s)",
				in.Dir, f, map[string]string{InstallKernel: "vmlinuz", InstallInitrd: "initrd.img", InstallKickstart: "ks.cfg"}[f], path.Join(in.Dir, InstallKickstart)))
		case !st.Mode().IsRegular() || st.Size() == 0:
			errs = append(errs, fieldErr("install", "%s is not a file with something in it", path.Join(in.Dir, f)))
		}
	}
	if in.Repo != "" && !strings.HasPrefix(in.Repo, "http://") && !strings.HasPrefix(in.Repo, "https://") && !strings.HasPrefix(in.Repo, "nfs:") {
		errs = append(errs, fieldErr("install-repo", "%q: an http(s) or nfs: URL of EL9's installation tree", in.Repo))
	}
	for _, m := range in.MACs {
		for _, k := range c.Kiosks {
			if k.MAC.String() == m.String() {
				errs = append(errs, fieldErr("install-mac", "%s is a kiosk's too", m))
			}
		}
	}
	return errs
}

// installHandler serves a server install: the boot script, the installer,
// the kickstart, and the files %post fetches; anything else goes to next.
type installHandler struct {
	cfg  Config
	next http.Handler
	log  *slog.Logger // access log at Debug; nil for none
}

func (h *installHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/"+InstallScript:
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, h.cfg.InstallIPXE())
		if h.log != nil {
			h.log.Debug("http", "remote", r.RemoteAddr, "method", r.Method, "path", p, "status", 200, "agent", r.UserAgent())
		}
	case strings.HasPrefix(p, InstallPrefix):
		(&Handler{Dir: h.cfg.Install.Dir, Log: h.log, Prefix: InstallPrefix[:len(InstallPrefix)-1]}).ServeHTTP(w,
			withPath(r, strings.TrimPrefix(p, InstallPrefix[:len(InstallPrefix)-1])))
	case strings.HasPrefix(p, "/"+InstallFiles+"/"):
		rest := strings.TrimPrefix(p, "/"+InstallFiles)
		dir := path.Join(h.cfg.Install.Dir, InstallFiles)
		// One level down: pxe/, the kiosk image's network-boot files.
		if sub, file, ok := strings.Cut(strings.TrimPrefix(rest, "/"), "/"); ok {
			if sub != "pxe" {
				http.NotFound(w, r)
				return
			}
			dir, rest = path.Join(dir, sub), "/"+file
		}
		(&Handler{Dir: dir, Log: h.log, Prefix: strings.TrimSuffix(p, rest)}).ServeHTTP(w, withPath(r, rest))
	default:
		h.next.ServeHTTP(w, r)
	}
}

func withPath(r *http.Request, p string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.URL.Path = p
	return r2
}

// installOnly says whether every PXE client boots the installer.
func (c Config) installOnly() bool { return c.Install != nil && len(c.Install.MACs) == 0 }
