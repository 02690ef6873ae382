package schedule

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"undervdi/kioskproto"
)

// Site is what the schedule acts on: the broker's pool and sessions.
type Site interface {
	SetSize(n int) error
	Drain(why, notice string)
	Resume()
	// BroadcastSessions sends to the kiosks with a visitor at them.
	BroadcastSessions(c kioskproto.Command) int
}

// ClosingMessage is what kiosks with a visitor show at closing time.
const ClosingMessage = "We are closing: please finish your work and log out"

// Runner applies a schedule to the site as time passes: the pool's size
// whenever it changes, no new sessions at closing (with a warning to the
// visitors still at work), new sessions again at opening. Between changes
// an operator's resize or drain stands.
type Runner struct {
	Schedule *Schedule
	Site     Site
	Log      *slog.Logger
	Now      func() time.Time // nil: time.Now
	Every    time.Duration    // how often the schedule is read; 0: 20 s

	mu    sync.Mutex
	state State
	began bool
}

// State is the schedule's state as last applied.
func (r *Runner) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Run applies the schedule now and at every change, until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	every := r.Every
	if every == 0 {
		every = 20 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.Step()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Step applies what changed since the last step (everything, the first
// time).
func (r *Runner) Step() {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	st := r.Schedule.At(now())
	r.mu.Lock()
	last, began := r.state, r.began
	r.state, r.began = st, true
	r.mu.Unlock()
	if !began || st.Size != last.Size {
		if err := r.Site.SetSize(st.Size); err != nil {
			r.Log.Error("the schedule cannot set the pool's size", "size", st.Size, "err", err)
		} else if began {
			r.Log.Info("schedule: pool size", "from", last.Size, "to", st.Size)
		}
	}
	switch {
	case !st.Open && (!began || last.Open):
		r.Log.Info("schedule: closed; no new sessions, running ones go on", "opens", st.Opens)
		r.Site.Drain("closing time (opening hours)", st.Notice)
		if began {
			r.Site.BroadcastSessions(kioskproto.Command{Action: kioskproto.CmdMessage, Text: ClosingMessage, Seconds: 600})
		}
	case !st.Open && st.Notice != last.Notice:
		r.Site.Drain("closing time (opening hours)", st.Notice) // "opens tomorrow" became "opens at 08:00"
	case st.Open && began && !last.Open:
		r.Log.Info("schedule: open", "size", st.Size, "closes", st.Closes)
		r.Site.Resume()
	}
}
