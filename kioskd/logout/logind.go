package logout

import (
	"context"
	"errors"
	"fmt"

	"github.com/godbus/dbus/v5"
)

// logind's bus name, object and manager interface.
const (
	login1        = "org.freedesktop.login1"
	login1Path    = "/org/freedesktop/login1"
	login1Manager = "org.freedesktop.login1.Manager"
)

// Logind asks systemd-logind to end a user's sessions, on a kiosk that
// runs systemd.
type Logind struct {
	Conn *dbus.Conn // the system bus
}

// Available reports whether logind is on the bus behind conn, running or
// activatable.
func Available(conn *dbus.Conn) bool {
	var ok bool
	if conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, login1).Store(&ok) == nil && ok {
		return true
	}
	var names []string
	if conn.BusObject().Call("org.freedesktop.DBus.ListActivatableNames", 0).Store(&names) != nil {
		return false
	}
	for _, n := range names {
		if n == login1 {
			return true
		}
	}
	return false
}

// TerminateUser ends every session of uid and kills its processes, through
// org.freedesktop.login1.Manager.TerminateUser. A user logind does not
// know (NoSuchUser) has nothing to terminate: that is no error.
func (l *Logind) TerminateUser(uid uint32) error {
	return l.terminateUser(context.Background(), uid)
}

func (l *Logind) terminateUser(ctx context.Context, uid uint32) error {
	err := l.Conn.Object(login1, login1Path).CallWithContext(ctx, login1Manager+".TerminateUser", 0, uid).Err
	var derr dbus.Error
	if errors.As(err, &derr) && derr.Name == login1+".NoSuchUser" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("logout: logind TerminateUser(%d): %w", uid, err)
	}
	return nil
}
