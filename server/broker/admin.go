package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/pool"
	"undervdi/server/session"
)

// Status is what GET /v1/status returns.
type Status struct {
	Libvirt  string                `json:"libvirt"`
	Pool     pool.Status           `json:"pool"`
	Sessions []session.LeaseStatus `json:"sessions"`
	Handoffs session.Handoffs      `json:"handoffs"` // request to offer, latest 1000
}

// The admin API, on a unix socket only root and the broker's group reach:
//
//	GET  /v1/status          the pool, its VMs and the sessions
//	POST /v1/vms/{name}/end  end the session on a VM (or the VM), destroying it
func (b *Broker) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Status{Libvirt: b.Host.URI(), Pool: b.Pool.Status(), Sessions: b.Sessions.Leases(),
			Handoffs: b.Sessions.Handoffs()})
	})
	mux.HandleFunc("POST /v1/vms/{name}/end", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		reason := "ended by an admin"
		if q := r.URL.Query().Get("reason"); q != "" {
			reason += ": " + q
		}
		if b.Sessions.EndVM(name, reason) {
			return
		}
		if err := b.Pool.End(name, reason); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
		}
	})
	return mux
}

// Client talks to a broker's admin socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the admin socket at path.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://broker"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("broker not reachable on %s (is vdi-broker running?): %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("broker: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// Status reads the broker's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	resp, err := c.do(ctx, "GET", "/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("broker status: %w", err)
	}
	return &s, nil
}

// End ends the session on a VM, or the VM itself, with a reason.
func (c *Client) End(ctx context.Context, vm, reason string) error {
	resp, err := c.do(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/end?reason="+url.QueryEscape(reason))
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// FetchStatus reads the status from a broker's admin socket.
func FetchStatus(ctx context.Context, socket string) (*Status, error) {
	return NewClient(socket).Status(ctx)
}

// WriteTable prints the status for people.
func (s *Status) WriteTable(w io.Writer, now time.Time) {
	p := s.Pool
	conn := "connected"
	if !p.Connected {
		conn = "NOT CONNECTED"
	}
	fmt.Fprintf(w, "pool %s   golden %s   libvirt %s (%s)\n", p.Pool, p.Golden, s.Libvirt, conn)
	fmt.Fprintf(w, "clean %d/%d   booting %d   offered %d   in use %d   ending %d   (max %d VMs)\n",
		p.Counts[domxml.Clean], p.Size, p.Counts[domxml.Booting]+p.Counts["creating"], p.Counts[domxml.Offered],
		p.Counts[domxml.InUse], p.Counts[domxml.Ending], p.MaxVMs)
	if h := s.Handoffs; h.Count > 0 {
		fmt.Fprintf(w, "sessions %d   handoffs (latest %d): p50 %v, p99 %v\n", len(s.Sessions), h.Count,
			h.P50.Round(10*time.Microsecond), h.P99.Round(10*time.Microsecond))
	}
	for _, note := range []struct{ label, text string }{
		{"PAUSED", p.Paused}, {"DEGRADED", p.Degraded}, {"MEMORY", p.Memory},
	} {
		if note.text != "" {
			fmt.Fprintf(w, "%s: %s\n", note.label, note.text)
		}
	}
	if len(p.VMs) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSTATE\tFOR\tKIOSK\tOVERLAYS\tNOTE")
	kiosks := map[string]string{}
	for _, l := range s.Sessions {
		kiosks[l.VM] = fmt.Sprintf("%s (%s)", l.Kiosk, l.Addr)
	}
	vms := append([]pool.VMStatus(nil), p.VMs...)
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	for _, v := range vms {
		note := v.Reason
		if v.Error != "" {
			note = "error: " + v.Error
		}
		kiosk := kiosks[v.Name]
		if kiosk == "" {
			kiosk = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.State, now.Sub(v.Since).Round(time.Second),
			kiosk, strings.Join(v.Overlays, ","), note)
	}
	tw.Flush()
}
