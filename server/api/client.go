package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Client calls the API: on the admin socket, or over HTTPS with a token.
// The vdi-broker commands are its callers.
type Client struct {
	base  string // "http://broker" on the socket
	where string // for errors: the socket's path or the URL
	token string
	http  *http.Client
}

// NewClient returns a client for the admin socket at path.
func NewClient(socket string) *Client {
	return &Client{base: "http://broker", where: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// NewRemote returns a client for the API at base ("https://broker:8443")
// with a bearer token, trusting roots (nil: the system's).
func NewRemote(base, token string, roots *x509.CertPool) *Client {
	return &Client{base: strings.TrimSuffix(base, "/"), where: base, token: token, http: &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}}
}

// Call sends a request with body (nil: none) and decodes the answer into
// out (nil: discarded). An API error comes back as *Error.
func (c *Client) Call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("broker not reachable on %s (is vdi-broker running?): %w", c.where, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(msg, e) != nil || e.Code == "" {
			e.Code, e.Message = "http", fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
		}
		return fmt.Errorf("broker: %w", e)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("broker %s: %w", path, err)
	}
	return nil
}

// Get reads a resource that is not JSON (a kiosk's screenshot) whole, up to
// 16 MiB.
func (c *Client) Get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("broker not reachable on %s (is vdi-broker running?): %w", c.where, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(body, e) != nil || e.Code == "" {
			e.Code, e.Message = "http", resp.Status
		}
		return nil, fmt.Errorf("broker: %w", e)
	}
	return body, nil
}

// IsCode reports whether err is an API error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Status reads the broker's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	if err := c.Call(ctx, "GET", "/v1/status", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// End ends the session on a VM, or the VM itself, with a reason.
func (c *Client) End(ctx context.Context, vm, reason string) error {
	return c.Call(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/end", EndRequest{Reason: reason}, nil)
}

// Publish starts publishing a new version and returns its number.
func (c *Client) Publish(ctx context.Context) (int, error) {
	var out Published
	err := c.Call(ctx, "POST", "/v1/versions", nil, &out)
	return out.Version, err
}

// Rollback makes the previous version current again.
func (c *Client) Rollback(ctx context.Context) (from, to int, err error) {
	var out RolledBack
	err = c.Call(ctx, "POST", "/v1/versions/rollback", nil, &out)
	return out.From, out.To, err
}

// SetSize changes how many clean VMs the pool keeps, until a restart.
func (c *Client) SetSize(ctx context.Context, n int) error {
	return c.Call(ctx, "PUT", "/v1/pool/size", SizeRequest{Size: n}, nil)
}

// Drain stops new sessions, for reason; Resume starts them again.
func (c *Client) Drain(ctx context.Context, reason string) error {
	return c.Call(ctx, "POST", "/v1/pool/drain", DrainRequest{Reason: reason}, nil)
}

// Resume serves new sessions again.
func (c *Client) Resume(ctx context.Context) error {
	return c.Call(ctx, "POST", "/v1/pool/resume", nil, nil)
}

// Audit reads one page of the audit log; query holds its filters.
func (c *Client) Audit(ctx context.Context, query url.Values) (*AuditPage, error) {
	var p AuditPage
	if err := c.Call(ctx, "GET", "/v1/audit?"+query.Encode(), nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// FetchStatus reads the status from a broker's admin socket.
func FetchStatus(ctx context.Context, socket string) (*Status, error) {
	return NewClient(socket).Status(ctx)
}
