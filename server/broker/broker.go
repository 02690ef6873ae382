// Package broker is the vdi-broker daemon: it connects to libvirt, keeps the
// pool of disposable VMs, serves kiosks (the kiosk protocol and the
// original's signal port), runs the SPICE gateway, and serves the admin API
// that `vdi-broker status` reads.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"undervdi/kioskproto"
	"undervdi/server/accept"
	"undervdi/server/ads"
	"undervdi/server/api"
	"undervdi/server/config"
	"undervdi/server/console"
	"undervdi/server/domxml"
	"undervdi/server/egress"
	"undervdi/server/gateway"
	"undervdi/server/metrics"
	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
	"undervdi/server/site"
	"undervdi/server/siteca"
	"undervdi/server/virt"
)

// ErrSetup marks errors an operator must fix before a restart can help: a
// bad golden VM, a port in use, an unusable path. The daemon exits with
// status 2 for them, which the systemd unit does not restart.
var ErrSetup = errors.New("setup error")

// Broker is a running broker. Its parts depend on each other in one
// direction only, and are made in that order: the gateway's Displays (the
// pool's last readiness check), the pool, the sessions (which take VMs from
// the pool), the gateway (which asks the sessions). The pool's
// announcements of wiped VMs go the other way, as events (announce).
type Broker struct {
	Config *config.Config
	Log    *slog.Logger
	// Host and Pool are the golden's host (the first) and its pool; Hosts
	// and Pools are every host's, in the configuration's order.
	Host  *virt.Host
	Pool  *pool.Pool
	Hosts []*virt.Host
	Pools []*pool.Pool
	// Site is the hosts together, where there are several; nil with one.
	Site     *site.Site
	vms      vmPool // Site, or with one host its Pool
	Sessions *session.Manager
	Gateway  *gateway.Gateway
	Metrics  *metrics.Metrics
	displays *gateway.Displays
	registry *session.Registry
	tls      *tls.Config // the kiosk LAN's: the kiosk protocol and SPICE; nil in plaintext
	api      *api.Server
	apiTLS   *tls.Config      // the HTTPS API's; nil where api.listen is ""
	schedule *schedule.Runner // the opening hours; nil: always open
	guard    *egress.Guard    // the guest network's gateway; nil in network mode golden
	plans    []*egress.Plan   // each host's guest network, as Pools; nil in network mode golden
}

