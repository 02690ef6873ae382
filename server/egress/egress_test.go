package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestAllowlist(t *testing.T) {
	a, err := ParseAllowlist([]string{"*.gosuslugi.ru", "Example.ORG.", "*.госуслуги.рф", "203.0.113.0/24", "198.51.100.7"})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"gosuslugi.ru": true, "www.gosuslugi.ru": true, "a.b.gosuslugi.ru": true, "WWW.GOSUSLUGI.RU.": true,
		"evilgosuslugi.ru": false, "gosuslugi.ru.evil.com": false, "ru": false,
		"example.org": true, "www.example.org": false,
		"www.госуслуги.рф": true, "xn--c1aapkosapc.xn--p1ai": true,
		"203.0.113.200": true, "203.0.114.1": false, "198.51.100.7": true, "198.51.100.8": false, "[::1]": false,
		"": false, "..": false,
	} {
		if got := a.Allows(host); got != want {
			t.Errorf("Allows(%q) = %v, want %v", host, got, want)
		}
	}
	if a.Len() != 5 {
		t.Errorf("Len = %d, want 5", a.Len())
	}
}

func TestAllowlistErrors(t *testing.T) {
	_, err := ParseAllowlist([]string{"*", "*.com", "a.*.org", "::1", "2001:db8::/32", "exa mple.org", "ok.org"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`"*": not a host`, `"*.com": *.<top-level domain>`, `"a.*.org"`, `"::1": only IPv4`,
		`"2001:db8::/32": only IPv4`, `"exa mple.org": not a host name`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "ok.org") {
		t.Errorf("a good entry is reported: %v", err)
	}
}

func FuzzAllowlist(f *testing.F) {
	for _, s := range []string{"*.example.org", "example.org", "10.0.0.0/8", "1.2.3.4", "*", "", "xn--p1ai", "a..b", "*.рф"} {
		f.Add(s, "www.example.org")
	}
	f.Fuzz(func(t *testing.T, entry, host string) {
		a, err := ParseAllowlist([]string{entry})
		if err != nil {
			if a.Len() != 0 {
				t.Fatalf("a refused entry %q was kept", entry)
			}
			return
		}
		if a.Allows(host) {
			// What is allowed is the entry itself, or a name under a
			// pattern, or an address in its range: never more.
			n, _ := Normalize(host)
			pat, _ := Normalize(strings.TrimPrefix(strings.TrimSpace(entry), "*."))
			ip, ipErr := netip.ParseAddr(strings.Trim(host, "[]"))
			switch {
			case ipErr == nil:
				if p, err := netip.ParsePrefix(strings.TrimSpace(entry)); err == nil && !p.Contains(ip) {
					t.Fatalf("%q allows %q outside its range", entry, host)
				}
			case n != pat && !strings.HasSuffix(n, "."+pat):
				t.Fatalf("%q allows %q", entry, host)
			}
		}
	})
}

func TestPlan(t *testing.T) {
	p, err := NewPlan("undervdi", netip.MustParsePrefix("10.213.0.0/24"), "", 3128)
	if err != nil {
		t.Fatal(err)
	}
	if p.Gateway().String() != "10.213.0.1" || p.Slots() != 245 || p.Bridge != "uvdi-undervdi" {
		t.Errorf("gateway %s, %d slots, bridge %s", p.Gateway(), p.Slots(), p.Bridge)
	}
	seen := map[string]bool{}
	for i := range p.Slots() {
		ip, mac := p.Addr(i).String(), p.MAC(i)
		if p.Slot(ip) != i || seen[ip] || seen[mac] {
			t.Fatalf("slot %d: %s %s (Slot = %d)", i, ip, mac, p.Slot(ip))
		}
		seen[ip], seen[mac] = true, true
	}
	if p.Addr(0).String() != "10.213.0.10" || p.Addr(p.Slots()-1).String() != "10.213.0.254" {
		t.Errorf("first %s, last %s; want .10 to .254 (the broadcast address is no clone's)", p.Addr(0), p.Addr(p.Slots()-1))
	}
	for _, ip := range []string{"10.213.0.1", "10.213.0.9", "10.213.0.255", "10.213.1.11", "x"} {
		if p.Slot(ip) != -1 {
			t.Errorf("Slot(%s) = %d, want -1", ip, p.Slot(ip))
		}
	}
	x := p.NetworkXML()
	for _, must := range []string{"<name>undervdi-guests</name>", "<dns enable='no'/>", "<ip address='10.213.0.1' prefix='24'>",
		"<host mac='" + p.MAC(0) + "' ip='10.213.0.10'/>", "dhcp-option=option:dns-server,10.213.0.1"} {
		if !strings.Contains(x, must) {
			t.Errorf("network XML lacks %s", must)
		}
	}
	for _, mustNot := range []string{"<forward", "<range"} {
		if strings.Contains(x, mustNot) {
			t.Errorf("network XML has %s: the network must be isolated, with no dynamic addresses", mustNot)
		}
	}
	nic := p.NIC(3)
	if nic.MAC != p.MAC(3) || fmt.Sprint(nic.Params) != "[{IP 10.213.0.13} {GATEWAY 10.213.0.1} {PORT 80} {PORT 443} {PORT 3128}]" {
		t.Errorf("NIC(3) = %+v", nic)
	}
	for _, bad := range []string{"10.0.0.0/8", "10.213.0.0/28", "2001:db8::/64"} {
		if _, err := NewPlan("p", netip.MustParsePrefix(bad), "", 3128); err == nil {
			t.Errorf("NewPlan(%s) accepted", bad)
		}
	}
}

// TestRoutedPlan: the same network on a host other than the broker's
// machine: its bridge forwards (route, no NAT), DHCP names the broker's
// backend address as DNS server, and the filter, named apart, holds clones
// to DHCP with the host and to the broker's address for the rest. The
// broker's own plan is unchanged by it.
func TestRoutedPlan(t *testing.T) {
	local, err := NewPlan("undervdi", netip.MustParsePrefix("10.213.0.0/24"), "", 3128)
	if err != nil {
		t.Fatal(err)
	}
	host2, err := NewPlan("undervdi", netip.MustParsePrefix("10.213.1.0/24"), "", 3128)
	if err != nil {
		t.Fatal(err)
	}
	localChain, localRoot := local.FilterXML()
	p, err := host2.Routed(netip.MustParseAddr("192.168.100.1"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Broker().String() != "192.168.100.1" || p.Gateway().String() != "10.213.1.1" || host2.Broker() != host2.Gateway() {
		t.Errorf("routed: broker %s, gateway %s; unrouted broker %s", p.Broker(), p.Gateway(), host2.Broker())
	}
	x := p.NetworkXML()
	for _, must := range []string{"<forward mode='route'/>", "<ip address='10.213.1.1' prefix='24'>", "dhcp-option=option:dns-server,192.168.100.1"} {
		if !strings.Contains(x, must) {
			t.Errorf("routed network XML lacks %s:\n%s", must, x)
		}
	}
	if strings.Contains(x, "nat") {
		t.Errorf("routed network XML has NAT: the broker must see each clone's own address")
	}
	chain, root := p.FilterXML()
	if p.Filter != "undervdi-guest-routed" || !strings.Contains(root, "<filterref filter='undervdi-guest-routed-ipv4'/>") {
		t.Errorf("routed filter %s:\n%s", p.Filter, root)
	}
	if !strings.Contains(chain, "<ip dstipaddr='$GATEWAY' protocol='udp' srcportstart='68' dstportstart='67'/>") ||
		strings.Count(chain, "$BROKER") != 6 || strings.Count(chain, "$GATEWAY") != 2 {
		t.Errorf("routed chain: DHCP with $GATEWAY, DNS and ports with $BROKER:\n%s", chain)
	}
	if nic := p.NIC(0); fmt.Sprint(nic.Params) != "[{IP 10.213.1.10} {GATEWAY 10.213.1.1} {BROKER 192.168.100.1} {PORT 80} {PORT 443} {PORT 3128}]" ||
		nic.Filter != p.Filter {
		t.Errorf("routed NIC(0) = %+v", nic)
	}
	if p.Policy() == host2.Policy() || !strings.HasSuffix(p.Policy(), ",broker 192.168.100.1") {
		t.Errorf("routed policy %q: a clone made for another layout must be replaced", p.Policy())
	}
	if c, r := local.FilterXML(); c != localChain || r != localRoot || strings.Contains(c, "BROKER") {
		t.Error("the broker's own filter changed")
	}
	for _, bad := range []string{"10.213.1.7", "::1", "0.0.0.0", "127.0.0.1"} {
		if _, err := host2.Routed(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("Routed(%s) accepted", bad)
		}
	}
}

// world is a Guard serving on loopback, with an upstream web site (HTTP and
// HTTPS) and a DNS server that says where allowed.test, blocked.test and
// rebind.test are.
type world struct {
	g                  *Guard
	dnsAddr, httpAddr  string
	proxyAddr, tlsAddr string
	inSession          atomic.Bool
}

func newWorld(t *testing.T, allow ...string) *world {
	t.Helper()
	site := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "site %s %s", r.Host, r.URL.Path) })
	plain := httptest.NewServer(site)
	secure := httptest.NewTLSServer(site)
	t.Cleanup(plain.Close)
	t.Cleanup(secure.Close)
	port := func(s *httptest.Server) int { return s.Listener.Addr().(*net.TCPAddr).Port }

	// The upstream DNS: every name is the site, rebind.test a private
	// address.
	up := &dns.Server{PacketConn: listenUDP(t), Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		ip := "198.51.100.10" // the site, at a public address
		if strings.Contains(r.Question[0].Name, "rebind.test") {
			ip = "10.1.2.3"
		}
		if r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A " + ip)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go up.ActivateAndServe()
	t.Cleanup(func() { up.Shutdown() })

	plan, err := NewPlan("t", netip.MustParsePrefix("10.213.9.0/24"), "", 3128)
	if err != nil {
		t.Fatal(err)
	}
	al, err := ParseAllowlist(allow)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{}
	w.inSession.Store(true)
	w.g = New(Config{Plans: []*Plan{plan}, Allow: al, Resolver: up.PacketConn.LocalAddr().String(),
		Who: func(ip netip.Addr) (string, bool, bool) { return "vm1", w.inSession.Load(), ip.IsLoopback() }})
	w.g.redirect = func(addr string) string {
		switch addr {
		case "198.51.100.10:80":
			return fmt.Sprintf("127.0.0.1:%d", port(plain))
		case "198.51.100.10:443":
			return fmt.Sprintf("127.0.0.1:%d", port(secure))
		}
		return "192.0.2.1:9" // nowhere: the test fails if the guard dials anything else
	}
	// The Guard's DNS answers with the address it was asked at: where
	// the broker is for the asking clone.
	at, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	guestDNS := &dns.Server{PacketConn: at, Handler: w.g}
	go guestDNS.ActivateAndServe()
	t.Cleanup(func() { guestDNS.Shutdown() })
	w.dnsAddr = guestDNS.PacketConn.LocalAddr().String()
	web := httptest.NewServer(w.g)
	t.Cleanup(web.Close)
	w.httpAddr = web.Listener.Addr().String()
	w.proxyAddr = w.httpAddr
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go w.g.ServeTLS(c)
		}
	}()
	w.tlsAddr = ln.Addr().String()
	return w
}

