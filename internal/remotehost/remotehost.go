// Package remotehost runs a second libvirt host on this machine, for tests
// of a broker with several hosts: a libvirtd in a network namespace of its
// own (reached over a veth pair, as a host on a site's backend network) and
// a mount namespace of its own (its own /etc/libvirt, /var/lib/libvirt,
// /run/libvirt, /var/log/libvirt, /var/cache/libvirt and certificates), so
// that it shares no state, socket or storage pool with the machine's
// libvirtd. It listens only on TCP with TLS and asks for a client
// certificate, as libvirt's standard x509 setup does; QEMU's SPICE on it has
// a TLS port on its address (spice_tls), with the host's certificate.
package remotehost

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/internal/netns"
	"undervdi/server/virt"
)

// Hostname is the second host's name, in its certificate and its own
// /etc/hosts.
const Hostname = "uvdi-h2"

// ClientName is the common name of the broker's client certificate, the
// one the host's tls_allowed_dn_list admits.
const ClientName = "undervdi-broker"

// Host is a second libvirt host.
type Host struct {
	NS  *netns.NS
	Dir string // its state, mounted over libvirt's directories inside its namespace
	PKI string // the broker's pkipath: cacert.pem, clientcert.pem, clientkey.pem
	URI string // qemu+tls://<its address>/system?pkipath=<PKI>
	// ClientCert is the broker's client certificate (PEM), as in PKI.
	ClientCert []byte
	caPEM      []byte

	cmd    *exec.Cmd     // libvirtd, while it runs
	exited chan struct{} // closed when it has exited
}

// Start sets up and starts a second host; it is stopped, with every QEMU
// it ran, when t ends.
func Start(t testing.TB) *Host {
	t.Helper()
	ns, err := netns.New(220 + int(time.Now().UnixNano()%30)) // other tests' links are below 220
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{NS: ns, Dir: t.TempDir()}
	t.Cleanup(h.Close)
	h.PKI = filepath.Join(h.Dir, "client")
	h.URI = (&url.URL{Scheme: "qemu+tls", Host: ns.NSIP, Path: "/system", RawQuery: "pkipath=" + h.PKI}).String()
	if err := h.setup(); err != nil {
		t.Fatal(err)
	}
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	return h
}

// Kill kills the host's libvirtd (SIGKILL), as a lost host: its QEMUs run
// on, as they do when a real host's libvirtd dies.
func (h *Host) Kill() {
	if h.cmd != nil {
		h.cmd.Process.Kill()
		<-h.exited
		h.cmd = nil
	}
}

// Has reports whether domain name is defined on the host, asked on a
// connection of its own (a test's long-lived one dies with the host's
// libvirtd).
func (h *Host) Has(t testing.TB, name string) bool {
	t.Helper()
	l, err := h.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	_, err = l.DomainLookupByName(name)
	if err != nil && !libvirt.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// Cut drops every packet to and from the host, as a host powered off or
// cut off the network: no reset tells the broker, only silence. Mend undoes it.
func (h *Host) Cut(t testing.TB) { h.iptables(t, "-I") }

// Mend lets the host's packets through again after Cut.
func (h *Host) Mend(t testing.TB) { h.iptables(t, "-D") }

func (h *Host) iptables(t testing.TB, op string) {
	t.Helper()
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if out, err := exec.Command("ip", "netns", "exec", h.NS.Name, "iptables", op, chain, "-j", "DROP").CombinedOutput(); err != nil {
			t.Fatalf("iptables %s %s in %s: %v: %s", op, chain, h.NS.Name, err, out)
		}
	}
}

// Restart starts the host's libvirtd again on the same state.
func (h *Host) Restart(t testing.TB) {
	t.Helper()
	h.Kill()
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
}

// Close stops what runs in the host's namespace — its guests first, while
// its libvirtd still sees them go, then libvirtd — and removes the
// namespace.
func (h *Host) Close() {
	inNS := func() []int {
		out, _ := exec.Command("ip", "netns", "pids", h.NS.Name).Output()
		var pids []int
		for _, f := range strings.Fields(string(out)) {
			// Not libvirtd (stopped last) nor this process, whose thread
			// may be in the namespace for a moment (netns.NS.Dial).
			if p, err := strconv.Atoi(f); err == nil && p != os.Getpid() && (h.cmd == nil || p != h.cmd.Process.Pid) {
				pids = append(pids, p)
			}
		}
		return pids
	}
	for _, p := range inNS() {
		syscall.Kill(p, syscall.SIGTERM)
	}
	for i := 0; i < 100 && len(inNS()) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if h.cmd != nil {
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(10 * time.Second):
			h.cmd.Process.Kill()
			<-h.exited
		}
		h.cmd = nil
	}
	for _, p := range inNS() {
		syscall.Kill(p, syscall.SIGKILL)
	}
	h.NS.Close()
}

