// Package schedule is the site's opening hours: the pool's size by weekday
// and hour, in the broker's time zone, with holidays closed all day (like
// OpenUDS calendars). Before opening the pool fills, so that the first
// visitor finds a VM; at closing no new session starts, running ones go on,
// and the kiosks' slideshows say when the site opens again.
package schedule

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // a server without the zone files still knows every zone
)

// Period is one line of opening hours, as the configuration writes it.
type Period struct {
	Days  string `toml:"days"`  // "mon-fri", "sat", "mon,wed,fri", "daily"
	Hours string `toml:"hours"` // "08:00-18:00"
	Size  int    `toml:"size"`  // clean VMs kept ready meanwhile
}

// Config is the [schedule] section.
type Config struct {
	TimeZone   string   `toml:"time_zone"`   // "Local" or an IANA zone ("Europe/Berlin")
	Open       []Period `toml:"open"`        // none: always open, pool_size
	Holidays   []string `toml:"holidays"`    // "2026-12-25": closed all day
	ClosedSize int      `toml:"closed_size"` // clean VMs kept while closed
	Warmup     string   `toml:"warmup"`      // the pool fills this long before opening ("15m")
}

// Schedule is a parsed Config.
type Schedule struct {
	loc        *time.Location
	periods    []period
	holidays   map[string]bool
	closedSize int
	warmup     time.Duration
}

