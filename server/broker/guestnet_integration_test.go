//go:build integration

package broker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/miekg/dns"

	"undervdi/internal/brokertest"
	"undervdi/internal/netns"
	"undervdi/internal/poll"
	"undervdi/internal/testbed"
	"undervdi/internal/xvfb"
	"undervdi/server/config"
	"undervdi/server/pool"
	"undervdi/server/session"
	"undervdi/tinyvm"
)

// The stand-in internet: a network namespace behind the host holding two
// web sites at TEST-NET-2 addresses, and the DNS server the broker resolves
// allowed names with.
const (
	internetNet = "198.51.100.0/24"
	allowedIP   = "198.51.100.10" // allowed.test, HTTP and HTTPS
	blockedIP   = "198.51.100.20" // blocked.test, HTTP
	internetDNS = "198.51.100.53"
)

func standInInternet(t *testing.T) *netns.NS {
	t.Helper()
	ns, err := netns.New(int(time.Now().UnixNano()%200) + 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := ns.Route(internetNet, allowedIP, blockedIP, internetDNS); err != nil {
		t.Fatal(err)
	}
	site := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s site, host %s", name, r.Host) })
	}
	serve := func(addr string, h http.Handler, secure bool) {
		ln, err := ns.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(h)
		srv.Listener.Close()
		srv.Listener = ln
		if secure {
			srv.StartTLS()
		} else {
			srv.Start()
		}
		t.Cleanup(srv.Close)
	}
	serve(allowedIP+":80", site("allowed"), false)
	serve(allowedIP+":443", site("allowed"), true)
	serve(blockedIP+":80", site("blocked"), false)
	pc, err := ns.ListenPacket("udp4", internetDNS+":53")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{"allowed.test.": allowedIP, "www.allowed.test.": allowedIP, "blocked.test.": blockedIP}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		if ip, ok := names[strings.ToLower(q.Name)]; ok && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 60 IN A " + ip)
			m.Answer = []dns.RR{rr}
		} else if !ok {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return ns
}

// guest runs one of the tiny VM's tools in vm, on this machine; errText
// says why it failed, if it did.
func guest(t *testing.T, bed *testbed.Bed, vm string, args ...string) (out map[string]any, errText string) {
	t.Helper()
	return inGuest(t, bed.L, vm)(args...)
}

// inGuest returns a function that runs one of the tiny VM's tools in vm,
// on the host l reaches.
func inGuest(t *testing.T, l *libvirt.Libvirt, vm string) func(args ...string) (out map[string]any, errText string) {
	return func(args ...string) (map[string]any, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		r, err := tinyvm.Exec(ctx, l, vm, args...)
		if err != nil {
			t.Fatalf("guest %v in %s: %v", args, vm, err)
		}
		return r.Out, r.Err
	}
}

// guestGet is a request a guest's tool makes, and what it must come to: a
// body that holds body, or an error that holds err.
type guestGet struct {
	args []string
	body string // "": it must fail, with err
	err  string
}

// checkGets makes each request with run and checks what it came to.
func checkGets(t *testing.T, run func(args ...string) (map[string]any, string), gets []guestGet) {
	t.Helper()
	for _, g := range gets {
		out, errText := run(g.args...)
		body, _ := out["body"].(string)
		if g.body != "" && !strings.Contains(body, g.body) || g.body == "" && !strings.Contains(errText, g.err) {
			t.Errorf("guest %v = %v %q; want body %q or error %q", g.args, out, errText, g.body, g.err)
		}
	}
}

