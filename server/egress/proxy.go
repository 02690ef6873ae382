package egress

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// blockedPage is what a visitor's browser shows for a site the kiosk does
// not offer.
const blockedPage = `<!doctype html><meta charset="utf-8"><title>Not available here</title>
<body style="font-family:sans-serif;margin:3em"><h1>This site is not available at this kiosk</h1>
<p>Only the sites this service offers can be opened here.</p></body>`

// ServeHTTP is both the transparent HTTP proxy (port 80: a request for a
// name the guest resolved to the gateway; the Host header says where to)
// and the explicit proxy (absolute URLs and CONNECT). Only ports 80 and 443
// are reached, and only on allowed hosts.
func (g *Guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, ok := g.client(stringAddr(r.RemoteAddr))
	if !ok {
		http.Error(w, "not a guest of this network", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect {
		g.connect(w, r, c)
		return
	}
	hostport := r.Host
	if r.URL.IsAbs() {
		if r.URL.Scheme != "http" {
			http.Error(w, "only http:// URLs and CONNECT", http.StatusBadRequest)
			return
		}
		hostport = r.URL.Host
	}
	host, port := splitHostPort(hostport, PortHTTP)
	release, ok := g.admit(w, c, "http", host, port == PortHTTP)
	if !ok {
		return
	}
	defer release()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = "http", host, host
			pr.Out.Header.Del("Proxy-Authorization")
			pr.Out.Header.Del("Proxy-Connection")
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return g.dial(ctx, host, PortHTTP) },
			// One request, one upstream connection: a kept-alive
			// connection must not carry a later request for another host.
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: 30 * time.Second,
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) { g.upstreamFailed(w, c, host, err) },
	}
	rp.ServeHTTP(w, r)
}

// admit decides a proxied request for host (portOK: to a port visitors
// may reach): refused, it answers w; admitted, the connection is held
// until release.
func (g *Guard) admit(w http.ResponseWriter, c client, kind, host string, portOK bool) (release func(), ok bool) {
	if host == "" || !portOK {
		g.refuse(c, kind, cmp.Or(host, "(no host)"))
		refuse(w)
		return nil, false
	}
	if !g.decide(c, kind, host) {
		refuse(w)
		return nil, false
	}
	if release, ok = g.hold(c.ip); !ok {
		http.Error(w, "too many connections", http.StatusTooManyRequests)
	}
	return release, ok
}

// upstreamFailed answers a request whose allowed host could not be reached,
// or resolved only to addresses visitors may not reach.
func (g *Guard) upstreamFailed(w http.ResponseWriter, c client, host string, err error) {
	g.log.Debug("upstream failed", "vm", c.vm, "host", host, "err", err)
	if errors.Is(err, errForbidden) {
		refuse(w)
		return
	}
	http.Error(w, "the site did not answer", http.StatusBadGateway)
}

// connect is the explicit proxy's CONNECT: a tunnel to port 443 of an
// allowed host, for TLS whose server name (SNI) is that host: a tunnel
// opened to an allowed name must not carry a ClientHello for another site
// on the same address (a CDN's, a shared host's). Plain HTTP goes as
// absolute http:// URLs, whose every request is checked.
func (g *Guard) connect(w http.ResponseWriter, r *http.Request, c client) {
	host, port := splitHostPort(r.Host, 0)
	release, ok := g.admit(w, c, "connect", host, port == PortHTTPS)
	if !ok {
		return
	}
	defer release()
	up, err := g.dial(r.Context(), host, PortHTTPS)
	if err != nil {
		g.upstreamFailed(w, c, host, err)
		return
	}
	defer up.Close()
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(handshakeWindow))
	pending, _ := buf.Reader.Peek(buf.Reader.Buffered())
	name, hello, err := peekSNI(io.MultiReader(bytes.NewReader(pending), conn))
	sni, _ := Normalize(name)
	want, _ := Normalize(host)
	switch {
	case err != nil || name == "" && !isAddr(host):
		g.refuse(c, "connect", "(no server name)")
		return
	case name != "" && sni != want && !(isAddr(host) && g.decide(c, "connect", name)):
		// Another name than the tunnel's: refused, unless the tunnel is
		// to an allowed address and the name is allowed too.
		if !isAddr(host) {
			g.refuse(c, "connect", name)
		}
		return
	}
	conn.SetReadDeadline(time.Time{})
	g.tunnel(c, conn, up, hello)
}

