package session

import "testing"

// TestCause sorts the reasons the manager, the pool and kioskd give.
func TestCause(t *testing.T) {
	for reason, want := range map[string]string{
		"the kiosk ended the session: the viewer exited": CauseVisitor,
		"the kiosk ended the session: idle for 5m0s":     CauseIdle,
		"idle for 5m0s":                                                  CauseIdle,
		"maximum session time (4h0m0s) reached":                          CauseMaxSession,
		"ended by an admin (olga): stuck":                                CauseAdmin,
		"guest powered off or rebooted":                                  CauseGuest,
		"guest crashed":                                                  CauseGuest,
		"not linked within the connect window (10s)":                     CauseNotLinked,
		"kiosk connection lost":                                          CauseDisconnected,
		"kiosk heartbeats stopped (nothing for 15s)":                     CauseDisconnected,
		"legacy kiosk hung up before connecting":                         CauseDisconnected,
		"the viewer disconnected":                                        CauseDisconnected,
		"the kiosk ended the session: the viewer did not show up":        CauseKiosk,
		"the kiosk ended the session: the kiosk reboots":                 CauseKiosk,
		"the kiosk ended the session: the kiosk is Out of order":         CauseKiosk,
		"broker stopping":                                                CauseBroker,
		"could not record the VM as used: libvirt: connection is closed": CauseBroker,
		"something new":                                                  CauseOther,
	} {
		if got := Cause(reason); got != want {
			t.Errorf("Cause(%q) = %s, want %s", reason, got, want)
		}
	}
}
