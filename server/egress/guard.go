package egress

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config is what a Guard needs.
type Config struct {
	// Plans are the guest networks' layouts, one per host: their clones
	// reach the broker at each plan's Broker address, and none of their
	// addresses is a destination.
	Plans []*Plan
	Allow *Allowlist
	// Resolver is the DNS server ("host:port") the proxies resolve allowed
	// names with; "": the host's own resolver.
	Resolver string
	// Who says which VM holds a guest address, and whether a visitor's
	// session is on it (only then is a refusal counted for an audit line).
	// ok is false for an address no clone holds: it is refused everything.
	Who func(ip netip.Addr) (vm string, inSession, ok bool)
	// Metrics hears every request: kind is dns, http, tls or connect.
	Metrics func(kind string, allowed bool)
	// Forbidden are networks of the site (the kiosk LAN's) that no
	// allowed name may lead the proxies to, besides the private ranges and
	// the host's own addresses.
	Forbidden []netip.Prefix
	Log       *slog.Logger
}

// Guard serves the guest network's gateway: DNS, the transparent HTTP and
// HTTPS proxies and the explicit proxy, and keeps each VM's tally of
// refusals.
type Guard struct {
	cfg      Config
	log      *slog.Logger
	resolver *net.Resolver

	// redirect maps the address of an upstream service to the one dialled:
	// unit tests' upstreams listen on loopback ports of their own.
	redirect func(addr string) string

	mu      sync.Mutex
	tallies map[string]*tally // by VM name
	conns   map[netip.Addr]int
	tunnels map[string]map[net.Conn]bool // open tunnels' connections, by VM: closed when it ends
	dnsRate map[netip.Addr]*rate.Limiter
	host    []netip.Prefix // the host's own addresses: never reached through an allowed name
}

// tally is one VM's refusals: how many, and of which names (at most
// maxNames distinct names are kept; the count goes on beyond).
type tally struct {
	count int
	names map[string]int
	dns   map[string]time.Time // when a name's last DNS refusal was counted
}

// dnsRepeat is how long a guest's queries for one refused name count as
// one attempt: a resolver asks for A and AAAA (and HTTPS) records at once,
// and again when the visitor retries.
const dnsRepeat = 3 * time.Second

const (
	maxNames        = 64
	maxConnsPerVM   = 256 // proxied connections one clone may hold at once
	handshakeWindow = 10 * time.Second
)

// Blocked is one refused name and how often it was refused.
type Blocked struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// New returns a Guard; Listen, then Serve, run it.
func New(cfg Config) *Guard {
	g := &Guard{cfg: cfg, log: cfg.Log, tallies: map[string]*tally{}, conns: map[netip.Addr]int{},
		tunnels: map[string]map[net.Conn]bool{}, dnsRate: map[netip.Addr]*rate.Limiter{},
		redirect: func(a string) string { return a }}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				g.host = append(g.host, netip.PrefixFrom(p.Addr().Unmap(), p.Addr().Unmap().BitLen()))
			}
		}
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	g.resolver = net.DefaultResolver
	if cfg.Resolver != "" {
		g.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, cfg.Resolver)
		}}
	}
	return g
}

// Take returns a VM's refusals, the top names first (at most top of them),
// and forgets them: a VM serves one session.
func (g *Guard) Take(vm string, top int) (int, []Blocked) {
	g.mu.Lock()
	t := g.tallies[vm]
	delete(g.tallies, vm)
	g.mu.Unlock()
	if t == nil {
		return 0, nil
	}
	var out []Blocked
	for n, c := range t.names {
		out = append(out, Blocked{n, c})
	}
	slices.SortFunc(out, func(a, b Blocked) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Name, b.Name))
	})
	return t.count, out[:min(top, len(out))]
}

// Forget drops what is left of a VM that is gone: its refusals, and its
// tunnels, closed: the next clone at its address must not inherit them.
func (g *Guard) Forget(vm string) {
	g.mu.Lock()
	delete(g.tallies, vm)
	open := g.tunnels[vm]
	delete(g.tunnels, vm)
	g.mu.Unlock()
	for c := range open {
		c.Close()
	}
}

// track records a VM's tunnel's connections until untrack.
func (g *Guard) track(vm string, conns ...net.Conn) (untrack func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tunnels[vm] == nil {
		g.tunnels[vm] = map[net.Conn]bool{}
	}
	for _, c := range conns {
		g.tunnels[vm][c] = true
	}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range conns {
			delete(g.tunnels[vm], c)
		}
		if len(g.tunnels[vm]) == 0 {
			delete(g.tunnels, vm)
		}
	}
}

