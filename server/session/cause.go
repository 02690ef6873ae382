package session

import "strings"

// Causes of a session's end, for the metrics: a small fixed set, so that
// free-text reasons never become unbounded label values.
const (
	CauseVisitor      = "visitor"      // the visitor left: the viewer exited (they closed it, logged out, the guest shut down)
	CauseIdle         = "idle"         // the visitor was idle past idle_limit
	CauseMaxSession   = "max-session"  // the session reached max_session
	CauseAdmin        = "admin"        // an operator ended it
	CauseGuest        = "guest"        // the guest powered off, rebooted or crashed (the pool saw it)
	CauseNotLinked    = "not-linked"   // offered, and no viewer linked within the connect window
	CauseDisconnected = "disconnected" // the kiosk or its viewer went away (connection lost, heartbeats stopped)
	CauseKiosk        = "kiosk"        // the kiosk gave up for itself (no viewer, out of order, rebooting)
	CauseBroker       = "broker"       // the broker stopped, or could not record the VM
	CauseOther        = "other"
)

// Causes is every cause, for the metrics' zeros.
var Causes = []string{CauseVisitor, CauseIdle, CauseMaxSession, CauseAdmin, CauseGuest, CauseNotLinked, CauseDisconnected,
	CauseKiosk, CauseBroker, CauseOther}

// Cause sorts an end's reason, as the manager, the pool and kioskd word
// them, into a cause.
func Cause(reason string) string {
	r := strings.TrimPrefix(reason, "the kiosk ended the session: ")
	has := func(s ...string) bool {
		for _, x := range s {
			if strings.Contains(r, x) {
				return true
			}
		}
		return false
	}
	switch {
	case strings.HasPrefix(r, "ended by an admin"):
		return CauseAdmin
	case has("idle for"):
		return CauseIdle
	case has("maximum session time"):
		return CauseMaxSession
	case has("the viewer exited"):
		return CauseVisitor
	case has("guest powered off", "guest crashed", "guest agent went away"):
		return CauseGuest
	case has("not linked within the connect window"):
		return CauseNotLinked
	case has("connection lost", "heartbeats stopped", "hung up", "the viewer disconnected", "went away"):
		return CauseDisconnected
	case has("the kiosk no longer waits", "could not start its viewer", "did not show up", "the kiosk reboots", "the kiosk is "):
		return CauseKiosk
	case has("broker stopping", "could not record the VM"):
		return CauseBroker
	}
	return CauseOther
}
