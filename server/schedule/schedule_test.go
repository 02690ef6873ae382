package schedule

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"undervdi/internal/testlog"
	"undervdi/kioskproto"
)

func site(t *testing.T) *Schedule {
	t.Helper()
	s, err := Parse(Config{TimeZone: "Europe/Berlin", ClosedSize: 0, Warmup: "15m", Holidays: []string{"2026-12-25"},
		Open: []Period{{Days: "mon-fri", Hours: "08:00-18:00", Size: 4}, {Days: "sat", Hours: "09:00-13:00", Size: 2}}}, 8)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func at(t *testing.T, s string) time.Time {
	t.Helper()
	loc, _ := time.LoadLocation("Europe/Berlin")
	v, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAt walks a week of a site open weekdays and Saturday mornings, with
// Christmas off.
func TestAt(t *testing.T) {
	s := site(t)
	for _, tc := range []struct {
		when   string
		open   bool
		size   int
		notice string
	}{
		{"2026-12-01 07:00", false, 0, "Closed — opens at 08:00"}, // a Tuesday, before the warm-up
		{"2026-12-01 07:45", false, 4, "Closed — opens at 08:00"}, // warming up: the pool fills
		{"2026-12-01 08:00", true, 4, ""},
		{"2026-12-01 17:59", true, 4, ""},
		{"2026-12-01 18:00", false, 0, "Closed — opens tomorrow 08:00"},
		{"2026-12-04 20:00", false, 0, "Closed — opens tomorrow 09:00"}, // Friday night: Saturday's hours
		{"2026-12-05 10:00", true, 2, ""},
		{"2026-12-05 13:30", false, 0, "Closed — opens Monday 08:00"},
		{"2026-12-24 19:00", false, 0, "Closed — opens Saturday 09:00"}, // Christmas Day is a holiday
		{"2026-12-25 10:00", false, 0, "Closed — opens tomorrow 09:00"},
	} {
		st := s.At(at(t, tc.when))
		if st.Open != tc.open || st.Size != tc.size || st.Notice != tc.notice {
			t.Errorf("At(%s) = %+v, want open=%v size=%d notice %q", tc.when, st, tc.open, tc.size, tc.notice)
		}
	}
	if st := s.At(at(t, "2026-12-01 10:00")); !st.Closes.Equal(at(t, "2026-12-01 18:00")) {
		t.Errorf("closes %v", st.Closes)
	}
	// The same instant in another zone is the same answer.
	if st := s.At(at(t, "2026-12-01 08:30").UTC()); !st.Open {
		t.Errorf("08:30 in Berlin, given in UTC: %+v", st)
	}
}

// TestParseRefuses: every bad key is named, with what is wrong.
func TestParseRefuses(t *testing.T) {
	_, err := Parse(Config{TimeZone: "Mars/Olympus", ClosedSize: 9, Warmup: "soon", Holidays: []string{"25.12.2026"},
		Open: []Period{{Days: "mon-fri", Hours: "08:00-18:00", Size: 4}, {Days: "fri", Hours: "17:00-20:00", Size: 2},
			{Days: "funday", Hours: "8-9", Size: -1}, {Days: "sun", Hours: "18:00-08:00", Size: 1}}}, 8)
	if err == nil {
		t.Fatal("Parse accepted it")
	}
	for _, want := range []string{"schedule.time_zone", "schedule.closed_size", "schedule.warmup", "schedule.holidays[0]",
		"schedule.open[1]: fri 17:00-20:00 overlaps open[0]", "schedule.open[2].days", "schedule.open[2].hours",
		"schedule.open[2].size", "schedule.open[3].hours", "before the start"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\nwants %q", err, want)
		}
	}
	if s, err := Parse(Config{}, 8); s != nil || err != nil {
		t.Errorf("no opening hours: %v, %v; want always open", s, err)
	}
	if _, err := Parse(Config{Holidays: []string{"2026-12-25"}}, 8); err == nil {
		t.Error("holidays without opening hours accepted")
	}
}

func TestParseDays(t *testing.T) {
	for in, want := range map[string]string{"mon-fri": "-MTWTF-", "sat,sun": "S-----S", "fri-mon": "SM---FS", "daily": "SMTWTFS",
		"Mon, wed-thu": "-M-WT--"} {
		d, err := ParseDays(in)
		if err != nil {
			t.Errorf("ParseDays(%q): %v", in, err)
			continue
		}
		got := ""
		for i, on := range d {
			if on {
				got += string("SMTWTFS"[i])
			} else {
				got += "-"
			}
		}
		if got != want {
			t.Errorf("ParseDays(%q) = %s, want %s", in, got, want)
		}
	}
}

// FuzzParse: the hours and days parsers never panic, and what they accept
// is in range.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"mon-fri", "08:00-18:00", "daily", "00:00-24:00", "fri-mon", "9:5-10:00", "-", ",", ":-:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if start, end, err := ParseHours(s); err == nil && (start < 0 || end > 24*60 || start >= end) {
			t.Errorf("ParseHours(%q) = %d, %d", s, start, end)
		}
		ParseDays(s)
		Parse(Config{Open: []Period{{Days: s, Hours: s, Size: 1}}, Holidays: []string{s}, Warmup: s, TimeZone: "UTC"}, 4)
	})
}