// dnsQueries bounds a clone's DNS queries: a flood is dropped, not served.
const dnsQueries, dnsBurst = 50, 200 // per second

// dnsAllowed reports whether a clone may have another query answered now.
func (g *Guard) dnsAllowed(ip netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.dnsRate[ip]
	if l == nil {
		l = rate.NewLimiter(dnsQueries, dnsBurst)
		g.dnsRate[ip] = l
	}
	return l.Allow()
}

// client is the clone a request comes from.
type client struct {
	ip        netip.Addr
	vm        string
	inSession bool
}

func (g *Guard) client(addr net.Addr) (client, bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return client{}, false
	}
	c := client{ip: ap.Addr().Unmap()}
	var ok bool
	c.vm, c.inSession, ok = g.cfg.Who(c.ip)
	return c, ok
}

// decide records one request's outcome, and reports whether it is allowed.
func (g *Guard) decide(c client, kind, host string) bool {
	if !g.cfg.Allow.Allows(host) {
		g.refuse(c, kind, host)
		return false
	}
	if f := g.cfg.Metrics; f != nil {
		f(kind, true)
	}
	return true
}

// refuse records a refused request: in the metrics, and against the VM's
// session if a visitor is on it.
func (g *Guard) refuse(c client, kind, host string) {
	if f := g.cfg.Metrics; f != nil {
		f(kind, false)
	}
	if n, ok := Normalize(host); ok {
		host = n
	} else if !strings.HasPrefix(host, "(") {
		host = "(not a host name)"
	}
	g.log.Debug("refused", "vm", c.vm, "kind", kind, "host", host, "session", c.inSession)
	if !c.inSession {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.tallies[c.vm]
	if t == nil {
		t = &tally{names: map[string]int{}, dns: map[string]time.Time{}}
		g.tallies[c.vm] = t
	}
	if kind == "dns" {
		now := time.Now()
		if last, ok := t.dns[host]; ok && now.Sub(last) < dnsRepeat {
			return
		}
		if len(t.dns) < maxNames {
			t.dns[host] = now
		}
	}
	t.count++
	if _, seen := t.names[host]; seen || len(t.names) < maxNames {
		t.names[host]++
	}
}

// hold counts one proxied connection of a clone; false when it holds too many.
func (g *Guard) hold(ip netip.Addr) (release func(), ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns[ip] >= maxConnsPerVM {
		return nil, false
	}
	g.conns[ip]++
	return func() {
		g.mu.Lock()
		if g.conns[ip]--; g.conns[ip] == 0 {
			delete(g.conns, ip)
		}
		g.mu.Unlock()
	}, true
}

// errForbidden is a destination the proxies never connect to.
var errForbidden = errors.New("resolves only to addresses visitors may not reach")

// special are ranges no allowed name may lead the proxies to unless the
// allowlist names the address itself: the host, the site's own networks,
// the guest network. A public name that resolves there (DNS rebinding)
// would otherwise open the kiosk LAN to the visitor.
var special = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// reachable reports whether the proxies may connect to ip.
func (g *Guard) reachable(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.Is4() {
		return false
	}
	for _, p := range g.cfg.Plans {
		if p.Subnet.Contains(ip) {
			return false
		}
	}
	if g.cfg.Allow.AllowsAddr(ip) {
		return true
	}
	for _, ps := range [][]netip.Prefix{special, g.host, g.cfg.Forbidden} {
		for _, p := range ps {
			if p.Contains(ip) {
				return false
			}
		}
	}
	return true
}

// dial connects to an allowed host's port: a name is resolved here (never
// by the guest), and only addresses visitors may reach are tried.
func (g *Guard) dial(ctx context.Context, host string, port int) (net.Conn, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		// The name as allowed, absolute: no search domain of the host's
		// applies, nor its own names.
		name, ok := Normalize(host)
		if !ok {
			return nil, fmt.Errorf("%q is not a host name", host)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		found, err := g.resolver.LookupNetIP(rctx, "ip4", name+".")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", host, err)
		}
		ips = found
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	var errs []error
	for _, ip := range ips {
		if !g.reachable(ip) {
			errs = append(errs, fmt.Errorf("%s: %w", ip, errForbidden))
			continue
		}
		c, err := d.DialContext(ctx, "tcp4", g.redirect(net.JoinHostPort(ip.String(), strconv.Itoa(port))))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%s has no IPv4 address", host)
	}
	return nil, fmt.Errorf("%s: %w", host, errors.Join(errs...))
}