// tunnel passes a TLS connection whose ClientHello (hello, already read)
// was allowed on upstream.
func (g *Guard) tunnel(c client, conn, up net.Conn, hello []byte) {
	untrack := g.track(c.vm, conn, up)
	defer untrack()
	if _, err := up.Write(hello); err != nil {
		return
	}
	splice(conn, up)
}

// ServeTLS is the transparent HTTPS proxy (port 443): it reads the TLS
// ClientHello's server name (SNI), never decrypting anything, and passes the
// connection on to that name's port 443 if it is allowed. What the TLS
// carries inside (an HTTP Host header) it cannot see: a site on the same
// address as an allowed one can be reached by a client that sends the
// allowed name and another Host ("domain fronting"); most CDNs refuse that.
func (g *Guard) ServeTLS(conn net.Conn) {
	defer conn.Close()
	c, ok := g.client(conn.RemoteAddr())
	if !ok {
		return
	}
	release, ok := g.hold(c.ip)
	if !ok {
		return
	}
	defer release()
	conn.SetReadDeadline(time.Now().Add(handshakeWindow))
	name, hello, err := peekSNI(conn)
	if err != nil || name == "" {
		g.refuse(c, "tls", "(no server name)")
		return
	}
	if !g.decide(c, "tls", name) {
		return
	}
	conn.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	up, err := g.dial(ctx, name, PortHTTPS)
	cancel()
	if err != nil {
		g.log.Debug("upstream failed", "vm", c.vm, "host", name, "err", err)
		return
	}
	defer up.Close()
	g.tunnel(c, conn, up, hello)
}

func isAddr(host string) bool {
	_, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil
}

// peekSNI reads a TLS ClientHello from r, with crypto/tls's own parser,
// and returns its server name and the bytes read, to be replayed upstream.
func peekSNI(r io.Reader) (string, []byte, error) {
	var seen bytes.Buffer
	var name string
	errGot := errors.New("got the ClientHello")
	err := tls.Server(readOnly{io.TeeReader(r, &seen)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name = h.ServerName
			return nil, errGot
		},
	}).Handshake()
	if !errors.Is(err, errGot) {
		return "", nil, fmt.Errorf("not a TLS ClientHello: %w", err)
	}
	return name, seen.Bytes(), nil
}

// readOnly is a net.Conn that can only be read: the TLS server above must
// never answer the client.
type readOnly struct{ r io.Reader }

func (c readOnly) Read(p []byte) (int, error)     { return c.r.Read(p) }
func (readOnly) Write([]byte) (int, error)        { return 0, io.ErrClosedPipe }
func (readOnly) Close() error                     { return nil }
func (readOnly) LocalAddr() net.Addr              { return stringAddr("") }
func (readOnly) RemoteAddr() net.Addr             { return stringAddr("") }
func (readOnly) SetDeadline(time.Time) error      { return nil }
func (readOnly) SetReadDeadline(time.Time) error  { return nil }
func (readOnly) SetWriteDeadline(time.Time) error { return nil }

// stringAddr is an address known by its text: an http.Request's RemoteAddr.
type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }

// splitHostPort splits host[:port]; def is the port when none is given.
func splitHostPort(hostport string, def int) (string, int) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return strings.Trim(hostport, "[]"), def
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0
	}
	return host, n
}

// spliceIdle is how long a tunnel may carry nothing either way.
const spliceIdle = 10 * time.Minute

// splice copies both ways until both are done (a side that ends
// half-closes the other's writing) or nothing moved for spliceIdle, then
// closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		copyIdle(a, b)
		close(done)
	}()
	copyIdle(b, a)
	<-done
	a.Close()
	b.Close()
}

// copyIdle copies src to dst, each read allowed spliceIdle, then ends
// dst's writing.
func copyIdle(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		src.SetReadDeadline(time.Now().Add(spliceIdle))
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

func refuse(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusForbidden)
	io.WriteString(w, blockedPage)
}
