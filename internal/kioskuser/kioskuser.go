// Package kioskuser makes the unprivileged user a kiosk on this machine
// runs its visitors as (kioskd's session_user, the original remote.sh) in
// the demo and the tests. Every process of that user is killed at each
// logout, so it is used for nothing else.
package kioskuser

import (
	"fmt"
	"os/exec"
	"os/user"
)

// Name is the user's name.
const Name = "undervdi-kiosk"

// Ensure returns the user, made (a system user without home or shell) if
// missing.
func Ensure() (*user.User, error) {
	if u, err := user.Lookup(Name); err == nil {
		return u, nil
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", Name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("useradd %s: %v: %s", Name, err, out)
	}
	return user.Lookup(Name)
}
