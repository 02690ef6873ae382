// Package site puts several KVM hosts behind one broker. Each host keeps its
// own pool.Pool (its loop, its table rebuilt from that host's libvirt, its
// versions, reconcile and memory admission); the site does only what spans
// hosts:
//
//   - placement: it splits pool_size across the hosts that are up (spread
//     by weight, or pack), each within its capacity;
//   - handing out: a kiosk pinned to a host group takes from that group
//     only, and MarkUsed, Release and End go to the VM's host;
//   - versions: the first host holds the golden and publishes; every other
//     host gets a copy of its current version (pool.Replicate) and serves
//     its previous one until the copy is done;
//   - host loss: a host whose libvirt connection stays down ends its
//     sessions with a reason their kiosks show, and its share moves to the
//     hosts that are up; when it is back its pool reconciles before the
//     site gives it a share again;
//   - status: one pool.Status, summed, with a line per host.
//
// The site implements what the sessions, the API, the opening hours and the
// metrics use of a pool, so the broker wires it where one host's pool goes.
package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/pool"
	"undervdi/server/session"
)

// ReasonHostLost is the reason a session ends with when its host is lost;
// the kiosk shows it.
const ReasonHostLost = "the server running your session is unreachable"

// Host is one host of the site, with its pool.
type Host struct {
	Name     string
	URI      string
	Group    string
	Weight   int
	Capacity int // VMs it holds at most: its pool's max_vms
	Pool     Pool
}

// Pool is what the site needs of one host's pool: what the sessions use of
// a pool, and more; *pool.Pool has it.
type Pool interface {
	session.Pool
	End(name, reason string) error
	Ended() <-chan pool.Ended
	Status() pool.Status
	SetSize(n int) error
	Publish(ctx context.Context) (int, error)
	Rollback(ctx context.Context) (from, to int, err error)
	CurrentVersion() *domxml.Version
	Replicate(ver *domxml.Version) error
}

// Config is the site's part of the broker configuration.
type Config struct {
	Placement string // "spread" (default) or "pack"
	Size      int    // clean VMs to keep ready across the site
	// LostAfter is how long a host's connection may be down before its
	// sessions end; a libvirtd restart is shorter.
	LostAfter time.Duration
	// KioskGroup is the host group a kiosk takes from; "": any host.
	KioskGroup func(kiosk string) string
	// PinnedGroups are the host groups kiosks are pinned to.
	PinnedGroups []string
	// Lost ends the session on a VM of a lost host; the broker passes it
	// to the sessions (session.Manager.EndVM).
	Lost func(vm, reason string) bool
	// Tick is how often the site looks at its hosts; 0: a second.
	Tick time.Duration
	// CopyRetry is how long after a failed copy of a version to a host the
	// site tries again; 0: 30 s.
	CopyRetry time.Duration
}

// Site is several hosts' pools behind one broker. Make it with New; the
// first host holds the golden.
type Site struct {
	cfg   Config
	log   *slog.Logger
	hosts []*member
	ended chan pool.Ended
	kick  chan struct{}

	mu        sync.Mutex
	owner     map[string]*member // VMs handed out, by name
	size      int
	next      int // where the next Take starts looking, for spread
	cleanWait chan struct{}
}

type member struct {
	Host
	status   pool.Status // as the control loop last read it
	copyWarn string      // the last copy failure logged
	lost     time.Time   // when its connection went down; zero: up. Under Site.mu
}

// New returns a site of hosts; hosts[0] holds the golden.
func New(cfg Config, hosts []Host, log *slog.Logger) *Site {
	if cfg.Tick == 0 {
		cfg.Tick = time.Second
	}
	if cfg.CopyRetry == 0 {
		cfg.CopyRetry = 30 * time.Second
	}
	s := &Site{cfg: cfg, log: log, ended: make(chan pool.Ended), kick: make(chan struct{}, 1),
		owner: map[string]*member{}, size: cfg.Size, cleanWait: make(chan struct{})}
	for _, h := range hosts {
		s.hosts = append(s.hosts, &member{Host: h})
	}
	return s
}