// start runs libvirtd in the host's namespaces and waits until it answers
// over TLS.
func (h *Host) start() error {
	d := h.Dir
	script := strings.Join([]string{
		"set -e",
		"mount --make-rprivate /",
		"hostname " + Hostname,
		// The machine may have no /etc/pki at all: an overlay over /etc
		// gives the host its own without writing into the machine's.
		fmt.Sprintf("mount -t overlay h2etc -o lowerdir=/etc,upperdir=%s/etc-upper,workdir=%s/etc-work /etc", d, d),
		fmt.Sprintf("mount --bind %s/etc-libvirt /etc/libvirt", d),
		fmt.Sprintf("mount --bind %s/run-libvirt /run/libvirt", d),
		fmt.Sprintf("mount --bind %s/lib-libvirt /var/lib/libvirt", d),
		fmt.Sprintf("mount --bind %s/log-libvirt /var/log/libvirt", d),
		fmt.Sprintf("mount --bind %s/cache-libvirt /var/cache/libvirt", d),
		fmt.Sprintf("exec libvirtd --listen --pid-file %s/libvirtd.pid", d),
	}, "\n")
	log, err := os.OpenFile(filepath.Join(d, "libvirtd.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command("ip", "netns", "exec", h.NS.Name, "unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.cmd, h.exited = cmd, make(chan struct{})
	exited := h.exited
	go func() { cmd.Wait(); close(exited) }()
	u, _ := url.Parse(h.URI)
	deadline := time.Now().Add(90 * time.Second) // a cold QEMU capabilities probe takes seconds
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(d, "libvirtd.out"))
			return fmt.Errorf("the second host's libvirtd exited: %s", out)
		default:
		}
		l, err := libvirt.ConnectToURI(u)
		if err == nil {
			_, err = l.ConnectGetHostname()
			l.Disconnect()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the second host's libvirtd at %s does not answer: %w", h.URI, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// setup writes the host's certificates, configuration and directories.
func (h *Host) setup() error {
	d := h.Dir
	for _, sub := range []string{"etc-upper", "etc-work", "etc-libvirt", "run-libvirt", "lib-libvirt", "log-libvirt/qemu",
		"cache-libvirt/qemu", "lib-libvirt/dnsmasq", "lib-libvirt/images", "lib-libvirt/boot", "client"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	// libvirt's configuration, without the machine's domains, networks,
	// storage pools or secrets.
	if out, err := exec.Command("cp", "-a", "/etc/libvirt/.", filepath.Join(d, "etc-libvirt")).CombinedOutput(); err != nil {
		return fmt.Errorf("copying /etc/libvirt: %v: %s", err, out)
	}
	for _, glob := range []string{"qemu/*.xml", "qemu/autostart", "qemu/networks/*.xml", "qemu/networks/autostart/*", "storage/*", "secrets/*"} {
		matches, _ := filepath.Glob(filepath.Join(d, "etc-libvirt", glob))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
	qemuDir := filepath.Join(d, "lib-libvirt", "qemu")
	if err := os.MkdirAll(qemuDir, 0o750); err != nil {
		return err
	}
	if u, err := user.Lookup("libvirt-qemu"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(qemuDir, uid, gid)
	}
	// A warm QEMU capabilities cache (libvirt checks it against the binary)
	// saves seconds of probing at each start.
	exec.Command("cp", "-a", "/var/cache/libvirt/qemu/capabilities", filepath.Join(d, "cache-libvirt", "qemu")).Run()

	uuid := make([]byte, 16)
	rand.Read(uuid)
	files := map[string]string{
		"etc-libvirt/libvirtd.conf": fmt.Sprintf(`listen_tls = 1
listen_tcp = 0
listen_addr = %q
auth_tls = "none"
key_file = "/etc/pki/libvirt/private/serverkey.pem"
cert_file = "/etc/pki/libvirt/servercert.pem"
ca_file = "/etc/pki/CA/cacert.pem"
tls_allowed_dn_list = ["*CN=%s*"]
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
host_uuid = "%x-%x-%x-%x-%x"
`, h.NS.NSIP, ClientName, uuid[:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:]),
		"etc-libvirt/qemu.conf": fmt.Sprintf(`stdio_handler = "file"
cgroup_controllers = [ ]
spice_listen = %q
spice_tls = 1
spice_tls_x509_cert_dir = "/etc/pki/libvirt-spice"
`, h.NS.NSIP),
		"etc-upper/hosts": fmt.Sprintf("127.0.0.1 localhost\n%s %s\n", h.NS.NSIP, Hostname),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return h.certificates()
}

// certificates makes a CA, the host's certificate (libvirtd's and QEMU's
// SPICE TLS) and the broker's client certificate, in libvirt's layout.
func (h *Host) certificates() error {
	ca, caKey, err := issue(nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "undervdi test hosts CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign})
	if err != nil {
		return err
	}
	srv, srvKey, err := issue(ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: Hostname}, DNSNames: []string{Hostname},
		IPAddresses: []net.IP{net.ParseIP(h.NS.NSIP)}, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return err
	}
	cli, cliKey, err := issue(ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: ClientName}, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return err
	}
	h.ClientCert, h.caPEM = cli, ca
	pki := filepath.Join(h.Dir, "etc-upper", "pki")
	qemuGID := -1
	if g, err := user.LookupGroup("libvirt-qemu"); err == nil {
		qemuGID, _ = strconv.Atoi(g.Gid)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
		gid  int
	}{
		{pki + "/CA/cacert.pem", ca, 0o644, -1},
		{pki + "/libvirt/servercert.pem", srv, 0o644, -1},
		{pki + "/libvirt/private/serverkey.pem", srvKey, 0o600, -1},
		{pki + "/libvirt-spice/ca-cert.pem", ca, 0o644, -1},
		{pki + "/libvirt-spice/server-cert.pem", srv, 0o644, -1},
		{pki + "/libvirt-spice/server-key.pem", srvKey, 0o640, qemuGID}, // QEMU reads it as libvirt-qemu
		{h.PKI + "/cacert.pem", ca, 0o644, -1},
		{h.PKI + "/clientcert.pem", cli, 0o644, -1},
		{h.PKI + "/clientkey.pem", cliKey, 0o600, -1},
	} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return err
		}
		if f.gid >= 0 {
			os.Chown(f.path, 0, f.gid)
		}
	}
	return nil
}

// issue makes a certificate from tmpl, signed by parent (self-signed when
// parent is nil), and returns it and its key in PEM.
func issue(parent []byte, parentKey []byte, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	signer, signKey := tmpl, any(key)
	if parent != nil {
		b, _ := pem.Decode(parent)
		if signer, err = x509.ParseCertificate(b.Bytes); err != nil {
			return nil, nil, err
		}
		k, _ := pem.Decode(parentKey)
		if signKey, err = x509.ParsePKCS8PrivateKey(k.Bytes); err != nil {
			return nil, nil, err
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// StrangerPKI writes a pkipath whose client certificate another CA signed,
// with the broker's name: a client the host must refuse, though it trusts
// the host.
func (h *Host) StrangerPKI() (string, error) {
	ca, caKey, err := issue(nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "a stranger's CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign})
	if err != nil {
		return "", err
	}
	cli, key, err := issue(ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: ClientName}, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return "", err
	}
	dir := filepath.Join(h.Dir, "stranger")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for name, data := range map[string][]byte{"cacert.pem": h.caPEM, "clientcert.pem": cli, "clientkey.pem": key} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// CA returns the CA that signed the host's certificates, libvirtd's and its
// QEMUs' SPICE TLS: what the broker trusts the site's hosts by.
func (h *Host) CA() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(h.caPEM)
	return p
}

// OpenHost opens a libvirt host as the broker does (virt.Open): this
// machine's libvirtd or a second host's URI. It returns once connected and
// drains the host's events from then on; the host closes when t ends.
func OpenHost(t testing.TB, uri string) *virt.Host {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h, err := virt.Open(ctx, uri, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(2 * time.Minute)
	for connected := false; !connected; {
		select {
		case ev := <-h.Events():
			connected = ev.Kind == virt.Connected
		case <-timeout:
			t.Fatalf("%s: not connected after 2 minutes", uri)
		}
	}
	go func() {
		for range h.Events() {
		}
	}()
	return h
}

// Connect opens a libvirt connection to the host, for test code.
func (h *Host) Connect() (*libvirt.Libvirt, error) {
	u, _ := url.Parse(h.URI)
	return libvirt.ConnectToURI(u)
}