// TestRealGuestNetwork: a visitor's VM on the guest network reaches an
// allowed site with no proxy setting (HTTP and HTTPS), and through the
// explicit proxy; a site not allowed is not resolved, refused by the
// proxies and, dialled by address, dropped; so are the other clone, the
// host's other ports and its kiosk-LAN address, and a spoofed source
// address. The session's audit line counts the refusals and names them.
func TestRealGuestNetwork(t *testing.T) {
	bed := testbed.New(t)
	internet := standInInternet(t)
	rb := brokertest.Start(t, bed, 2, func(c *config.Config) {
		c.Network.Allow = []string{"*.allowed.test"}
		c.Network.Resolver = internetDNS + ":53"
		c.EncryptDisks = true // as a site has it: the whole default configuration at work
	})
	rb.WaitFull()
	plan, err := rb.Config.Plan()
	if err != nil {
		t.Fatal(err)
	}
	gw := plan.Gateway().String()

	x, err := xvfb.Start(context.Background(), 800, 600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	e := &e2e{t: t, bed: bed, b: rb.Broker, cfg: rb.Config, kiosk: rb.KioskAddr(), x: x,
		auditAt: rb.Config.Sessions.AuditLog, tls: rb.KioskTLS(), caFile: rb.CAFile()}
	k := e.connect(t, "k1")
	v := e.launchViewer(t, k, k.request())
	l := e.linkedLease(t, "k1")
	var other pool.VMStatus
	for _, s := range rb.Pool.Status().VMs {
		if s.Name != l.VM && s.State == pool.Clean {
			other = s
		}
	}
	if other.Name == "" || other.IP == "" {
		t.Fatalf("no other clean clone with an address: %+v", rb.Pool.Status().VMs)
	}

	lease, _ := guest(t, bed, l.VM, "net")
	ip, _ := lease["ip"].(string)
	if vm, ok := rb.Pool.AtAddress(netip.MustParseAddr(ip)); !ok || vm.Name != l.VM || lease["dns"] != gw {
		t.Fatalf("the guest's DHCP lease %v: want its own slot's address (the pool's for %s) and the gateway %s as DNS", lease, l.VM, gw)
	}
	if _, errText := guest(t, bed, other.Name, "net"); errText != "" {
		t.Fatalf("the other clone's DHCP: %s", errText)
	}

	checkGets(t, inGuest(t, bed.L, l.VM), []guestGet{
		{[]string{"get", "http://allowed.test/"}, "allowed site, host allowed.test", ""},
		{[]string{"get", "https://www.allowed.test/"}, "allowed site, host www.allowed.test", ""},
		{[]string{"get", "-proxy", "http://" + gw + ":3128", "https://allowed.test/p"}, "allowed site", ""},
		{[]string{"get", "http://blocked.test/"}, "", "no such host"},
		{[]string{"get", "-proxy", "http://" + gw + ":3128", "http://blocked.test/"}, "not available at this kiosk", ""},
		{[]string{"get", "-proxy", "http://" + gw + ":3128", "https://blocked.test/"}, "", "Forbidden"},
		{[]string{"get", "-proxy", "http://" + gw + ":3128", "http://" + blockedIP + "/"}, "not available at this kiosk", ""},
	})

	// With a default route a visitor could set, direct packets go to the
	// gateway's MAC; the filter drops what is not for the broker's ports.
	// Dropped is a timeout: a port that answers a refusal was reached.
	if _, errText := guest(t, bed, l.VM, "route", gw); errText != "" {
		t.Fatal(errText)
	}
	_, kioskPort, _ := net.SplitHostPort(rb.KioskAddr())
	for _, target := range []string{
		blockedIP + ":80",                 // the internet, by address
		other.IP + ":22",                  // another visitor's VM
		gw + ":22",                        // the host's other ports
		gw + ":" + kioskPort,              // the broker's kiosk port, on the gateway
		internet.HostIP + ":" + kioskPort, // the host's address on another network (the kiosk LAN's stand-in)
		internet.HostIP + ":80",
	} {
		if _, errText := guest(t, bed, l.VM, "dial", target); !strings.Contains(errText, "timeout") {
			t.Errorf("guest dial %s = %q, want a timeout: dropped", target, errText)
		}
	}
	if _, errText := guest(t, bed, l.VM, "dial", gw+":3128"); errText != "" {
		t.Errorf("guest dial %s:3128 (the explicit proxy) = %q", gw, errText)
	}
	spoofed := plan.Addr(plan.Slots() - 1).String()
	if _, errText := guest(t, bed, l.VM, "addr", spoofed+"/24"); errText != "" {
		t.Fatal(errText)
	}
	if _, errText := guest(t, bed, l.VM, "dial", "-src", spoofed, gw+":3128"); !strings.Contains(errText, "timeout") {
		t.Errorf("guest dial from the spoofed %s = %q, want a timeout: dropped", spoofed, errText)
	}

	v.Stop(time.Second)
	k.waitEnd(30 * time.Second)
	e.checkWiped(t, l.VM)
	rec := sessionRecord(t, e.auditAt, l.ID)
	// Refused: blocked.test by DNS (its A and AAAA queries are one
	// attempt) and twice by the proxies, and the address by the explicit
	// proxy. Packets the filters drop are not counted: no libvirt API
	// reads their counters.
	if rec.Blocked != 4 || len(rec.BlockedNames) == 0 || rec.BlockedNames[0] != (session.BlockedName{Name: "blocked.test", Count: 3}) {
		t.Errorf("audit line: blocked %d, names %v; want 4, blocked.test 3 times first", rec.Blocked, rec.BlockedNames)
	}
	if !slices.Contains(rec.BlockedNames, session.BlockedName{Name: blockedIP, Count: 1}) {
		t.Errorf("audit line names %v, want %s once", rec.BlockedNames, blockedIP)
	}
	raw, _ := os.ReadFile(e.auditAt)
	for _, never := range []string{"http://", "/p", "allowed site"} {
		if strings.Contains(string(raw), never) {
			t.Errorf("the audit log holds %q: no URLs or content", never)
		}
	}
}

// sessionRecord returns the audit log's session line for lease.
func sessionRecord(t *testing.T, path, lease string) session.AuditRecord {
	t.Helper()
	var rec session.AuditRecord
	poll.Until(t, time.Minute, "the session's audit line", func() bool {
		f, err := os.Open(path)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r session.AuditRecord
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.Event == "session" && r.Lease == lease {
				rec = r
				return true
			}
		}
		return false
	})
	return rec
}