func listenUDP(t *testing.T) net.PacketConn {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

func (w *world) query(t *testing.T, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, err := dns.Exchange(m, w.dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// httpVia fetches u from the transparent proxy (Host header) or through the
// explicit proxy.
func (w *world) get(t *testing.T, u string, explicit bool) (int, string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	if explicit {
		pu, _ := url.Parse("http://" + w.proxyAddr)
		tr.Proxy = http.ProxyURL(pu)
	} else {
		tr.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			var d net.Dialer
			if strings.HasSuffix(addr, ":443") {
				return d.DialContext(ctx, "tcp", w.tlsAddr)
			}
			return d.DialContext(ctx, "tcp", w.httpAddr)
		}
	}
	resp, err := (&http.Client{Transport: tr}).Get(u)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tunnelTLS opens a CONNECT tunnel to target through the explicit proxy
// and makes a TLS handshake in it for sni.
func (w *world) tunnelTLS(t *testing.T, target, sni string) error {
	t.Helper()
	c, err := net.Dial("tcp", w.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("CONNECT: %s", resp.Status)
	}
	return tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
}

func TestGuard(t *testing.T) {
	w := newWorld(t, "allowed.test", "*.rebind.test", "rebind.test")

	if r := w.query(t, "allowed.test", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 ||
		r.Answer[0].(*dns.A).A.String() != "127.0.0.2" {
		t.Errorf("allowed.test A = %v, want the address the query came to, 127.0.0.2", r)
	}
	if r := w.query(t, "ALLOWED.test", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("allowed.test AAAA = %v, want no records", r)
	}
	for _, q := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS} { // one attempt
		if r := w.query(t, "blocked.test", q); r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			t.Errorf("blocked.test %s = %v, want NXDOMAIN", dns.TypeToString[q], r)
		}
	}

	for _, tc := range []struct {
		url      string
		explicit bool
		status   int
		body     string
	}{
		{"http://allowed.test/a", false, 200, "site allowed.test /a"},
		{"https://allowed.test/b", false, 200, "site allowed.test /b"},
		{"http://allowed.test/c", true, 200, "site allowed.test /c"},
		{"https://allowed.test/d", true, 200, "site allowed.test /d"},
		{"http://blocked.test/", false, 403, "not available at this kiosk"},
		{"https://blocked.test/", false, 0, "EOF"},
		{"http://blocked.test/", true, 403, "not available at this kiosk"},
		{"https://blocked.test/", true, 0, "Forbidden"},
		{"http://allowed.test:8080/", true, 403, "not available"},
		{"http://127.0.0.1/", true, 403, "not available"},
		// An allowed name that resolves to a private address is not
		// followed there: the kiosk LAN stays out of reach.
		{"http://rebind.test/", false, 403, "not available"},
		{"https://www.rebind.test/", true, 0, "Forbidden"},
	} {
		status, body := w.get(t, tc.url, tc.explicit)
		if status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s (explicit proxy %v) = %d %q, want %d %q", tc.url, tc.explicit, status, body, tc.status, tc.body)
		}
	}

	// Refused: blocked.test by DNS, HTTP twice and HTTPS twice; port 8080
	// and 127.0.0.1. The rebinding names were allowed, and refused only
	// when their address was seen: that is no visitor's doing.
	n, top := w.g.Take("vm1", 2)
	if n != 7 || fmt.Sprint(top) != "[{blocked.test 5} {127.0.0.1 1}]" {
		t.Errorf("refusals = %d %v, want 7, blocked.test 5 times first", n, top)
	}
	if n, _ := w.g.Take("vm1", 5); n != 0 {
		t.Errorf("refusals after Take = %d, want them forgotten", n)
	}

	// A tunnel to an allowed name carries TLS for that name only, not for
	// another site on the same address; and there is no tunnel to port 80.
	for sni, ok := range map[string]bool{"allowed.test": true, "blocked.test": false} {
		if err := w.tunnelTLS(t, "allowed.test:443", sni); (err == nil) != ok {
			t.Errorf("TLS for %s through CONNECT allowed.test:443: %v, want success %v", sni, err, ok)
		}
	}
	if status, body := w.get(t, "http://allowed.test:443/", true); status != 403 {
		t.Errorf("plain HTTP to port 443 by the explicit proxy = %d %q, want 403", status, body)
	}
	if err := w.tunnelTLS(t, "allowed.test:80", "allowed.test"); err == nil {
		t.Errorf("CONNECT allowed.test:80 opened a tunnel")
	}
	// Refused: the tunnel's blocked.test, and allowed.test at ports 443
	// (plain) and 80 (a tunnel).
	if n, top := w.g.Take("vm1", 5); n != 3 || fmt.Sprint(top) != "[{allowed.test 2} {blocked.test 1}]" {
		t.Errorf("tunnel refusals = %d %v, want 3", n, top)
	}

	// Outside a session, refusals are refused but not counted.
	w.inSession.Store(false)
	w.query(t, "blocked.test", dns.TypeA)
	if n, _ := w.g.Take("vm1", 5); n != 0 {
		t.Errorf("refusals outside a session = %d, want none counted", n)
	}
}

// TestNoGuestNetworkReached: no allowed range leads the proxies into a
// guest network, the broker's own or another host's.
func TestNoGuestNetworkReached(t *testing.T) {
	var plans []*Plan
	for _, subnet := range []string{"10.213.0.0/24", "10.213.1.0/24"} {
		p, err := NewPlan("t", netip.MustParsePrefix(subnet), "", 3128)
		if err != nil {
			t.Fatal(err)
		}
		plans = append(plans, p)
	}
	al, err := ParseAllowlist([]string{"10.0.0.0/8"}) // a site's intranet
	if err != nil {
		t.Fatal(err)
	}
	g := New(Config{Plans: plans, Allow: al})
	for ip, want := range map[string]bool{"10.5.5.5": true, "10.213.0.20": false, "10.213.1.20": false, "10.213.2.20": true} {
		if got := g.reachable(netip.MustParseAddr(ip)); got != want {
			t.Errorf("reachable(%s) = %v, want %v", ip, got, want)
		}
	}
}
