package api

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"undervdi/server/pool"
	"undervdi/server/schedule"
	"undervdi/server/session"
)

// Status is what GET /v1/status returns.
type Status struct {
	Libvirt  string                `json:"libvirt"`
	Pool     pool.Status           `json:"pool"`
	Sessions []session.LeaseStatus `json:"sessions"`
	Kiosks   []session.KioskStatus `json:"kiosks"`             // the fleet: every known kiosk, online or not
	Handoffs session.Handoffs      `json:"handoffs"`           // request to offer, latest 1000
	Closed   string                `json:"closed,omitempty"`   // why no new session starts (drained)
	Schedule *schedule.State       `json:"schedule,omitempty"` // the opening hours, where the site has them
}

// WriteTable prints the status for people.
func (s *Status) WriteTable(w io.Writer, now time.Time) {
	p := s.Pool
	conn := "connected"
	switch {
	case !p.Connected:
		conn = "NOT CONNECTED"
	case p.Reconciling:
		conn = "connected, reconciling"
	}
	fmt.Fprintf(w, "pool %s   golden %s   version %d   libvirt %s (%s)\n", p.Pool, p.Golden, p.Current, s.Libvirt, conn)
	fmt.Fprintf(w, "clean %d/%d   booting %d   offered %d   in use %d   ending %d   (max %d VMs)\n",
		p.Count("clean"), p.Size, p.Count("booting"), p.Count("offered"), p.Count("in-use"), p.Count("ending"), p.MaxVMs)
	if j := p.Publish; j != nil && (j.Finished == nil || j.Error != "") {
		switch {
		case j.Finished == nil:
			fmt.Fprintf(w, "PUBLISHING version %d: %s of %s copied (%s)\n", j.Version, humanize.IBytes(j.Written), humanize.IBytes(j.Total), j.Reason)
		default:
			fmt.Fprintf(w, "LAST PUBLISH FAILED (version %d, %s ago): %s\n", j.Version, now.Sub(*j.Finished).Round(time.Second), j.Error)
		}
	}
	if len(p.Hosts) > 0 {
		writeHosts(w, p.Hosts, now)
	}
	if h := s.Handoffs; h.Count > 0 {
		fmt.Fprintf(w, "sessions %d   handoffs (latest %d): p50 %v, p99 %v\n", len(s.Sessions), h.Count,
			h.P50.Round(10*time.Microsecond), h.P99.Round(10*time.Microsecond))
	}
	if sc := s.Schedule; sc != nil {
		switch {
		case sc.Open:
			fmt.Fprintf(w, "open until %s (opening hours)\n", sc.Closes.Format("Mon 15:04"))
		case !sc.Opens.IsZero():
			fmt.Fprintf(w, "CLOSED (opening hours) until %s; the pool keeps %d\n", sc.Opens.Format("Mon 15:04"), sc.Size)
		default:
			fmt.Fprintln(w, "CLOSED (opening hours): no opening within a month")
		}
	}
	for _, note := range []struct{ label, text string }{
		{"NO NEW SESSIONS", s.Closed}, {"PAUSED", p.Paused}, {"DEGRADED", p.Degraded}, {"MEMORY", p.Memory},
	} {
		if note.text != "" {
			fmt.Fprintf(w, "%s: %s\n", note.label, note.text)
		}
	}
	faulty, online := 0, 0
	for _, k := range s.Kiosks {
		if k.Online {
			online++
		}
		if k.Online && k.Fault != "" {
			faulty++
			since := ""
			if k.FaultSince != nil {
				since = " for " + now.Sub(*k.FaultSince).Round(time.Second).String()
			}
			fmt.Fprintf(w, "OUT OF ORDER: kiosk %s (%s)%s: %s\n", k.ID, k.Addr, since, k.Fault)
		}
		if k.Disabled != "" {
			fmt.Fprintf(w, "OUT OF ORDER (an operator's): kiosk %s: %s\n", k.ID, k.Disabled)
		}
		if k.Online && k.OldImage {
			fmt.Fprintf(w, "OLD IMAGE: kiosk %s runs %s, which the site no longer serves: rewrite its SD card, or reboot it from PXE\n", k.ID, k.Image)
		}
	}
	if len(s.Kiosks) > 0 {
		fmt.Fprintf(w, "kiosks connected %d   out of order %d", online, faulty)
		if off := len(s.Kiosks) - online; off > 0 {
			fmt.Fprintf(w, "   offline %d", off)
		}
		fmt.Fprintln(w)
	}
	if len(p.Versions) > 0 {
		fmt.Fprintln(w)
		WriteVersions(w, p.Versions, now)
	}
	if len(s.Kiosks) > 0 {
		fmt.Fprintln(w)
		writeFleet(w, s.Kiosks, now)
	}
	if len(p.VMs) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hosts := len(p.Hosts) > 0
	if hosts {
		fmt.Fprint(tw, "HOST\t")
	}
	fmt.Fprintln(tw, "VM\tSTATE\tVERSION\tFOR\tKIOSK\tOVERLAYS\tNOTE")
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
		if hosts {
			fmt.Fprintf(tw, "%s\t", v.Host)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.Version, now.Sub(v.Since).Round(time.Second),
			kiosk, strings.Join(v.Overlays, ","), note)
	}
	tw.Flush()
}

