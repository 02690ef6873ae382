// Package procstat reads what /proc says of a process, for benchmarks and
// soak tests that watch a process's memory.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// StatusKiB returns a field of /proc/<pid>/status given in kB, such as
// VmRSS or VmHWM; pid 0 is this process.
func StatusKiB(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s has no %s", path, field)
}