// OnLost sets Config.Lost, before Run: the sessions are made after the site.
func (s *Site) OnLost(f func(vm, reason string) bool) { s.cfg.Lost = f }

// Run passes the hosts' announcements on and keeps placement, copies and
// host loss in step, until ctx ends.
func (s *Site) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, m := range s.hosts {
		wg.Add(2)
		go func() { defer wg.Done(); s.forwardEnded(ctx, m) }()
		go func() { defer wg.Done(); s.forwardClean(ctx, m) }()
	}
	tick := time.NewTicker(s.cfg.Tick)
	defer tick.Stop()
	for {
		s.control(ctx)
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-tick.C:
		case <-s.kick:
		}
	}
}

func (s *Site) forwardEnded(ctx context.Context, m *member) {
	for {
		select {
		case e := <-m.Pool.Ended():
			s.mu.Lock()
			delete(s.owner, e.VM)
			s.mu.Unlock()
			select {
			case s.ended <- e:
			case <-ctx.Done():
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

func (s *Site) forwardClean(ctx context.Context, m *member) {
	for {
		ch := m.Pool.WaitClean()
		if ch == nil {
			return // the pool has stopped
		}
		select {
		case <-ch:
			s.wake()
		case <-ctx.Done():
			return
		}
	}
}

func (s *Site) wake() {
	s.mu.Lock()
	close(s.cleanWait)
	s.cleanWait = make(chan struct{})
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Ended delivers the hosts' announcements of wiped VMs, one channel for all.
func (s *Site) Ended() <-chan pool.Ended { return s.ended }

// WaitClean returns a channel closed the next time a VM of any host may
// have become clean.
func (s *Site) WaitClean() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cleanWait
}

// Take hands out one clean VM to c from a host of the kiosk's group (any
// host if it has none): with spread each Take starts at the next host, with
// pack at the first.
func (s *Site) Take(c pool.Claim) (pool.VM, error) {
	group := ""
	if s.cfg.KioskGroup != nil {
		group = s.cfg.KioskGroup(c.Kiosk)
	}
	s.mu.Lock()
	start := 0
	if s.cfg.Placement != "pack" {
		start = s.next
		s.next = (s.next + 1) % len(s.hosts)
	}
	s.mu.Unlock()
	var noClean, unavailable error
	for i := range s.hosts {
		m := s.hosts[(start+i)%len(s.hosts)]
		if group != "" && m.Group != group {
			continue
		}
		vm, err := m.Pool.Take(c)
		switch {
		case err == nil:
			s.mu.Lock()
			s.owner[vm.Name] = m
			s.mu.Unlock()
			return vm, nil
		case errors.Is(err, pool.ErrNoCleanVM):
			noClean = err
		case unavailable == nil:
			unavailable = fmt.Errorf("host %s: %w", m.Name, err)
		}
	}
	switch {
	case noClean != nil:
		return pool.VM{}, noClean
	case unavailable != nil:
		return pool.VM{}, unavailable
	}
	return pool.VM{}, fmt.Errorf("%w: no host in group %q", pool.ErrUnavailable, group)
}

func (s *Site) ownerOf(name string) *member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner[name]
}

// MarkUsed records on the VM's host that a client linked to it.
func (s *Site) MarkUsed(ctx context.Context, name string) error {
	m := s.ownerOf(name)
	if m == nil {
		return fmt.Errorf("%w: %s", pool.ErrUnknownVM, name)
	}
	return m.Pool.MarkUsed(ctx, name)
}

// Finish tells the VM's host that the session on it is over (pool.Finish).
// A used VM whose host the site does not know is told to every host: the
// one that has it destroys it.
func (s *Site) Finish(name string, used bool, reason string) {
	if m := s.ownerOf(name); m != nil {
		m.Pool.Finish(name, used, reason)
		return
	}
	if used {
		for _, m := range s.hosts {
			m.Pool.Finish(name, used, reason)
		}
	}
}

// End destroys a VM on whichever host has it.
func (s *Site) End(name, reason string) error {
	if m := s.ownerOf(name); m != nil {
		return m.Pool.End(name, reason)
	}
	for _, m := range s.hosts {
		// A host that does not answer (its pool stopped) cannot hold it
		// as far as anyone can tell: ask the next.
		if err := m.Pool.End(name, reason); !errors.Is(err, pool.ErrUnknownVM) && !errors.Is(err, pool.ErrUnavailable) {
			return err
		}
	}
	return fmt.Errorf("%w: %s", pool.ErrUnknownVM, name)
}

// SetSize changes how many clean VMs the site keeps ready, from 0 to what
// its hosts hold.
func (s *Site) SetSize(n int) error {
	total := 0
	for _, m := range s.hosts {
		total += m.Capacity
	}
	if n < 0 || n > total {
		return fmt.Errorf("%w: %d; from 0 to what the hosts hold (%d)", pool.ErrBadSize, n, total)
	}
	s.mu.Lock()
	changed := s.size != n
	s.size = n
	s.mu.Unlock()
	if changed {
		s.log.Info("pool size changed", "to", n)
		s.wake()
	}
	return nil
}

// Publish publishes a new version on the golden's host; the site copies it
// to the others once it is published.
func (s *Site) Publish(ctx context.Context) (int, error) { return s.hosts[0].Pool.Publish(ctx) }

// Rollback rolls the golden's host back; the others follow.
func (s *Site) Rollback(ctx context.Context) (from, to int, err error) {
	from, to, err = s.hosts[0].Pool.Rollback(ctx)
	if err == nil {
		s.wake()
	}
	return from, to, err
}

// control is one look at the hosts: loss, placement and copies.
func (s *Site) control(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := time.Now()
	for _, m := range s.hosts {
		m.status = m.Pool.Status()
		s.watchLoss(m, now)
	}
	s.place()
	s.replicate()
}

// watchLoss notes a host's connection going and coming back, and ends the
// sessions of a host lost for LostAfter.
func (s *Site) watchLoss(m *member, now time.Time) {
	st := &m.status
	s.mu.Lock()
	lost := m.lost
	switch {
	case st.Connected:
		m.lost = time.Time{}
	case lost.IsZero():
		m.lost = now
	}
	s.mu.Unlock()
	switch {
	case st.Connected && !lost.IsZero():
		s.log.Info("host back; its pool reconciles before it serves again", "host", m.Name,
			"down", now.Sub(lost).Round(time.Second))
	case !st.Connected && lost.IsZero():
		s.log.Warn("host lost: its libvirt connection is down; its VMs are not offered", "host", m.Name, "uri", m.URI)
	case !st.Connected && now.Sub(lost) >= s.cfg.LostAfter && s.cfg.Lost != nil:
		for _, v := range st.VMs {
			if v.State == pool.Offered || v.State == pool.Linking || v.State == pool.InUse {
				if s.cfg.Lost(v.Name, ReasonHostLost) {
					s.log.Warn("session ended: its host is lost", "host", m.Name, "vm", v.Name,
						"down", now.Sub(lost).Round(time.Second))
				}
			}
		}
	}
}

// serving reports whether a host may get a share: connected, reconciled
// and with a current version.
func serving(st pool.Status) bool {
	return st.Connected && !st.Reconciling && st.Current != 0 && st.Paused == ""
}

// place gives each host its share of the site's size.
func (s *Site) place() {
	s.mu.Lock()
	size := s.size
	s.mu.Unlock()
	slots := make([]Slot, len(s.hosts))
	for i, m := range s.hosts {
		busy := m.status.Count("offered") + m.status.Count("in-use") + m.status.Count("ending")
		slots[i] = Slot{Up: serving(m.status), Weight: m.Weight, Room: max(m.Capacity-busy, 0)}
		if m.Group != "" && slices.Contains(s.cfg.PinnedGroups, m.Group) {
			slots[i].Pinned = m.Group
		}
	}
	shares := Shares(s.cfg.Placement, size, slots)
	for i, m := range s.hosts {
		// A host that does not serve keeps the size it had: it makes
		// nothing meanwhile, and once it is back and reconciled it must
		// not trim the clean VMs it adopted before its share comes.
		if !slots[i].Up || m.status.Size == shares[i] {
			continue
		}
		if err := m.Pool.SetSize(shares[i]); err != nil {
			s.log.Warn("could not set a host's share of the pool", "host", m.Name, "size", shares[i], "err", err)
			continue
		}
		s.log.Debug("host's share of the pool", "host", m.Name, "size", shares[i])
	}
}

// Slot is one host as placement sees it.
type Slot struct {
	Up     bool
	Weight int // 0 counts as 1
	Room   int // VMs it can still make: capacity less those in session or ending
	// Pinned is its host group, if kiosks are pinned to it: such a group
	// gets a clean VM before any group gets a second.
	Pinned string
}

// Shares splits size clean VMs across the hosts that are up, each within its
// room. First each host group kiosks are pinned to gets one, on its host of
// most weight (pack: its first), so that no such kiosk waits on a share of
// none; then spread gives each VM in turn to the host whose share is
// smallest for its weight, and pack fills the hosts in order. What no host
// has room for is not placed.
func Shares(placement string, size int, hosts []Slot) []int {
	out := make([]int, len(hosts))
	seeded := map[string]bool{}
	for i, h := range hosts {
		if size == 0 || h.Pinned == "" || seeded[h.Pinned] {
			continue
		}
		best := -1
		for j, o := range hosts[i:] {
			if o.Pinned == h.Pinned && o.Up && o.Room > 0 && (best < 0 || (placement != "pack" && weight(o) > weight(hosts[best]))) {
				best = i + j
			}
		}
		if best >= 0 {
			seeded[h.Pinned] = true
			out[best]++
			size--
		}
	}
	if placement == "pack" {
		for i, h := range hosts {
			if h.Up {
				n := min(size, h.Room-out[i])
				out[i] += n
				size -= n
			}
		}
		return out
	}
	for ; size > 0; size-- {
		best := -1
		for i, h := range hosts {
			if !h.Up || out[i] >= h.Room {
				continue
			}
			// out[i]+1 over weight i, against the best's: the smaller share for its weight wins.
			if best < 0 || (out[i]+1)*weight(hosts[best]) < (out[best]+1)*weight(h) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		out[best]++
	}
	return out
}

func weight(h Slot) int { return max(h.Weight, 1) }

// replicate copies the golden host's current version to every other host
// that lacks it, and withdraws there a version the golden's host rolled back.
func (s *Site) replicate() {
	gold := s.hosts[0]
	if !serving(gold.status) {
		return
	}
	cur := gold.Pool.CurrentVersion()
	if cur == nil {
		return
	}
	for _, m := range s.hosts[1:] {
		st := m.status
		if !st.Connected || (st.Current == cur.Meta.Seq && same(st, cur)) {
			continue
		}
		if j := st.Publish; j != nil && j.Finished == nil {
			continue // a copy under way
		}
		if j := st.Publish; j != nil && j.Error != "" && j.Version == cur.Meta.Seq && time.Since(*j.Finished) < s.cfg.CopyRetry {
			if m.copyWarn != j.Error {
				m.copyWarn = j.Error
				s.log.Error("copying the current version to a host failed; retrying", "host", m.Name, "version", j.Version, "err", j.Error)
			}
			continue
		}
		if has(st, cur.Meta.Seq) && st.Current > cur.Meta.Seq {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a host that hangs stalls no other
			from, to, err := m.Pool.Rollback(ctx)
			cancel()
			if err != nil {
				s.log.Warn("could not roll a host back with the golden's host; retrying", "host", m.Name, "err", err)
			} else {
				s.log.Info("host rolled back with the golden's host", "host", m.Name, "from", from, "to", to)
			}
			continue
		}
		err := m.Pool.Replicate(cur)
		switch {
		case err == nil, errors.Is(err, pool.ErrUnavailable), errors.Is(err, pool.ErrPublishing):
		case m.copyWarn != err.Error():
			m.copyWarn = err.Error()
			s.log.Error("cannot copy the current version to a host", "host", m.Name, "version", cur.Meta.Seq, "err", err)
		}
	}
}

// same reports whether the host's version of cur's number is cur (it was
// published at the same moment), not one of its own.
func same(st pool.Status, cur *domxml.Version) bool {
	i := slices.IndexFunc(st.Versions, func(v pool.VersionStatus) bool { return v.Version == cur.Meta.Seq })
	return i >= 0 && st.Versions[i].Published.Equal(cur.Meta.Published)
}

// has reports whether a host holds version seq, not withdrawn.
func has(st pool.Status, seq int) bool {
	return slices.ContainsFunc(st.Versions, func(v pool.VersionStatus) bool { return v.Version == seq && v.Withdrawn == nil })
}

// Status is the site's pool status: the golden host's versions and publish,
// every host's VMs (each named with its host) and counts summed, and a
// line per host.
func (s *Site) Status() pool.Status {
	sts := make([]pool.Status, len(s.hosts))
	var wg sync.WaitGroup
	for i, m := range s.hosts {
		wg.Add(1)
		go func() { defer wg.Done(); sts[i] = m.Pool.Status() }()
	}
	wg.Wait()
	gold := sts[0]
	out := pool.Status{Pool: gold.Pool, Golden: gold.Golden, Current: gold.Current,
		Versions: gold.Versions, Publish: gold.Publish, Paused: gold.Paused,
		Counts: map[pool.State]int{}, Recorded: map[string]int{}, Clones: map[int]int{}}
	s.mu.Lock()
	out.Size = s.size
	s.mu.Unlock()
	var memory, degraded []string
	for i, st := range sts {
		m := s.hosts[i]
		// The site is up while any host is; a host lost or failing is
		// the site degraded, which health and alerts show.
		out.Connected = out.Connected || st.Connected
		switch {
		case !st.Connected:
			degraded = append(degraded, "host "+m.Name+" lost: its libvirt connection is down")
		case st.Degraded != "":
			degraded = append(degraded, "host "+m.Name+": "+st.Degraded)
		}
		out.Reconciling = out.Reconciling || st.Reconciling
		out.MaxVMs += st.MaxVMs
		out.Failures += st.Failures
		if st.Memory != "" {
			memory = append(memory, m.Name+": "+st.Memory)
		}
		for k, n := range st.Counts {
			out.Counts[k] += n
		}
		for k, n := range st.Recorded {
			out.Recorded[k] += n
		}
		for k, n := range st.Clones {
			out.Clones[k] += n
		}
		for _, v := range st.VMs {
			v.Host = m.Name
			out.VMs = append(out.VMs, v)
		}
		h := pool.HostStatus{Name: m.Name, URI: m.URI, Group: m.Group, Connected: st.Connected, Reconciling: st.Reconciling,
			Paused: st.Paused, Degraded: st.Degraded, Size: st.Size, MaxVMs: st.MaxVMs, Counts: st.Counts, Current: st.Current, Publish: st.Publish}
		if !st.Connected {
			since := s.lostSince(i)
			h.Lost = &since
		}
		out.Hosts = append(out.Hosts, h)
	}
	out.Memory = strings.Join(memory, "; ")
	out.Degraded = strings.Join(degraded, "; ")
	slices.SortFunc(out.VMs, func(a, b pool.VMStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// lostSince is when host i was seen lost; the control loop's note, or now.
func (s *Site) lostSince(i int) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.hosts[i].lost; !t.IsZero() {
		return t
	}
	return time.Now()
}

// Names reserves VM names across the site's hosts: a new clone's name is
// never one live on another host. Each host's pool claims through its own
// view (For).
type Names struct{ m sync.Map } // name -> the host holding it

// For is host's view, its pool's pool.Names.
func (n *Names) For(host string) pool.Names { return hostNames{n, host} }

type hostNames struct {
	n    *Names
	host string
}

// Claim reserves name for the host; false if another host holds it.
func (h hostNames) Claim(name string) bool {
	holder, taken := h.n.m.LoadOrStore(name, h.host)
	return !taken || holder == h.host
}

// Release frees name once the host's VM of that name is wiped.
func (h hostNames) Release(name string) { h.n.m.CompareAndDelete(name, h.host) }