// writeHosts prints a line per host of a site of several.
func writeHosts(w io.Writer, hosts []pool.HostStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tGROUP\tLIBVIRT\tCLEAN\tIN USE\tMAX\tVERSION\tNOTE")
	for _, h := range hosts {
		state := "up"
		switch {
		case !h.Connected:
			state = "LOST"
			if h.Lost != nil {
				state += " " + now.Sub(*h.Lost).Round(time.Second).String()
			}
		case h.Reconciling:
			state = "reconciling"
		}
		note := h.Paused
		if j := h.Publish; j != nil && j.Finished == nil {
			note = fmt.Sprintf("copying version %d: %s of %s", j.Version, humanize.IBytes(j.Written), humanize.IBytes(j.Total))
		} else if j != nil && j.Error != "" && j.Version != h.Current {
			note = fmt.Sprintf("copy of version %d failed: %s", j.Version, j.Error)
		}
		group := h.Group
		if group == "" {
			group = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%s\n", h.Name, group, state, h.Counts[pool.Clean], h.Size,
			h.Counts[pool.InUse]+h.Counts[pool.Linking]+h.Counts[pool.Offered], h.MaxVMs, h.Current, note)
	}
	tw.Flush()
}

// WriteVersions prints the published versions: each one's age, size and
// clones, and which is current or kept for a rollback.
func WriteVersions(w io.Writer, vs []pool.VersionStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tGOLDEN\tAGE\tSIZE\tCLONES\tNOTE")
	for _, v := range vs {
		note := ""
		switch {
		case v.Current:
			note = "current"
		case v.Withdrawn != nil && v.Kept:
			note = "rolled back; deleted after the next publish"
		case v.Withdrawn != nil:
			note = "rolled back"
		case v.Kept:
			note = "kept for rollback"
		default:
			note = "old; deleted once no clone uses it"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", v.Version, v.Golden, now.Sub(v.Published).Round(time.Second),
			humanize.IBytes(v.Size), v.Clones, note)
	}
	tw.Flush()
}

// Dash is s, or "-" for nothing, in the tables people read.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeFleet is the kiosks' table: each known kiosk, online or since when
// not, and what it last said of itself.
func writeFleet(w io.Writer, kiosks []session.KioskStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIOSK\tADDRESS\tSEEN\tSTATE\tUPTIME\tSCREEN\tSOFTWARE\tIMAGE\tLAST ERROR")
	for _, k := range kiosks {
		seen := "never"
		switch {
		case k.Online:
			seen = "online"
		case !k.LastSeen.IsZero():
			seen = "offline for " + now.Sub(k.LastSeen).Round(time.Second).String()
		}
		state := k.State
		switch {
		case k.Online && k.Fault != "":
			state = "out of order"
		case k.Disabled != "":
			state = "out of order (operator)"
		}
		image := k.Image
		if k.OldImage {
			image += " (old)"
		}
		uptime := ""
		if k.UptimeSeconds > 0 {
			uptime = (time.Duration(k.UptimeSeconds) * time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, Dash(k.Addr), seen, Dash(state), Dash(uptime), Dash(k.Screen),
			Dash(k.Software), Dash(image), Dash(k.LastError))
	}
	tw.Flush()
}