// New prepares a broker; it starts connecting to libvirt at once, in the
// background, until ctx ends.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Broker, error) {
	hosts := cfg.SiteHosts()
	dialer := gateway.SpiceDialer{}
	if cfg.Gateway.HostsCA != "" {
		pem, err := os.ReadFile(cfg.Gateway.HostsCA)
		if err != nil {
			return nil, fmt.Errorf("%w: gateway.hosts_ca: %w", ErrSetup, err)
		}
		dialer.Hosts = x509.NewCertPool()
		if !dialer.Hosts.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: gateway.hosts_ca: %s holds no PEM certificate", ErrSetup, cfg.Gateway.HostsCA)
		}
	}
	b := &Broker{Config: cfg, Log: log, displays: gateway.NewDisplays(dialer), Metrics: metrics.New()}
	for _, h := range hosts {
		hlog := log
		if len(hosts) > 1 {
			hlog = log.With("host", h.Name)
		}
		hv, err := virt.Open(ctx, h.URI, hlog)
		if err != nil {
			return nil, fmt.Errorf("%w: hosts %q: %w", ErrSetup, h.Name, err)
		}
		b.Hosts = append(b.Hosts, hv)
	}
	b.Host = b.Hosts[0]
	registry, err := session.NewRegistry(cfg.Kiosks)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	audit, err := session.OpenAudit(cfg.Sessions.AuditLog, uint64(cfg.Sessions.AuditMaxSize), cfg.Sessions.AuditKeep, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	b.registry = registry
	if b.tls, err = b.kioskTLS(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	tlsPort, subject := 0, ""
	if b.tls != nil {
		tlsPort, subject = portOf(cfg.Gateway.TLSListen), siteca.Subject(b.tls.Certificates[0].Leaf)
	}
	audit.OnRefused = b.Metrics.Refused
	b.makePools(hosts)
	var blocked func(string) (int, []session.BlockedName)
	if cfg.Network.Isolated() {
		for _, h := range hosts {
			plan, _ := cfg.HostPlan(h) // config.Validate checked it
			b.plans = append(b.plans, plan)
		}
		plans := b.plans
		allow, _ := egress.ParseAllowlist(cfg.Network.Allow)
		var kioskLAN []netip.Prefix
		for _, k := range cfg.Kiosks {
			if p, err := k.Prefix(); err == nil {
				kioskLAN = append(kioskLAN, p)
			}
		}
		b.guard = egress.New(egress.Config{Plans: plans, Allow: allow, Resolver: cfg.Network.Resolver, Log: log,
			Metrics: b.Metrics.GuestRequest, Who: b.guestAt, Forbidden: kioskLAN})
		if allow.Len() == 0 {
			log.Warn("network.allow is empty: visitors' VMs reach nothing; list the sites they may use (docs/network.md)",
				"network", plans[0].Network)
		}
		blocked = b.blocked
	}
	sc := SessionConfig(cfg)
	sc.GatewayPort, sc.GatewayTLSPort, sc.SpiceSubject = portOf(cfg.Gateway.Listen), tlsPort, subject
	sc.Metrics = b.Metrics.Hooks()
	sc.OutOfOrderFile = filepath.Join(cfg.StateDir, "out-of-order.json")
	sc.CurrentImages = (&images{paths: cfg.Images.Manifests, log: log}).Current
	sc.Blocked = blocked
	b.Sessions = session.New(sc, b.vms, registry, audit, log)
	if b.Site != nil {
		b.Site.OnLost(b.Sessions.EndVM)
	}
	b.Metrics.Watch(metrics.Source{Pool: b.vms.Status, Kiosks: b.Sessions.Fleet, Leases: b.Sessions.Leases, Queue: b.Sessions.QueueLen})
	if b.Gateway, err = gateway.New(b.Sessions, b.displays, audit, log); err != nil {
		return nil, err
	}
	b.Gateway.MaxConnsPerAddr = cfg.Gateway.MaxConnsPerAddr
	b.api = &api.Server{Pool: b.vms, Sessions: b.Sessions, Audit: audit, AuditLog: cfg.Sessions.AuditLog, Libvirt: b.Host.URI(),
		Config: func() any { return cfg.Masked() }, Log: log}
	if cfg.Ads.Dir != "" {
		if err := os.MkdirAll(cfg.Ads.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("%w: ads.dir: %w", ErrSetup, err)
		}
		b.api.Ads = &ads.Library{Dir: cfg.Ads.Dir}
	}
	if s, _ := schedule.Parse(cfg.Schedule, cfg.Capacity()); s != nil { // config.Validate checked it
		b.schedule = &schedule.Runner{Schedule: s, Site: opening{b.vms, b.Sessions}, Log: log}
		b.api.Schedule = func() *schedule.State { st := b.schedule.State(); return &st }
	}
	if cfg.API.Listen != "" {
		if b.api.Auth, err = api.NewAuth(api.AuthConfig{Accounts: cfg.API.Accounts, LoginTTL: cfg.API.LoginTTL.D(),
			IdleTimeout: cfg.API.IdleTimeout.D(), Log: log, Audit: func(event, user, addr, reason string) {
				if event == "login" {
					audit.Login(user, addr, reason)
				} else {
					audit.Refused("login", addr, "", "user "+strconv.Quote(user)+": "+reason)
				}
			}}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSetup, err)
		}
		if users, tokens, _ := b.api.Auth.Users(); users+tokens == 0 {
			log.Warn("the HTTPS API has no accounts yet: nobody can log in; make one with `vdi-broker passwd USER`", "accounts", cfg.API.Accounts)
		}
		if cfg.API.Metrics {
			b.api.Metrics = b.Metrics.Handler(log)
		}
		if b.apiTLS, err = b.httpsTLS(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSetup, err)
		}
		web, err := console.New(b.api, cfg.Schedule.Open, log)
		if err != nil {
			return nil, err
		}
		b.api.Console = web.Handler()
	}
	return b, nil
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr) // config.Validate checked it
	n, _ := strconv.Atoi(p)
	return n
}

