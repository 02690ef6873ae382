package kioskd

import (
	"os"
	"strings"
	"testing"
)

func TestSessionUserNeverRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the refusals are of a kioskd running as root")
	}
	for _, tc := range []struct{ spec, want string }{
		{"", "visitors must not run as root"},
		{"0", "visitors must not run as root"},
		{"root", "is root"},
		{"no-such-kiosk-user", "useradd --system --no-create-home no-such-kiosk-user"},
	} {
		if _, _, err := sessionUser(tc.spec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sessionUser(%q) = %v, want an error saying %q", tc.spec, err, tc.want)
		}
	}
	if uid, gid, err := sessionUser("4242"); err != nil || uid != 4242 || gid != 4242 {
		t.Errorf("sessionUser(4242) = %d, %d, %v", uid, gid, err)
	}
}
