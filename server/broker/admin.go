package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/pool"
)

// Status is what GET /v1/status returns.
type Status struct {
	Libvirt string      `json:"libvirt"`
	Pool    pool.Status `json:"pool"`
}

func (b *Broker) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Status{Libvirt: b.Host.URI(), Pool: b.Pool.Status()})
	})
	return mux
}

// FetchStatus reads the status from a broker's admin socket.
func FetchStatus(ctx context.Context, socket string) (*Status, error) {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://broker/v1/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("broker not reachable on %s (is vdi-broker running?): %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("broker answered %s", resp.Status)
	}
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("broker status: %w", err)
	}
	return &s, nil
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
	fmt.Fprintln(tw, "VM\tSTATE\tFOR\tOVERLAYS\tNOTE")
	vms := append([]pool.VMStatus(nil), p.VMs...)
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	for _, v := range vms {
		note := v.Reason
		if v.Error != "" {
			note = "error: " + v.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, v.State, now.Sub(v.Since).Round(time.Second),
			strings.Join(v.Overlays, ","), note)
	}
	tw.Flush()
}