// guestsReach says where the guard listens for host i's clones: this
// machine's guest network's gateway, if host i is this machine; or, for
// i < 0, the broker's backend address, if a host elsewhere is on the
// isolated guest network.
func (b *Broker) guestsReach(i int) (netip.Addr, bool) {
	for j, plan := range b.plans {
		routed := plan.Broker() != plan.Gateway()
		if i < 0 && routed || i == j && !routed {
			return plan.Broker(), true
		}
	}
	return netip.Addr{}, false
}

// guestAt says which VM holds a guest network address, on any host, and
// whether a visitor's session is on it.
func (b *Broker) guestAt(ip netip.Addr) (vm string, inSession, ok bool) {
	for _, p := range b.Pools {
		if v, ok := p.AtAddress(ip); ok {
			return v.Name, v.State == pool.Offered || v.State == pool.Linking || v.State == pool.InUse, true
		}
	}
	return "", false, false
}

// blocked is the guest network's refusals for a session's audit line.
func (b *Broker) blocked(vm string) (int, []session.BlockedName) {
	n, top := b.guard.Take(vm, 5)
	var names []session.BlockedName
	for _, t := range top {
		names = append(names, session.BlockedName{Name: t.Name, Count: t.Count})
	}
	return n, names
}

// vmPool is what the broker's parts use of the VMs: one host's pool, or the
// site of several.
type vmPool interface {
	session.Pool
	api.Pool
	Ended() <-chan pool.Ended
}

// makePools makes a pool per host and, with several, the site above them:
// the first host holds the golden and publishes; each other one copies its
// versions from it.
func (b *Broker) makePools(hosts []config.Host) {
	cfg := b.Config
	var names *site.Names
	if len(hosts) > 1 {
		names = &site.Names{}
	}
	var members []site.Host
	for i, h := range hosts {
		pcfg := HostPoolConfig(cfg, h, b.displays.Prepare)
		pcfg.Metrics = b.Metrics.PoolHooks()
		log := b.Log
		if len(hosts) > 1 {
			log = b.Log.With("host", h.Name)
			pcfg.Names = names.For(h.Name)
			pcfg.Size = 0 // the site gives each host its share
		}
		if i > 0 {
			to, from := b.Hosts[i], b.Hosts[0]
			pcfg.AutoPublish = false
			pcfg.Replica = &pool.Replica{From: hosts[0].Name,
				Copy: func(ctx context.Context, src domxml.Disk, name string, progress func(written, total uint64)) (string, error) {
					return to.ReplicateDisk(ctx, from, src, name, progress)
				}}
		}
		p := pool.New(pcfg, b.Hosts[i], log)
		b.Pools = append(b.Pools, p)
		members = append(members, site.Host{Name: h.Name, URI: h.URI, Group: h.Group, Weight: h.Weight,
			Capacity: pcfg.MaxVMs, Pool: p})
	}
	b.Pool, b.vms = b.Pools[0], b.Pools[0]
	if len(hosts) > 1 {
		var pinned []string
		for _, k := range cfg.Kiosks {
			if k.HostGroup != "" && !slices.Contains(pinned, k.HostGroup) {
				pinned = append(pinned, k.HostGroup)
			}
		}
		b.Site = site.New(site.Config{Placement: cfg.Placement, Size: cfg.PoolSize, LostAfter: HostLostAfter,
			KioskGroup: b.registry.HostGroup, PinnedGroups: pinned}, members, b.Log)
		b.vms = b.Site
	}
}

// Status is the VMs' status: the one host's pool, or the site's with a
// line per host.
func (b *Broker) Status() pool.Status { return b.vms.Status() }

// Wait waits for every host's pool to finish, after Run returned.
func (b *Broker) Wait() {
	for _, p := range b.Pools {
		p.Wait()
	}
}

// HostLostAfter is how long a host's libvirt connection may be down before
// the sessions on it end: longer than a libvirtd restart.
const HostLostAfter = 20 * time.Second