type fakeSite struct{ log []string }

func (f *fakeSite) SetSize(n int) error { f.log = append(f.log, "size "+strconv.Itoa(n)); return nil }
func (f *fakeSite) Drain(why, notice string) {
	f.log = append(f.log, "drain: "+notice)
}
func (f *fakeSite) Resume() { f.log = append(f.log, "resume") }
func (f *fakeSite) BroadcastSessions(c kioskproto.Command) int {
	f.log = append(f.log, c.Action+": "+c.Text)
	return 1
}

// TestRunner steps through a night and a morning: closed at the start,
// the notice updated at midnight, the pool filled before opening, open,
// then closing with a warning to the visitors still at work.
func TestRunner(t *testing.T) {
	site := &fakeSite{}
	now := at(t, "2026-12-01 20:00")
	r := &Runner{Schedule: siteSchedule(t), Site: site, Log: testlog.Logger(), Now: func() time.Time { return now }}
	step := func(to string) { now = at(t, to); r.Step() }
	step("2026-12-01 20:00")
	step("2026-12-01 23:00")
	step("2026-12-02 00:01")
	step("2026-12-02 07:46")
	step("2026-12-02 08:00")
	step("2026-12-02 12:00")
	step("2026-12-02 18:00")
	want := []string{
		"size 0", "drain: Closed — opens tomorrow 08:00", // at start: closed, no warning (nobody was served)
		"drain: Closed — opens at 08:00", // midnight
		"size 4",                         // the warm-up
		"resume",
		"size 0", "drain: Closed — opens tomorrow 08:00", "message: " + ClosingMessage,
	}
	if !slices.Equal(site.log, want) {
		t.Errorf("the site was told\n%q\nwant\n%q", site.log, want)
	}
	if st := r.State(); st.Open || st.Opens.IsZero() {
		t.Errorf("State() = %+v", st)
	}
}

func siteSchedule(t *testing.T) *Schedule { return site(t) }

// TestClockChange: on the day the clocks go forward, 08:00 is 08:00.
func TestClockChange(t *testing.T) {
	s := site(t)
	st := s.At(at(t, "2027-03-29 06:00")) // the Monday after Berlin's clocks went forward (Sunday the 28th)
	if want := at(t, "2027-03-29 08:00"); !st.Opens.Equal(want) {
		t.Errorf("opens %v, want %v", st.Opens, want)
	}
	s2, _ := Parse(Config{TimeZone: "Europe/Berlin", Open: []Period{{Days: "sun", Hours: "09:00-17:00", Size: 1}}}, 4)
	if st := s2.At(at(t, "2027-03-28 12:00")); !st.Open || !st.Closes.Equal(at(t, "2027-03-28 17:00")) {
		t.Errorf("on the day itself: %+v", st)
	}
	if st := s2.At(at(t, "2027-03-28 01:00")); !st.Opens.Equal(at(t, "2027-03-28 09:00")) {
		t.Errorf("before opening on the day itself: %+v", st)
	}
}