type period struct {
	days       [7]bool // by time.Weekday
	start, end int     // minutes since midnight, start < end
	size       int
}

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Parse checks cfg; maxSize bounds the sizes (max_vms). It returns nil, and
// no error, for a config without opening hours: always open.
func Parse(cfg Config, maxSize int) (*Schedule, error) {
	if len(cfg.Open) == 0 {
		if len(cfg.Holidays) > 0 || cfg.ClosedSize != 0 {
			return nil, errors.New("schedule: holidays and closed_size need opening hours ([[schedule.open]])")
		}
		return nil, nil
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("schedule.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	s := &Schedule{holidays: map[string]bool{}, closedSize: cfg.ClosedSize}
	zone := cfg.TimeZone
	if zone == "" {
		zone = "Local"
	}
	var err error
	if s.loc, err = time.LoadLocation(zone); err != nil {
		bad("time_zone", "%q: not a time zone such as Europe/Berlin or Local", cfg.TimeZone)
	}
	if cfg.ClosedSize < 0 || cfg.ClosedSize > maxSize {
		bad("closed_size", "%d: from 0 to max_vms (%d)", cfg.ClosedSize, maxSize)
	}
	s.warmup = 15 * time.Minute
	if cfg.Warmup != "" {
		if s.warmup, err = time.ParseDuration(cfg.Warmup); err != nil || s.warmup < 0 || s.warmup > 6*time.Hour {
			bad("warmup", "%q: a duration from 0 to 6h, such as 15m", cfg.Warmup)
		}
	}
	for i, p := range cfg.Open {
		key := fmt.Sprintf("open[%d]", i)
		days, err := ParseDays(p.Days)
		if err != nil {
			bad(key+".days", "%v", err)
		}
		start, end, err := ParseHours(p.Hours)
		if err != nil {
			bad(key+".hours", "%v", err)
		}
		if p.Size < 0 || p.Size > maxSize {
			bad(key+".size", "%d: from 0 to max_vms (%d)", p.Size, maxSize)
		}
		np := period{days: days, start: start, end: end, size: p.Size}
		for j, q := range s.periods {
			if overlap(np, q) {
				bad(key, "%s %s overlaps open[%d] (%s %s)", p.Days, p.Hours, j, cfg.Open[j].Days, cfg.Open[j].Hours)
			}
		}
		s.periods = append(s.periods, np)
	}
	for i, h := range cfg.Holidays {
		d, err := time.Parse(time.DateOnly, h)
		if err != nil {
			bad(fmt.Sprintf("holidays[%d]", i), "%q: a date such as 2026-12-25", h)
			continue
		}
		s.holidays[d.Format(time.DateOnly)] = true
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func overlap(a, b period) bool {
	for d := range 7 {
		if a.days[d] && b.days[d] && a.start < b.end && b.start < a.end {
			return true
		}
	}
	return false
}

// ParseDays reads "mon-fri", "sat,sun", "daily", "mon,wed-fri".
func ParseDays(s string) ([7]bool, error) {
	var days [7]bool
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "daily" {
		return [7]bool{true, true, true, true, true, true, true}, nil
	}
	day := func(n string) (int, error) {
		i := slices.Index(dayNames, strings.TrimSpace(n))
		if i < 0 {
			return 0, fmt.Errorf("%q: days are mon, tue, wed, thu, fri, sat, sun, ranges such as mon-fri, or daily", n)
		}
		return i, nil
	}
	if s == "" {
		return days, errors.New("no days: such as mon-fri, sat or daily")
	}
	for _, part := range strings.Split(s, ",") {
		from, to, isRange := strings.Cut(part, "-")
		a, err := day(from)
		if err != nil {
			return days, err
		}
		b := a
		if isRange {
			if b, err = day(to); err != nil {
				return days, err
			}
		}
		for d := a; ; d = (d + 1) % 7 { // fri-mon wraps over the weekend
			days[d] = true
			if d == b {
				break
			}
		}
	}
	return days, nil
}

// ParseHours reads "08:00-18:00" as minutes since midnight; the end may be
// 24:00.
func ParseHours(s string) (start, end int, err error) {
	from, to, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q: hours such as 08:00-18:00", s)
	}
	clock := func(c string) (int, error) {
		h, m, ok := strings.Cut(strings.TrimSpace(c), ":")
		hh, err1 := strconv.Atoi(h)
		mm, err2 := strconv.Atoi(m)
		if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
			return 0, fmt.Errorf("%q: a time such as 08:00", c)
		}
		return hh*60 + mm, nil
	}
	if start, err = clock(from); err != nil {
		return 0, 0, err
	}
	if end, err = clock(to); err != nil {
		return 0, 0, err
	}
	if start >= end {
		return 0, 0, fmt.Errorf("%q: the end comes before the start (hours past midnight: two periods)", s)
	}
	return start, end, nil
}

// State is what the schedule says at a time.
type State struct {
	Open   bool      `json:"open"`
	Size   int       `json:"size"`             // the pool's size now (the opening's while warming up)
	Opens  time.Time `json:"opens,omitzero"`   // while closed: the next opening (zero: none within a month)
	Closes time.Time `json:"closes,omitzero"`  // while open: this period's end
	Notice string    `json:"notice,omitempty"` // while closed: the kiosks' line, "Closed — opens Monday 08:00"
}

// At is the schedule's state at t.
func (s *Schedule) At(t time.Time) State {
	t = t.In(s.loc)
	if p, ok := s.openAt(t); ok {
		return State{Open: true, Size: p.size, Closes: s.clock(t.Year(), t.Month(), t.Day(), p.end)}
	}
	st := State{Size: s.closedSize, Notice: "Closed"}
	opens, size, ok := s.nextOpening(t)
	if ok {
		st.Opens = opens
		st.Notice = "Closed — opens " + when(t, opens)
		if opens.Sub(t) <= s.warmup {
			st.Size = size
		}
	}
	return st
}

func (s *Schedule) openAt(t time.Time) (period, bool) {
	if s.holidays[t.Format(time.DateOnly)] {
		return period{}, false
	}
	m := t.Hour()*60 + t.Minute()
	for _, p := range s.periods {
		if p.days[t.Weekday()] && p.start <= m && m < p.end {
			return p, true
		}
	}
	return period{}, false
}

// nextOpening is the first period start after t, within a month.
func (s *Schedule) nextOpening(t time.Time) (time.Time, int, bool) {
	for i := 0; i <= 31; i++ {
		day := time.Date(t.Year(), t.Month(), t.Day()+i, 0, 0, 0, 0, s.loc)
		if s.holidays[day.Format(time.DateOnly)] {
			continue
		}
		var best *period
		for j, p := range s.periods {
			start := s.clock(day.Year(), day.Month(), day.Day(), p.start)
			if p.days[day.Weekday()] && start.After(t) && (best == nil || p.start < best.start) {
				best = &s.periods[j]
			}
		}
		if best != nil {
			return s.clock(day.Year(), day.Month(), day.Day(), best.start), best.size, true
		}
	}
	return time.Time{}, 0, false
}

// clock is a wall-clock time of a day (minutes since midnight), right on
// the days the clocks change too.
func (s *Schedule) clock(y int, m time.Month, d, minutes int) time.Time {
	return time.Date(y, m, d, minutes/60, minutes%60, 0, 0, s.loc)
}

// when says an opening time for the slideshow: "at 14:00" today,
// "tomorrow 08:00", "Monday 08:00" within the week, else the date.
func when(now, t time.Time) string {
	y1, m1, d1 := now.Date()
	y2, m2, d2 := t.Date()
	today := time.Date(y1, m1, d1, 0, 0, 0, 0, now.Location())
	days := int(time.Date(y2, m2, d2, 0, 0, 0, 0, t.Location()).Sub(today).Hours()/24 + 0.5)
	switch {
	case days == 0:
		return "at " + t.Format("15:04")
	case days == 1:
		return "tomorrow " + t.Format("15:04")
	case days < 7:
		return t.Format("Monday 15:04")
	}
	return t.Format("Mon 2 Jan 15:04")
}