// SessionConfig is the session manager's part of cfg: its timings, limits
// and the viewer's settings. The broker adds its ports, metrics and files.
func SessionConfig(cfg *config.Config) session.Config {
	ss, v := cfg.Sessions, cfg.Viewer
	return session.Config{
		ConnectWindow:    cfg.Gateway.ConnectWindow.D(),
		Grace:            cfg.Gateway.Grace.D(),
		Heartbeat:        ss.Heartbeat.D(),
		HeartbeatTimeout: ss.HeartbeatTimeout.D(),
		IdleHeartbeat:    ss.IdleHeartbeat.D(),
		IdleLimit:        ss.IdleLimit.D(),
		MaxSession:       ss.MaxSession.D(),
		QueueLimit:       ss.QueueLimit,
		MaxConnsPerAddr:  ss.MaxConnsPerAddr,
		PublicHost:       cfg.Gateway.PublicHost,
		Viewer: kioskproto.Viewer{Title: v.Title, DisableAudio: v.DisableAudio, DisableEffects: v.DisableEffects,
			Compression: v.Compression, USBAutoRedirect: v.USBAutoRedirect, USBRedirectConnect: v.USBRedirectConnect},
	}
}

// PoolConfig is the pool's part of cfg for its first (or only) host; ready
// is its last readiness check.
func PoolConfig(cfg *config.Config, ready func(context.Context, pool.VM) error) pool.Config {
	return HostPoolConfig(cfg, cfg.SiteHosts()[0], ready)
}

// HostPoolConfig is the pool's part of cfg on host h: its capacity, memory
// reserve and SPICE address are the host's.
func HostPoolConfig(cfg *config.Config, h config.Host, ready func(context.Context, pool.VM) error) pool.Config {
	usb, _ := kioskproto.ParseUSBFilter(cfg.Viewer.USBAutoRedirect) // config.Validate checked it
	var network pool.GuestNet
	if plan, _ := cfg.HostPlan(h); plan != nil { // config.Validate checked it
		network = plan
	}
	return pool.Config{
		Name:              cfg.PoolName,
		Golden:            cfg.Golden,
		Size:              cfg.PoolSize,
		MaxVMs:            h.Capacity(cfg.VMUnits),
		OverlayDir:        h.OverlayDir,
		VersionDir:        h.VersionDir,
		KeepVersions:      cfg.KeepVersions,
		AutoPublish:       cfg.AutoPublish,
		MemoryReserve:     uint64(h.MemoryReserve),
		EncryptDisks:      cfg.EncryptDisks,
		ReadyTimeout:      cfg.ReadyTimeout.D(),
		RefillConcurrency: cfg.RefillConcurrency,
		FailureLimit:      cfg.FailureLimit,
		ReconcileInterval: cfg.ReconcileInterval.D(),
		ReadyCheck:        ready,
		USBFilter:         usb,
		Network:           network,
		SpiceAddress:      h.SpiceAddress,
	}
}

// announce passes the pool's announcements of wiped VMs on: the gateway
// forgets the VM's display, and the sessions end what ran on it and write
// its audit line.
func (b *Broker) announce(ctx context.Context) {
	for {
		select {
		case e := <-b.vms.Ended():
			b.displays.Forget(e.VM)
			b.Sessions.VMEnded(e)
			if b.guard != nil {
				b.guard.Forget(e.VM)
			}
		case <-ctx.Done():
			return
		}
	}
}

