package procstat

import "testing"

func TestStatusKiB(t *testing.T) {
	rss, err := StatusKiB(0, "VmRSS")
	if err != nil || rss <= 0 {
		t.Errorf("StatusKiB(0, VmRSS) = %d, %v; want this process's resident size", rss, err)
	}
	if _, err := StatusKiB(0, "NoSuchField"); err == nil {
		t.Error("a field /proc does not have was found")
	}
}