// Run runs the broker until ctx ends. It tells systemd it is ready once the
// first reconcile with libvirt is done and the ports are open.
func (b *Broker) Run(ctx context.Context) error {
	cfg := b.Config
	admin, err := b.serveAdmin(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer admin.Close()
	listeners, err := b.listen()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}

	// Clones of hosts other than this machine reach the broker at its
	// backend address, which is up already: its ports open before any
	// pool starts.
	var guests []*egress.Listeners
	closeAll := func() {
		for _, ln := range listeners {
			ln.Close()
		}
		for _, ls := range guests {
			ls.Close()
		}
	}
	if at, ok := b.guestsReach(-1); ok {
		ls, err := b.guard.Listen(at)
		if err != nil {
			closeAll()
			return fmt.Errorf("%w: network.broker_address: %w", ErrSetup, err)
		}
		guests = append(guests, ls)
	}

	daemon.SdNotify(false, "STATUS=connecting to libvirt and reconciling")
	// The other hosts' pools start beside the golden host's, so that status
	// can read them while it publishes; each starts serving once it holds a
	// copy of the current version, and until then the site gives it no share.
	others := make([]chan error, len(b.Pools)-1)
	for i, p := range b.Pools[1:] {
		others[i] = make(chan error, 1)
		go func() { others[i] <- p.Start(ctx) }()
	}
	if err := b.Pool.Start(ctx); err != nil {
		closeAll()
		if errors.Is(err, domxml.ErrGolden) {
			return fmt.Errorf("%w: %w", ErrSetup, err)
		}
		return err
	}
	if at, ok := b.guestsReach(0); ok {
		// This machine's guest network is up now: the pool's start made it.
		ls, err := b.guard.Listen(at)
		if err != nil {
			closeAll()
			return fmt.Errorf("%w: %w", ErrSetup, err)
		}
		guests = append(guests, ls)
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, ls := range guests {
		g.Go(func() error { return b.guard.Serve(ctx, ls) })
	}
	g.Go(func() error { return b.Pool.Run(ctx) })
	for i, p := range b.Pools[1:] {
		name := cfg.SiteHosts()[i+1].Name
		g.Go(func() error {
			var err error
			select {
			case err = <-others[i]:
			case <-ctx.Done():
				return nil
			}
			if err != nil {
				if ctx.Err() == nil {
					b.Log.Error("a host's pool could not start; it serves nothing until the broker restarts", "host", name, "err", err)
				}
				return nil
			}
			if at, ok := b.guestsReach(i + 1); ok {
				if ls, err := b.guard.Listen(at); err != nil {
					b.Log.Error("the guest network's DNS and proxies cannot listen on this machine's guest network: its visitors reach nothing",
						"host", name, "err", err)
				} else {
					g.Go(func() error { return b.guard.Serve(ctx, ls) })
				}
			}
			return p.Run(ctx)
		})
	}
	if b.Site != nil {
		g.Go(func() error { b.Site.Run(ctx); return nil })
	}
	g.Go(func() error { b.announce(ctx); return nil })
	g.Go(func() error { b.Sessions.Run(ctx); return nil })
	if b.schedule != nil {
		g.Go(func() error { b.schedule.Run(ctx); return nil })
	}
	g.Go(func() error { return b.Gateway.Serve(ctx, listeners["gateway"]) })
	if ln := listeners["gateway-tls"]; ln != nil {
		g.Go(func() error { return b.Gateway.ServeTLS(ctx, ln) })
	}
	g.Go(func() error { return b.Sessions.KioskPort().Serve(ctx, listeners["kiosk"]) })
	if ln := listeners["legacy"]; ln != nil {
		g.Go(func() error { return b.Sessions.LegacyPort().Serve(ctx, ln) })
	}
	if ln := listeners["ads"]; ln != nil {
		srv := &http.Server{Handler: ads.Handler(cfg.Ads.Dir, b.registry.Known, b.Log),
			// A kiosk fetches a few images at a time; a slow or silent
			// client is cut off at every phase.
			ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 5 * time.Minute, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(b.Log.Handler(), slog.LevelWarn)}
		ln = accept.Limit(ln, cfg.Sessions.MaxConnsPerAddr, func(c net.Conn, open int) {
			b.Sessions.Audit().Refused("ads", accept.RemoteAddr(c).String(), "", fmt.Sprintf("%d connections from this address are open already", open))
		})
		serveHTTP(ctx, g, srv, ln)
	}
	if ln := listeners["api"]; ln != nil {
		srv := &http.Server{Handler: b.api.Handler(false), TLSConfig: b.apiTLS, ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(b.Log.Handler(), slog.LevelWarn)}
		serveHTTP(ctx, g, srv, tls.NewListener(ln, b.apiTLS))
	}
	if ln := listeners["metrics"]; ln != nil {
		srv := &http.Server{Handler: b.metricsHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: time.Minute, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(b.Log.Handler(), slog.LevelWarn)}
		serveHTTP(ctx, g, srv, ln)
	}
	b.Log.Info("broker ready", "pool", cfg.PoolName, "golden", cfg.Golden, "size", cfg.PoolSize,
		"gateway", cfg.Gateway.Listen, "gateway_tls", cfg.Gateway.TLSListen, "kiosks", cfg.Sessions.Listen, "legacy", cfg.Sessions.LegacyListen, "metrics", cfg.Metrics.Listen, "api", cfg.API.Listen)
	daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=serving")
	err = g.Wait()
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// opening is what the opening hours act on.
type opening struct {
	vmPool
	*session.Manager
}

// serveHTTP runs srv on ln in g until ctx ends.
func serveHTTP(ctx context.Context, g *errgroup.Group, srv *http.Server, ln net.Listener) {
	g.Go(func() error {
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

// metricsHandler serves /metrics, and nothing else.
func (b *Broker) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", b.Metrics.Handler(b.Log))
	return mux
}

// listen opens the broker's ports before anything else, so that a port in
// use is a setup error at once.
func (b *Broker) listen() (map[string]net.Listener, error) {
	cfg := b.Config
	out := map[string]net.Listener{}
	open := func(name, addr string) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s port: %w", name, err)
		}
		out[name] = ln
		return nil
	}
	err := errors.Join(open("gateway", cfg.Gateway.Listen), open("kiosk", cfg.Sessions.Listen))
	if err == nil && b.tls != nil {
		if err = open("gateway-tls", cfg.Gateway.TLSListen); err == nil {
			out["gateway-tls"] = tls.NewListener(out["gateway-tls"], b.tls)
		}
	}
	if err == nil && cfg.Sessions.LegacyListen != "" {
		err = open("legacy", cfg.Sessions.LegacyListen)
	}
	if err == nil && cfg.Ads.Dir != "" && cfg.Ads.Listen != "" {
		err = open("ads", cfg.Ads.Listen)
	}
	if err == nil && cfg.Metrics.Listen != "" {
		err = open("metrics", cfg.Metrics.Listen)
	}
	if err == nil && cfg.API.Listen != "" {
		err = open("api", cfg.API.Listen)
	}
	if err == nil && b.tls != nil {
		out["kiosk"] = tls.NewListener(out["kiosk"], b.tls)
	}
	if err != nil {
		for _, ln := range out {
			ln.Close()
		}
		return nil, err
	}
	return out, nil
}

// kioskTLS is the kiosk protocol's TLS: the site's own certificate, or else
// the one the broker made itself, signed by its site CA. It is nil, with a
// warning, where the site turned TLS off.
func (b *Broker) kioskTLS() (*tls.Config, error) {
	cfg := b.Config.Sessions
	var cert tls.Certificate
	switch {
	case cfg.Plaintext:
		b.Log.Warn("the kiosk protocol is in plaintext (sessions.plaintext = true): kiosk tokens cross the kiosk LAN in clear")
		return nil, nil
	case cfg.TLSCert != "":
		var err error
		if cert, err = tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("sessions.tls_cert: %w", err)
		}
	default:
		dir := b.Config.SiteCADir()
		site, made, err := siteca.Ensure(dir)
		if err != nil {
			return nil, fmt.Errorf("the site CA in %s: %w", dir, err)
		}
		for _, m := range made {
			b.Log.Info("made "+m, "dir", dir)
		}
		b.Log.Info("kiosk protocol over TLS with the site CA; kiosks carry it (vdi-broker ca prints it)",
			"ca", filepath.Join(dir, siteca.CAFile), "fingerprint", site.Fingerprint())
		cert = site.Certificate
	}
	if cert.Leaf == nil {
		var err error
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// httpsTLS is the HTTPS API's TLS: the configured certificate, or the
// broker's own, signed by the site CA (made if need be, also where the kiosk
// LAN runs in plaintext).
func (b *Broker) httpsTLS() (*tls.Config, error) {
	a := b.Config.API
	var cert tls.Certificate
	if a.TLSCert != "" {
		var err error
		if cert, err = tls.LoadX509KeyPair(a.TLSCert, a.TLSKey); err != nil {
			return nil, fmt.Errorf("api.tls_cert: %w", err)
		}
	} else {
		site, _, err := siteca.Ensure(b.Config.SiteCADir())
		if err != nil {
			return nil, fmt.Errorf("the site CA in %s: %w", b.Config.SiteCADir(), err)
		}
		cert = site.Certificate
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, nil
}

// serveAdmin serves the admin API on the configured unix socket.
func (b *Broker) serveAdmin(ctx context.Context) (*http.Server, error) {
	path := b.Config.AdminSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	os.Remove(path) // a stale socket of an earlier run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: b.api.Handler(true), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 2 * time.Minute, IdleTimeout: time.Minute, ErrorLog: slog.NewLogLogger(b.Log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.Log.Error("admin API stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return srv, nil
}
